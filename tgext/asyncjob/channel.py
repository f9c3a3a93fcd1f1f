"""The channel of the ``threads`` backend: waiting jobs, highest priority first and
first in, first out within a priority, bounded or not.

It speaks the part of :class:`queue.Queue` the pool uses (``put``, ``put_nowait``,
``get``, ``get_nowait``; ``queue.Full``, ``queue.Empty``), with ``None`` as the
sentinel that ends a worker thread: sentinels come after every job already waiting.
"""
from __future__ import annotations

import heapq
import itertools
import queue as stdqueue
import threading
from typing import Any

from .job import Job

#: Where a sentinel sorts: behind every job (priorities stop at 100).
_SENTINEL_RANK = 1 << 30


class PriorityChannel:
    """Jobs by ``job.options.priority`` (higher first, default 0), then arrival.
    ``maxsize`` bounds the waiting items (0: unbounded).

    ``put`` is on every request that queues a job, so it is built from C parts: the
    items wait in a heap under a plain lock, and a ``SimpleQueue`` carries one token
    per item, on which idle workers block. A put thus wakes one worker without the
    Python-level ``Condition`` of :class:`queue.PriorityQueue`; the worker that gets a
    token pops the best item waiting then (there is one: an item is pushed before its
    token, and popped only after a token is taken). Only a bounded channel has a
    condition, for callers waiting for room.
    """

    def __init__(self, maxsize: int = 0):
        self._maxsize = maxsize
        self._heap: list[tuple[int, int, Job | None]] = []
        self._lock = threading.Lock()
        #: Waited on by puts into a full bounded channel; shares the heap's lock.
        self.not_full = threading.Condition(self._lock)
        self._tokens: stdqueue.SimpleQueue[None] = stdqueue.SimpleQueue()
        self._arrival = itertools.count()  # next() is atomic under the GIL

    def _item(self, job: Job | None) -> tuple[int, int, Job | None]:
        if job is None:
            rank = _SENTINEL_RANK
        else:
            rank = -(getattr(job.options, 'priority', None) or 0)
        return rank, next(self._arrival), job

    def put(self, job: Job | None, block: bool = True, timeout: float | None = None) -> None:
        """Add a job (or the sentinel ``None``); ``queue.Full`` as ``Queue.put``: at once
        if not ``block``, else after ``timeout`` seconds (``None``: never) without room."""
        item = self._item(job)
        if self._maxsize:
            with self.not_full:
                if not self.not_full.wait_for(self._has_room, timeout if block else 0):
                    raise stdqueue.Full
                heapq.heappush(self._heap, item)
        else:
            with self._lock:
                heapq.heappush(self._heap, item)
        self._tokens.put(None)

    def _has_room(self) -> bool:
        return len(self._heap) < self._maxsize

    def put_nowait(self, job: Job | None) -> None:
        """:meth:`put` without waiting."""
        self.put(job, False)

    def get(self) -> Job | None:
        """The next job, waiting for one; ``None`` is the sentinel."""
        self._tokens.get()
        return self._pop()

    def get_nowait(self) -> Job | None:
        """The next job at once; ``queue.Empty`` if none waits."""
        self._tokens.get_nowait()
        return self._pop()

    def _pop(self) -> Job | None:
        with self._lock:
            job = heapq.heappop(self._heap)[2]
            if self._maxsize:
                self.not_full.notify()
        return job

    def qsize(self) -> int:
        """How many items wait (approximate, as ``Queue.qsize``)."""
        return len(self._heap)

    def empty(self) -> bool:
        """True if nothing waits (approximate, as ``Queue.empty``)."""
        return not self._heap
