"""The channel of the ``threads`` backend: waiting jobs, highest priority first and
first in, first out within a priority, bounded or not.

It speaks the part of :class:`queue.Queue` the pool uses (``put``, ``put_nowait``,
``get``, ``get_nowait``; ``queue.Full``, ``queue.Empty``), with ``None`` as the
sentinel that ends a worker thread: sentinels come after every job already waiting.
"""
from __future__ import annotations

import itertools
import queue as stdqueue
from typing import Any

from .job import Job

#: Where a sentinel sorts: behind every job (priorities stop at 100).
_SENTINEL_RANK = 1 << 30


class PriorityChannel:
    """Jobs by ``job.options.priority`` (higher first, default 0), then arrival.
    ``maxsize`` bounds the waiting items (0: unbounded)."""

    def __init__(self, maxsize: int = 0):
        self._queue: stdqueue.PriorityQueue[tuple[int, int, Job | None]] = (
            stdqueue.PriorityQueue(maxsize))
        self._arrival = itertools.count()  # next() is atomic under the GIL

    def _item(self, job: Job | None) -> tuple[int, int, Job | None]:
        if job is None:
            rank = _SENTINEL_RANK
        else:
            rank = -(getattr(job.options, 'priority', None) or 0)
        return rank, next(self._arrival), job

    def put(self, job: Job | None, block: bool = True, timeout: float | None = None) -> None:
        """Add a job (or the sentinel ``None``); ``queue.Full`` as ``Queue.put``."""
        self._queue.put(self._item(job), block, timeout)

    def put_nowait(self, job: Job | None) -> None:
        """:meth:`put` without waiting."""
        self._queue.put_nowait(self._item(job))

    def get(self) -> Job | None:
        """The next job, waiting for one; ``None`` is the sentinel."""
        return self._queue.get()[2]

    def get_nowait(self) -> Job | None:
        """The next job at once; ``queue.Empty`` if none waits."""
        return self._queue.get_nowait()[2]

    def qsize(self) -> int:
        """How many items wait (approximate, as ``Queue.qsize``)."""
        return self._queue.qsize()

    def empty(self) -> bool:
        """True if nothing waits (approximate, as ``Queue.empty``)."""
        return self._queue.empty()

    @property
    def not_full(self) -> Any:
        """The condition ``put`` waits on while the channel is full."""
        return self._queue.not_full
