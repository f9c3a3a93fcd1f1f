"""The application's Globals object, as in a quickstarted project."""

__all__ = ["Globals"]


class Globals(object):
    """Container for objects available throughout the life of the application.

    One instance of Globals is created during application initialization and
    is available during requests via the 'app_globals' variable.
    """

    def __init__(self):
        """Do nothing, by default."""
        pass
