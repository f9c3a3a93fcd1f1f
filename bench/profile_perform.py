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
    out = {
        "Queue.put, nobody waiting": best(lambda: bare.put(noop)),
        "secrets.token_hex(16)": best(lambda: secrets.token_hex(16)),
        "Job(...) incl. id": best(lambda: Job(noop, (), {})),
        "tracker.track(dict)": best(lambda: q.store.track(secrets.token_hex(16), {"state": "queued"})),
        "current_queue()": best(current_queue),
        "queue.perform(noop) (worker parked)": best(lambda: q.perform(noop, (), {}), number=5000),
        "asyncjob_perform(noop) (worker parked)": best(lambda: aj.asyncjob_perform(noop), number=5000),
    }
    release.set()
    q.stop(10)
    return out, {}


if __name__ == "__main__":
    os.sched_setaffinity(0, {0})
    print(json.dumps({k: round(v, 2) for k, v in run({})[0].items()}, indent=1))
