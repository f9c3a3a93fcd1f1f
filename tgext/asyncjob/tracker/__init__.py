"""The 0.3 documentation's spelling, ``tgext.asyncjob.tracker``: same modules as ``trackers``."""
