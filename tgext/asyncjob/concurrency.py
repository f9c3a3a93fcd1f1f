"""Concurrency limits: at most ``concurrency_limit`` jobs of one ``concurrency_key``
run at once; the others wait, in the order they were queued.

:class:`~tgext.asyncjob.options.JobOptions` checks the options at the call site.
:class:`KeySlots` is the threads backend's bookkeeping, within one process: a job over its key's limit is
set aside (it holds no worker thread while it waits) and handed back when a job of
its key ends, however it ends. The ``sqlalchemy`` backend counts in the database
instead (:mod:`tgext.asyncjob.backends.sqlalchemy.keyed`), across processes.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from .job import Job, JobState


def key_of(job: Job) -> tuple[str, int] | None:
    """``(concurrency_key, concurrency_limit)`` of ``job``, or ``None``."""
    key = getattr(job.options, 'concurrency_key', None)
    if key is None:
        return None
    return key, job.options.concurrency_limit


class KeySlots:
    """Running jobs per key in this process, and the jobs set aside until a slot of
    their key is free (oldest first). The limit applied is the one of the job about
    to start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque[Job]] = {}
        self._granted: set[str] = set()  # handed back by release(), slot already taken

    def admit(self, job: Job) -> bool:
        """True if ``job`` may run now (its slot is taken); False if it was set aside,
        to come back from :meth:`release`. Jobs without a key always run."""
        keyed = key_of(job)
        if keyed is None:
            return True
        key, limit = keyed
        with self._lock:
            if job.id in self._granted:
                self._granted.discard(job.id)
                return True
            waiting = self._waiting.get(key)
            if not waiting and self._running[key] < limit:
                self._running[key] += 1
                return True
            self._waiting.setdefault(key, collections.deque()).append(job)
            return False

    def release(self, job: Job) -> Job | None:
        """``job`` (admitted) ended, on whatever path: free its slot; return the next
        job of its key to run now, if one waits and fits: its slot is taken, and
        :meth:`admit` lets it in, whichever thread it reaches."""
        keyed = key_of(job)
        if keyed is None:
            return None
        key = keyed[0]
        with self._lock:
            self._running[key] -= 1
            waiting = self._waiting.get(key, collections.deque())
            while waiting and waiting[0].state is not JobState.QUEUED:
                waiting.popleft()  # cancelled or dropped while it waited
            following = None
            if waiting and self._running[key] < waiting[0].options.concurrency_limit:
                following = waiting.popleft()
                self._running[key] += 1
                self._granted.add(following.id)
            if not waiting:
                self._waiting.pop(key, None)
            if self._running[key] <= 0:
                del self._running[key]
            return following

    def waiting(self) -> int:
        """How many jobs are set aside now (for tests and reports)."""
        with self._lock:
            return sum(len(q) for q in self._waiting.values())
