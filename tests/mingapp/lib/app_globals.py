"""The application's Globals object, as in a quickstarted project."""


class Globals(object):
    """Container for objects available throughout the life of the application."""
