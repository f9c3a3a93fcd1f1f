"""Progress trackers: where job progress and status live.

A tracker is any object with the four 0.3 methods ``track``, ``remove``,
``set_progress`` and ``get_progress``. Built-in trackers also keep job records and
announce it with capability flags (see :mod:`tgext.asyncjob.trackers.base`).
"""
from .base import ProgressTracker, as_store

__all__ = ['ProgressTracker', 'as_store']
