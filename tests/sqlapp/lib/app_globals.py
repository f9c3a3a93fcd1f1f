"""The application's Globals object."""

__all__ = ["Globals"]


class Globals(object):
    """Container for objects available throughout the life of the application."""
