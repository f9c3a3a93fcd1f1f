"""Jobs for the project-rq row, and the application factory its RQ worker loads.

The RQ worker is another process: it imports jobs by name (so they live here,
not in harness.py's ``__main__``) and signals the benchmark through Redis lists,
not threading.Events.  ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, so
stamps taken in the worker compare with the caller's.
"""
import os
import time
import types

QUEUE_NAME = "asyncjob-bench"
_client = None


def redis_url():
    return os.environ["BENCH_REDIS_URL"]


def r():
    global _client
    if _client is None:
        import redis
        _client = redis.Redis.from_url(redis_url(), socket_timeout=300)
    return _client


def start_queue():
    """Start a JobQueue on the rq backend (both in the caller and in the worker)."""
    import tgext.asyncjob as aj
    from tgext.asyncjob.trackers.redisdb import RedisProgressTracker
    return aj.start_async_worker(
        types.SimpleNamespace(), RedisProgressTracker(url=redis_url()), backend="rq",
        backend_options={"redis_url": redis_url(), "queue_name": QUEUE_NAME})


def make_app():
    """``python -m tgext.asyncjob.rqworker --app rqjobs:make_app``"""
    return start_queue()


def noop():
    pass


def signal(key):
    r().rpush(key, repr(time.perf_counter()))


def block(started, release):
    r().rpush(started, 1)
    r().blpop([release])


def server_reads():
    """Client requests the Redis server has read so far (INFO stats)."""
    return r().info("stats")["total_reads_processed"]


def progress(m, ready, release):
    from tgext.asyncjob import asyncjob_set_progress
    time.sleep(0.05)  # writes about this job's start land first
    s0 = server_reads()
    t0 = time.perf_counter()
    for i in range(m):
        asyncjob_set_progress(i, "step")
    dt = time.perf_counter() - t0
    time.sleep(0.05)  # a write-behind tracker flushes in the background
    reads = server_reads() - s0 - 1  # minus the second INFO itself
    r().rpush(ready, "%r %r" % (dt / m * 1e6, reads / m))
    r().blpop([release])
