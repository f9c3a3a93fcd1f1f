"""Alias of :mod:`tgext.asyncjob.trackers.memory` (the 0.3 docs' spelling)."""
from ..trackers.memory import MemoryProgressTracker

__all__ = ['MemoryProgressTracker']
