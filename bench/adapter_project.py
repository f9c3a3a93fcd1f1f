"""Adapter for this project's tgext.asyncjob (the editable install in .venv).

Kept separate and small so it is easy to adjust if the package API moves.
Expected API:

    q = start_async_worker(app_globals, progress_tracker=tracker, workers=N)
    q.perform(fn, args, kwargs) -> job id;  q.stop(timeout)
    asyncjob_perform(fn, *a, **kw) -> job id (outside a request)
    asyncjob_set_progress(value, message) inside a job; asyncjob_get_progress(id)

Rows: project-memory, project-redis.
"""

import types

ROWS = ("project-memory", "project-redis")


class Unavailable(RuntimeError):
    """Raised when a row cannot run in this checkout (reported, not fatal)."""


class Project:
    has_progress = True

    def __init__(self, backend, redis_cfg):
        self.backend = backend
        self.redis_cfg = redis_cfg
        self.uses_redis = backend == "redis"

    def _redis_url(self):
        rc = self.redis_cfg
        return "redis://%s:%d/%d" % (rc["host"], rc["port"], rc["db"])

    def start(self, workers=1):
        import logging
        logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
        import tgext.asyncjob as aj

        if self.backend == "redis":
            from tgext.asyncjob.trackers.redisdb import RedisProgressTracker
            tracker = RedisProgressTracker(url=self._redis_url())
        else:
            from tgext.asyncjob.trackers.memory import MemoryProgressTracker
            tracker = MemoryProgressTracker()
        # An explicit globals object, as an application passes its app_globals.
        # (With None and no TG config, the package falls back to the caller
        # frame's ``self``, i.e. this adapter.)
        self.app_globals = types.SimpleNamespace()
        self.q = aj.start_async_worker(self.app_globals, progress_tracker=tracker,
                                       workers=workers)
        # The public entry point, as an application would call it.
        self._perform = aj.asyncjob_perform
        self.direct_perform = self.q.perform  # (fn, args, kwargs), skips the queue lookup
        self.set_progress = aj.asyncjob_set_progress
        self.get_progress = aj.asyncjob_get_progress

    def enqueue(self, fn, *args, **kw):
        return self._perform(fn, *args, **kw)

    def stop(self):
        self.q.stop(5)


def make(row, redis_cfg):
    if row not in ROWS:
        raise KeyError(row)
    try:
        import tgext.asyncjob as aj
    except ImportError as e:
        raise Unavailable("tgext.asyncjob not importable: %s" % e)
    if not hasattr(aj, "start_async_worker"):
        raise Unavailable("tgext.asyncjob has no start_async_worker yet")
    return Project(row.split("-", 1)[1], redis_cfg)
