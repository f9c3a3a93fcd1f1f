"""Delayed hand-off in this process: jobs that must not start before a given time.

One thread per backend, started on the first delayed job, sleeping until the earliest
due time. It compares against the wall clock (``time.time()``), the clock the job's
``eta`` is given in, so a job never starts before its time. It sleeps at most
:data:`MAX_SLEEP` at a time (a due time years away must not reach the limits of
``threading``'s clocks), and survives anything its ``release`` callback raises: a
scheduler thread that died would leave every later delayed job queued forever.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

from .errors import QueueStopped
from .job import Job

log = logging.getLogger('tgext.asyncjob')

#: Longest single sleep, in seconds; the thread then looks at the clock again.
MAX_SLEEP = 3600.0


class Scheduler:
    """Holds delayed jobs and calls ``release(job)`` for each once it is due (jobs
    that finished meanwhile, e.g. cancelled, are skipped)."""

    def __init__(self, release: Callable[[Job], None]):
        self.release = release
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def schedule(self, job: Job, eta: float) -> None:
        """Release ``job`` at wall-clock time ``eta`` (seconds since the epoch).
        Raises :class:`QueueStopped` once :meth:`stop` was called."""
        with self._cond:
            if self._stopped:
                raise QueueStopped('the asyncjob scheduler was stopped')
            job.eta = eta
            heapq.heappush(self._heap, (eta, next(self._seq), job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name='asyncjob-scheduler')
                self._thread.start()
            self._cond.notify()

    def __len__(self) -> int:
        return len(self._heap)

    def _next_due(self) -> Job | None:
        """Wait for the next due job; ``None`` once stopped."""
        with self._cond:
            while not self._stopped:
                now = time.time()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                wait = min(self._heap[0][0] - now, MAX_SLEEP) if self._heap else MAX_SLEEP
                self._cond.wait(wait)
            return None

    def _run(self) -> None:
        while True:
            try:
                job = self._next_due()
                if job is None:
                    return
                if not job.state.finished:
                    self.release(job)
            except BaseException:  # noqa: B036 - this thread must outlive any job
                log.exception('asyncjob scheduler: releasing a due job failed')

    def stop(self) -> list[Job]:
        """Stop releasing; return the jobs still waiting that have not finished."""
        with self._cond:
            self._stopped = True
            left = [entry[2] for entry in sorted(self._heap, key=lambda e: e[:2])
                    if not entry[2].state.finished]
            self._heap.clear()
            self._cond.notify()
        return left

    def after_fork(self) -> None:
        """In a forked child: the parent's delayed jobs stay with the parent."""
        self._heap = []
        self._cond = threading.Condition()
        self._thread = None
