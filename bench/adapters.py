"""Adapters for the Redis round-trip suite: the original tgext.asyncjob 0.3.1
(``original-redis``) and this project (``project-redis``, adapter_project.py).

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
    if row == "original-redis":
        return Original("redis", redis_cfg)
    if row.startswith("project-"):
        import adapter_project
        return adapter_project.make(row, redis_cfg)
    raise KeyError(row)
