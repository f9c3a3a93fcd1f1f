"""Baseline rows (floor, floor+transaction, ThreadPoolExecutor) and the
original tgext.asyncjob 0.3.1 rows.

Every adapter exposes the same small surface used by ``harness.py``:

* ``start(workers)``          start the worker thread(s)
* ``enqueue(fn, *args)``      hand one job to the worker, return its id/handle
* ``stop()``                  shut down (best effort)
* ``set_progress(v, msg)``    only when ``has_progress``; called inside a job
* ``get_progress(handle)``    only when ``has_progress``; called by the caller
* ``uses_redis``              True when the row talks to Redis

Imports of the system under test happen inside ``start`` so that this module
can be imported from either virtualenv.
"""
import queue
import threading


class Floor:
    """The floor: a bare ``queue.Queue`` and worker thread(s) calling the job.

    ``transactional=True`` gives the "floor + transaction" variant: the same
    thread wraps each call in ``transaction.begin()`` / ``commit()``.
    Progress is a dict guarded by a ``threading.Lock`` (what a minimal
    in-memory tracker has to do).
    """

    has_progress = True
    uses_redis = False

    def __init__(self, transactional=False):
        self.transactional = transactional
        self._lock = threading.Lock()
        self._progress = {}

    def start(self, workers=1):
        self.q = queue.Queue()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _loop(self):
        get = self.q.get
        if self.transactional:
            import transaction
            while True:
                fn, args, kw = get()
                if fn is None:
                    return
                transaction.begin()
                try:
                    fn(*args, **kw)
                    transaction.commit()
                except Exception:
                    transaction.abort()
        else:
            while True:
                fn, args, kw = get()
                if fn is None:
                    return
                fn(*args, **kw)

    def enqueue(self, fn, *args, **kw):
        self.q.put((fn, args, kw))
        return "job"

    def stop(self):
        for _ in self.threads:
            self.q.put((None, None, None))
        for t in self.threads:
            t.join(5)

    def set_progress(self, value, message=None):
        with self._lock:
            self._progress["job"] = (value, message)

    def get_progress(self, handle):
        with self._lock:
            return self._progress.get(handle)


class RedisFloorProgress:
    """Raw redis-py SET/GET of a JSON value: the floor for Redis progress."""

    def __init__(self, redis_cfg):
        import json
        import redis
        self._dumps, self._loads = json.dumps, json.loads
        self.r = redis.Redis(host=redis_cfg["host"], port=redis_cfg["port"], db=redis_cfg["db"])

    def set_progress(self, value, message=None):
        self.r.set("bench:floor:progress", self._dumps((value, message)))

    def get_progress(self, handle):
        v = self.r.get("bench:floor:progress")
        return None if v is None else tuple(self._loads(v))


class ThreadPool:
    """``concurrent.futures.ThreadPoolExecutor(workers)``; no progress API."""

    has_progress = False
    uses_redis = False

    def start(self, workers=1):
        from concurrent.futures import ThreadPoolExecutor
        self.ex = ThreadPoolExecutor(workers)

    def enqueue(self, fn, *args, **kw):
        return self.ex.submit(fn, *args, **kw)

    def stop(self):
        self.ex.shutdown(wait=True)


class Original:
    """tgext.asyncjob 0.3.1 (runs only inside bench/.venv-original).

    A minimal TG app is built with ``MinimalApplicationConfigurator`` so
    ``tg.config`` is in place for the worker, and a TG context holding the
    app_globals is pushed on the caller thread, so the public
    ``asyncjob_perform`` (which reads ``tg.app_globals.asyncjob_queue``)
    works outside a request.  0.3.1 has exactly one worker thread.
    """

    has_progress = True

    def __init__(self, tracker="memory", redis_cfg=None):
        self.tracker_name = tracker
        self.redis_cfg = redis_cfg
        self.uses_redis = tracker == "redis"

    def start(self, workers=1):
        if workers != 1:
            raise NotImplementedError("tgext.asyncjob 0.3.1 has a single worker thread")
        import logging
        logging.getLogger("tg").setLevel(logging.ERROR)
        import tg
        from tg.request_local import context
        import tgext.asyncjob as aj

        class Root(tg.TGController):
            @tg.expose()
            def index(self):
                return "ok"

        cfg = tg.MinimalApplicationConfigurator()
        cfg.update_blueprint({"root_controller": Root()})
        self.app = cfg.make_wsgi_app()
        app_globals = tg.config["tg.app_globals"]

        if self.tracker_name == "redis":
            from tgext.asyncjob.trackers.redisdb import RedisProgressTracker
            rc = self.redis_cfg
            tracker = RedisProgressTracker(host=rc["host"], port=rc["port"], db=rc["db"])
        else:
            from tgext.asyncjob.trackers.memory import MemoryProgressTracker
            tracker = MemoryProgressTracker()

        class Ctx:
            pass

        ctx = Ctx()
        ctx.app_globals = app_globals
        context._push_object(ctx)
        aj.start_async_worker(app_globals, tracker)
        self._perform = aj.asyncjob_perform
        self.direct_perform = app_globals.asyncjob_queue.perform  # (fn, args, kwargs)
        self.set_progress = aj.asyncjob_set_progress
        self.get_progress = aj.asyncjob_get_progress

    def enqueue(self, fn, *args, **kw):
        return self._perform(fn, *args, **kw)

    def stop(self):
        pass  # 0.3.1 has no stop(); its worker is a daemon thread.


def make(row, redis_cfg):
    """Build the adapter for a row name (project rows live in adapter_project)."""
    if row == "floor":
        return Floor()
    if row == "floor+txn":
        return Floor(transactional=True)
    if row == "ThreadPoolExecutor":
        return ThreadPool()
    if row == "original-memory":
        return Original("memory")
    if row == "original-redis":
        return Original("redis", redis_cfg)
    if row.startswith("project-"):
        import adapter_project
        return adapter_project.make(row, redis_cfg)
    raise KeyError(row)
