"""Adapter for this project's tgext.asyncjob (the editable install in .venv).

Kept separate and small so it is easy to adjust if the package API moves.
Expected API:

    q = start_async_worker(app_globals, progress_tracker=tracker, workers=N)
    q.perform(fn, args, kwargs) -> job id;  q.stop(timeout)
    asyncjob_perform(fn, *a, **kw) -> job id (outside a request)
    asyncjob_set_progress(value, message) inside a job; asyncjob_get_progress(id)

Rows: project-memory, project-redis, and project-rq (hook: enabled once the
package ships an RQ backend; see ``_rq_start``).
"""

import types

ROWS = ("project-memory", "project-redis", "project-rq")


class Unavailable(RuntimeError):
    """Raised when a row cannot run in this checkout (reported, not fatal)."""


class Project:
    has_progress = True

    def __init__(self, backend, redis_cfg):
        self.backend = backend
        self.redis_cfg = redis_cfg
        self.uses_redis = backend in ("redis", "rq")
        self.out_of_process = backend == "rq"  # harness signals through Redis
        if backend == "rq":
            # ~5 ms a job end to end: smaller counts keep the whole run under 10 minutes
            self.max_jobs, self.max_latency_samples = 500, 200

    def _redis_url(self):
        rc = self.redis_cfg
        return "redis://%s:%d/%d" % (rc["host"], rc["port"], rc["db"])

    def start(self, workers=1):
        import logging
        logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
        import tgext.asyncjob as aj

        if self.backend == "rq":
            self.q = _rq_start(aj, self, workers)
        else:
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

    def kill(self):
        """End the RQ worker process this row started (if any)."""
        worker = getattr(self, "worker", None)
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(10)


def _rq_start(aj, adapter, workers):
    """The rq backend: this process only enqueues; one worker process,
    ``python -m tgext.asyncjob.rqworker --app rqjobs:make_app --simple``,
    runs the jobs (no fork per job, as the thread backend). It inherits this
    process's CPU pinning. Jobs and signals live in rqjobs.py."""
    import os
    import subprocess
    import sys
    import rqjobs
    if workers != 1:
        raise Unavailable("the rq row runs one worker process")
    q = rqjobs.start_queue()
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=here)
    adapter.worker = subprocess.Popen(
        [sys.executable, "-m", "tgext.asyncjob.rqworker", "--app", "rqjobs:make_app",
         "--simple", "--logging-level", "WARNING"], cwd=here, env=env,
        stdout=subprocess.DEVNULL,  # stderr: into the harness's (shown on failure)
        preexec_fn=_die_with_parent)
    return q


def _die_with_parent():
    """In the worker child: get SIGTERM if the harness dies (e.g. a run.py timeout)."""
    import ctypes
    import signal
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
