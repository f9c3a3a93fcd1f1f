"""Where the time of asyncjob_perform goes inside a request (this tree only).

The same bench app gets one controller per piece of the work, each measured
against ``/plain`` in the same process, interleaved in a shuffled order, with the
worker idle before each request (see suite_request.py for the two clocks):

* ``floor``       a bare ``queue.Queue.put`` to an idle thread (the wake-up included);
* ``floor_nowake`` the same put into a queue no thread waits on (drained untimed):
                  the put without the wake-up;
* ``lookup``      ``current_queue()`` alone (finding the request's queue);
* ``direct``      ``queue.perform(fn, (), {})``: everything but the lookup;
* ``perform``     ``asyncjob_perform(fn)``: what an application calls;
* ``no_handoff``  ``asyncjob_perform`` with the backend's hand-off replaced by a list
                  append (the job is handed over untimed after the request): the
                  job, the tracker write and the bookkeeping, without the put and
                  the wake-up of the worker;
* ``deferred``    a prototype made here by wrapping, not in the library: the hand-off
                  is kept in the WSGI environ and done in the response's ``close()``,
                  i.e. after the body is complete; the ``body`` clock shows what a
                  client would gain, the ``webtest`` clock still pays it (its call
                  includes close()).
"""
import gc
import queue as stdqueue
import random
import threading
import time
from statistics import median

import suite_request
from suite_request import DONE, body_call, job

pc = time.perf_counter
VARIANTS = ["floor", "floor_nowake", "lookup", "direct", "perform", "no_handoff", "deferred"]


def build():
    import logging
    logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
    import tg
    import webtest
    from tg import MinimalApplicationConfigurator, TGController, expose
    import tgext.asyncjob as aj
    from tgext.asyncjob.tgwiring import current_queue
    import tgapp

    floor = tgapp.FloorQueue()
    idle_q = stdqueue.Queue()
    local = threading.local()
    held = []

    class Root(TGController):
        @expose("json")
        def plain(self):
            return {"jobid": None}

        @expose("json")
        def floor(self):
            return {"jobid": floor.perform(job)}

        @expose("json")
        def floor_nowake(self):
            idle_q.put((job, ()))
            return {"jobid": "job"}

        @expose("json")
        def lookup(self):
            current_queue()
            return {"jobid": None}

        @expose("json")
        def direct(self):
            return {"jobid": q.perform(job, (), {})}

        @expose("json")
        def perform(self):
            return {"jobid": aj.asyncjob_perform(job)}

        @expose("json")
        def no_handoff(self):
            local.mode = "hold"
            try:
                return {"jobid": aj.asyncjob_perform(job)}
            finally:
                local.mode = None

        @expose("json")
        def deferred(self):
            local.mode = "defer"
            try:
                return {"jobid": aj.asyncjob_perform(job)}
            finally:
                local.mode = None

    cfg = MinimalApplicationConfigurator()
    cfg.update_blueprint({"root_controller": Root(), "renderers": ["json"],
                          "default_renderer": "json"})
    app = cfg.make_wsgi_app()
    q = aj.start_async_worker(tg.config["tg.app_globals"])
    real_enqueue = q.backend.enqueue
    pending = threading.local()

    def enqueue(j):
        mode = getattr(local, "mode", None)
        if mode == "hold":
            held.append(j)
        elif mode == "defer":
            pending.jobs.append(j)
        else:
            real_enqueue(j)

    q.backend.enqueue = enqueue

    class Closing:
        def __init__(self, it, jobs):
            self.it, self.jobs = it, jobs

        def __iter__(self):
            return iter(self.it)

        def close(self):
            if hasattr(self.it, "close"):
                self.it.close()
            for j in self.jobs:
                real_enqueue(j)

    def deferring(environ, start_response):
        pending.jobs = []
        it = app(environ, start_response)
        return Closing(it, pending.jobs) if pending.jobs else it

    def after(variant):
        """Untimed: bring the worker back to idle after a request of ``variant``."""
        if variant == "floor_nowake":
            idle_q.get_nowait()
            return
        if variant == "no_handoff":
            while held:
                real_enqueue(held.pop())
        if variant not in ("lookup",):
            if not DONE.wait(10):
                raise RuntimeError("the job of %s did not run" % variant)

    return webtest.TestApp(deferring, lint=False), after, q


def measure(app, after, variants, n, idle, rng):
    out = {clock: {v: [] for v in ["plain"] + variants} for clock in ("webtest", "body")}
    for clock in ("webtest", "body"):
        for _ in range(n):
            order = ["plain"] + variants
            rng.shuffle(order)
            for v in order:
                DONE.clear()
                if clock == "webtest":
                    t0 = pc()
                    app.get("/" + v)
                    dt = pc() - t0
                else:
                    dt = body_call(app.app, "/" + v)
                if v != "plain":
                    after(v)
                time.sleep(idle)
                out[clock][v].append(dt)
    return out


def run(cfg):
    app, after, q = build()
    variants = cfg.get("variants", VARIANTS)
    n, idle = cfg["requests"], cfg.get("idle", 0.0005)
    rng = random.Random(0)
    measure(app, after, variants, max(n // 10, min(30, n)), idle, rng)
    gc.collect()
    gc.freeze()
    raw = measure(app, after, variants, n, idle, rng)
    m = {}
    for clock, by in raw.items():
        plain = median(by["plain"])
        m["%s_plain_us" % clock] = plain * 1e6
        for v in variants:
            m["%s_%s_us" % (clock, v)] = (median(by[v]) - plain) * 1e6
    q.stop(5)
    return m, {"requests": n, "variants": variants}


if __name__ == "__main__":  # quick look: python bench/suite_parts.py [requests]
    import json
    import sys
    print(json.dumps(run({"requests": int(sys.argv[1]) if len(sys.argv) > 1 else 500})[0],
                     indent=1))
