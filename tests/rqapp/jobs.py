"""Jobs the RQ tests queue. Module-level, so RQ worker processes import them by name."""

import os

import redis
import rq
import tg

import tgext.asyncjob as aj
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


def fail(name):
    """Write a row, then raise: the transaction must be aborted."""
    write_row(name)
    raise ValueError("job %s failed on purpose" % name)


def die(name):
    """Kill the process running the job (a forked work horse) after writing a row."""
    write_row(name)
    tg.config["DBSession"].flush()
    os.kill(os.getpid(), 9)


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
