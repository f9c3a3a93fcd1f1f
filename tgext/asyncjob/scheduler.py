"""Delayed hand-off: jobs that must not start before a given time wait here.

One thread per queue, started on the first delayed job, sleeping until the earliest
due time. It compares against the wall clock (``time.time()``), the clock the job's
``eta`` is given in, so a job never starts before its time.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable

from .job import Job


class Scheduler:
    """Holds delayed jobs and calls ``release(job)`` for each once it is due."""

    def __init__(self, release: Callable[[Job], None]):
        self.release = release
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def schedule(self, job: Job, eta: float) -> None:
        """Release ``job`` at wall-clock time ``eta`` (seconds since the epoch)."""
        job.eta = eta
        with self._cond:
            heapq.heappush(self._heap, (eta, next(self._seq), job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name='asyncjob-scheduler')
                self._thread.start()
            self._cond.notify()

    def __len__(self) -> int:
        return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    timeout = self._heap[0][0] - time.time() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                job = heapq.heappop(self._heap)[2]
            if not job.cancelled:
                self.release(job)

    def stop(self) -> list[Job]:
        """Stop releasing; return the jobs still waiting (not cancelled)."""
        with self._cond:
            self._stopped = True
            left = [entry[2] for entry in sorted(self._heap) if not entry[2].cancelled]
            self._heap.clear()
            self._cond.notify()
        return left

    def after_fork(self) -> None:
        """In a forked child: the parent's delayed jobs stay with the parent."""
        self._heap = []
        self._cond = threading.Condition()
        self._thread = None
