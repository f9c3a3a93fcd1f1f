"""Where the µs of one enqueue go, piece by piece, outside any request (min of
repeats of timeit loops, pinned to one CPU, no worker woken: the worker is parked).

    .venv/bin/python bench/profile_perform.py      (or run.py's "cpu" suite)

The request-level view (wake-up, GIL) is suite_parts.py; this is the CPU cost of
the pieces the library runs on the caller's thread.  Prints JSON.
"""
import json
import os
import queue as stdqueue
import secrets
import threading
import timeit
import types


def best(stmt, number=20000, repeat=7):
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def run(cfg):
    import logging
    logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
    import tgext.asyncjob as aj
    from tgext.asyncjob.job import Job
    from tgext.asyncjob.tgwiring import current_queue
    q = aj.start_async_worker(types.SimpleNamespace())
    release = threading.Event()
    q.perform(release.wait, (), {})  # park the worker: no wake-ups below

    def noop():
        pass

    bare = stdqueue.Queue()
    from tgext.asyncjob import queue as qm
    extra = {}  # pieces that exist in one tree only (None when absent)
    extra["check_callable(fn)"] = (best(lambda: qm.check_callable(noop))
                                   if hasattr(qm, "check_callable") else None)
    job = Job(noop, (), {})
    extra["backend.validate(job)"] = (best(lambda: q.backend.validate(job))
                                      if hasattr(q.backend, "validate") else None)
    from tgext.asyncjob import job as jm
    extra["callable_name(fn)"] = (best(lambda: jm.callable_name(noop))
                                  if hasattr(jm, "callable_name") else None)
    if hasattr(q, "lifecycle"):
        fresh = iter([Job(noop, (), {}) for _ in range(7 * 10000)])
        track = q.lifecycle.track
        extra["lifecycle.track(job, record)"] = best(
            lambda: track(next(fresh), {"state": "queued", "name": "x"}), number=10000)
    out = {
        "Queue.put, nobody waiting": best(lambda: bare.put(noop)),
        "secrets.token_hex(16)": best(lambda: secrets.token_hex(16)),
        "Job(...) incl. id": best(lambda: Job(noop, (), {})),
        "tracker.track(dict)": best(lambda: q.store.track(secrets.token_hex(16), {"state": "queued"})),
        "current_queue()": best(current_queue),
        "queue.perform(noop) (worker parked)": best(lambda: q.perform(noop, (), {}), number=5000),
        "asyncjob_perform(noop) (worker parked)": best(lambda: aj.asyncjob_perform(noop), number=5000),
    }
    out.update({k: v for k, v in extra.items() if v is not None})
    release.set()
    q.stop(10)
    return out, {}


if __name__ == "__main__":
    os.sched_setaffinity(0, {0})
    print(json.dumps({k: round(v, 2) for k, v in run({})[0].items()}, indent=1))
