"""Jobs the RQ tests queue. Module-level, so RQ worker processes import them by name."""

import json
import os
import time

import redis
import rq
import tg

import tgext.asyncjob as aj
from tgext.asyncjob.context import running_job
from sampleapp.model import Row


def _worker():
    current = rq.get_current_job()
    return current.worker_name if current is not None else "pid-%d" % os.getpid()


def write_row(name, value=None):
    """Insert a row in the job's transaction; report progress; return who ran it."""
    aj.asyncjob_set_progress(50, {"name": name})
    session = tg.config["DBSession"]  # the app's configuration, as in a request
    session.add(Row(name=name, value=None if value is None else int(value)))
    session.flush()
    aj.asyncjob_set_progress(100, {"name": name, "done": True})
    return {"worker": _worker(), "job": aj.asyncjob_running_uid()}


def gate(name, redis_url, key):
    """Report progress 42, then wait (BLPOP, 30 s at most) for ``key``; write a row."""
    aj.asyncjob_set_progress(42, {"waiting": name})
    client = redis.Redis.from_url(redis_url)
    if client.blpop([key], timeout=30) is None:
        raise RuntimeError("the gate was never opened")
    return write_row(name)


def slow(name, seconds):
    """Take ``seconds`` (longer than a worker's heartbeat TTL, say), then write a row."""
    time.sleep(float(seconds))
    return write_row(name)


def stamp(name, redis_url, key, fails=0):
    """Record this attempt in Redis (RPUSH onto ``key``: when it started and the
    attempt number); the first ``fails`` attempts raise ``ValueError``, the next one
    writes a row."""
    started = time.time()
    attempt = running_job().attempt  # the tracker may not have been written yet
    client = redis.Redis.from_url(redis_url)
    count = client.rpush(key, json.dumps({"started": started, "attempt": attempt}))
    if count <= int(fails):
        raise ValueError("attempt %d of %s failed on purpose" % (count, name))
    return write_row(name)


def fail(name):
    """Write a row, then raise: the transaction must be aborted."""
    write_row(name)
    raise ValueError("job %s failed on purpose" % name)


def die(name):
    """Kill the process running the job (a forked work horse) after writing a row."""
    write_row(name)
    tg.config["DBSession"].flush()
    os.kill(os.getpid(), 9)


def until_cancelled(name, redis_url, key):
    """Report progress, then poll ``asyncjob_cancelled()`` (30 s at most); once it is
    true, RPUSH "cancelled" onto ``key`` and fail with a retryable ``ValueError``."""
    aj.asyncjob_set_progress(10, {"waiting": "cancel"})
    deadline = time.monotonic() + 30
    while not aj.asyncjob_cancelled():
        if time.monotonic() > deadline:
            raise RuntimeError("never cancelled")
        time.sleep(0.05)
    redis.Redis.from_url(redis_url).rpush(key, "cancelled")
    raise ValueError("stopped on request of %s" % name)


async def async_write(name):
    """An ``async def`` job: awaits, then writes a row as ``write_row`` does."""
    import asyncio
    await asyncio.sleep(0)
    return write_row(name)


def generator_job(name):
    """A generator function: refused at the call site (its body would never run)."""
    yield write_row(name)


class CountsPickling:
    """An argument that counts how often it is pickled (``CountsPickling.count``)."""

    count = 0

    def __reduce__(self):
        CountsPickling.count += 1
        return (CountsPickling, ())


class Tasks:
    """Static and class methods are importable by name: the rq backend accepts them."""

    @staticmethod
    def static(name):
        return write_row(name)

    @classmethod
    def klass(cls, name):
        return write_row(name)

    def method(self, name):
        return write_row(name)


#: A module-level instance: its bound method is NOT importable by name.
tasks = Tasks()


def noop():
    """Does nothing: for timing the backend itself."""


def spin(name):
    """Write a row, then loop in Python forever: only a time limit ends it."""
    tg.config["DBSession"].add(Row(name=name))
    tg.config["DBSession"].flush()
    while True:
        pass
