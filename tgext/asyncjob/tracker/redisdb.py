"""Alias of :mod:`tgext.asyncjob.trackers.redisdb` (the 0.3 docs' spelling)."""
from ..trackers.redisdb import RedisProgressTracker

__all__ = ['RedisProgressTracker']
