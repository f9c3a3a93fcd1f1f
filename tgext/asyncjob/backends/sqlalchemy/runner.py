"""The claim loop of one process: a fetcher thread claims due jobs for the threads
that are free, and ``threads`` executor threads run them.

One fetcher per process (not one per thread) makes one claim for all free threads
(one round trip for several jobs) and owns the single wake-up event, so no wake-up
is ever consumed by a thread that then finds nothing to do. Executors never claim:
a job's end is written behind (see the store), so an executor is free a few
microseconds after its job returns, and while a claim is on its way the others
finish theirs: with short jobs every claim takes a job for every thread.

While this worker's jobs are short (on average under :data:`PREFETCH_BELOW`), the
fetcher also claims ahead: enough jobs to keep every thread busy while its next
claim travels (as many as the threads run in one claim's time, at least one more
per thread, at most :data:`MAX_AHEAD` per thread), claiming again once half of them
have started. Jobs claimed ahead wait about one claim's round trip; no process holds
more than ``threads * (1 + MAX_AHEAD)`` jobs; long jobs are never claimed ahead.
"""
from __future__ import annotations

import logging
import math
import queue as stdqueue
import threading
import time
from typing import Any, Callable

log = logging.getLogger('tgext.asyncjob')

#: The longest wait between two claims after a database error.
MAX_BACKOFF = 5.0
#: The shortest wait for a job that is due but was not claimed.
MIN_WAIT = 0.01
#: Jobs claimed ahead while the average job of this runner lasts less (seconds).
PREFETCH_BELOW = 0.01
#: Jobs claimed ahead, at most, per thread.
MAX_AHEAD = 8


class Runner:
    """Runs claimed jobs on ``threads`` threads.

    ``claim(n)`` returns up to ``n`` claimed rows; ``execute(row)`` runs one (never
    raises); ``next_due()`` is the earliest ``run_at`` still queued (or ``None``);
    ``wake`` is set when new jobs may be due; the fetcher claims at least every
    ``poll_interval`` seconds. With ``burst``, :meth:`run` returns once no job is
    due and none runs.
    """

    def __init__(self, claim: Callable[[int], list[dict[str, Any]]],
                 execute: Callable[[dict[str, Any]], None],
                 next_due: Callable[[], float | None], wake: threading.Event, *,
                 unclaim: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
                 threads: int = 1, poll_interval: float = 1.0, burst: bool = False,
                 name: str = 'asyncjob'):
        if int(threads) < 1:
            raise ValueError(f'threads must be at least 1, got {threads!r}')
        self.claim = claim
        self.unclaim = unclaim
        self.execute = execute
        self.next_due = next_due
        self.wake = wake
        self.threads = int(threads)
        self.poll_interval = poll_interval
        self.burst = burst
        self.name = name
        self._work: stdqueue.SimpleQueue[dict[str, Any] | None] = stdqueue.SimpleQueue()
        self._stopping = threading.Event()
        self._released = threading.Event()
        # Rows go to the executors, and stop() sends its sentinels, under this lock: a
        # row claimed as the stop began is handed back, never left behind a sentinel.
        self._handoff = threading.Lock()
        self._taken = 0  # claimed and not finished: running, or waiting in _work
        self._idle = threading.Condition()  # notified whenever _taken goes down
        # Moving averages: how long a job runs (unknown counts as long), a claim takes.
        self._job_seconds = math.inf
        self._claim_seconds = 0.0
        self._executors: list[threading.Thread] = []
        self._fetcher: threading.Thread | None = None

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start the fetcher and executor threads (returns at once)."""
        self._executors = [threading.Thread(target=self._execute_loop, daemon=True,
                                            name=f'{self.name}-worker-{i}')
                           for i in range(self.threads)]
        for thread in self._executors:
            thread.start()
        self._fetcher = threading.Thread(target=self._fetch_loop, daemon=True,
                                         name=f'{self.name}-fetcher')
        self._fetcher.start()

    def run(self) -> None:
        """Start, and block until stopped and released (:meth:`release`), or, in
        burst mode, until out of due jobs and done with the running ones."""
        self.start()
        assert self._fetcher is not None
        while self._fetcher.is_alive():
            self._fetcher.join(0.5)  # wakes up for KeyboardInterrupt
        if self._stopping.is_set():
            # stop() decides how long running jobs get and what becomes of the rest.
            while not self._released.wait(0.5):
                pass
            return
        for _ in self._executors:
            self._work.put(None)
        for thread in self._executors:
            thread.join()

    def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            wanted = self._wanted()
            if not wanted:
                continue
            self.wake.clear()  # a wake-up from now on means: claim again
            started = time.monotonic()
            try:
                rows = [] if self._stopping.is_set() else self.claim(wanted)
                self._claim_seconds = _average(self._claim_seconds,
                                               time.monotonic() - started)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning('asyncjob: cannot claim jobs, retrying until the database '
                                'answers: %s', exc)
                self._stopping.wait(min(0.1 * 2 ** failures, MAX_BACKOFF))
                continue
            if failures:
                log.warning('asyncjob: claiming jobs again')
                failures = 0
            if rows:
                with self._handoff:
                    stopping = self._stopping.is_set()
                    if not stopping:
                        with self._idle:
                            self._taken += len(rows)
                        for row in rows:
                            self._work.put(row)
                if stopping:  # claimed as the stop began: back to the queue, unrun
                    self.unclaim(rows)
                continue
            if self.burst and self._burst_done():
                return
            self._wait_for_work()

    def _wanted(self) -> int:
        """How many jobs to claim now, once there is room (0 after half a second
        without any, to look at the stop flag again)."""
        ahead = 0
        if self._job_seconds < PREFETCH_BELOW:
            per_claim = self._claim_seconds / max(self._job_seconds, 1e-6)
            ahead = self.threads * min(max(math.ceil(per_claim), 1), MAX_AHEAD)
        # Room to claim: a free thread or, claiming ahead, half of those ahead started.
        full = self.threads + ahead // 2 + 1 if ahead else self.threads
        with self._idle:
            if self._taken >= full:
                self._idle.wait(0.5)
            if self._taken >= full:
                return 0
            return self.threads + ahead - self._taken

    def _burst_done(self) -> bool:
        with self._idle:
            if self._taken:
                self._idle.wait(0.5)
                return False
        due = self.next_due()
        return due is None or due > time.time()

    def _wait_for_work(self) -> None:
        timeout = self.poll_interval
        try:
            due = self.next_due()
        except Exception:
            due = None
        if due is not None:
            # A job due already that the claim did not take (its key's look is not yet
            # due, a row locked by a cancel) is tried again soon, not in a busy loop.
            timeout = min(timeout, max(due - time.time(), MIN_WAIT))
        self.wake.wait(timeout)

    def _execute_loop(self) -> None:
        while True:
            row = self._work.get()
            if row is None:
                return
            started = time.monotonic()
            try:
                self.execute(row)
            except BaseException:  # execute never raises; if it does, the thread goes on
                log.exception('asyncjob: running job %s failed unexpectedly', row.get('id'))
            self._job_seconds = _average(self._job_seconds, time.monotonic() - started)
            with self._idle:
                self._taken -= 1
                self._idle.notify_all()

    # -- stopping ------------------------------------------------------------------

    def stop(self, timeout: float) -> bool:
        """Claim no more; jobs claimed but not started (claimed ahead) are handed
        back, unrun; wait up to ``timeout`` s for running jobs. True if none is left
        running."""
        deadline = time.monotonic() + max(timeout, 0)
        waiting = []
        with self._handoff:
            self._stopping.set()
            while True:
                try:
                    row = self._work.get(block=False)
                except stdqueue.Empty:
                    break
                if row is not None:
                    waiting.append(row)
            for _ in self._executors:
                self._work.put(None)
        if waiting:
            with self._idle:
                self._taken -= len(waiting)
                self._idle.notify_all()
            self.unclaim(waiting)
        self.wake.set()
        for thread in self._executors:
            thread.join(max(deadline - time.monotonic(), 0))
        return not any(t.is_alive() for t in self._executors)

    def release(self) -> None:
        """Let :meth:`run` return (after :meth:`stop` and whatever follows it)."""
        self._released.set()


def _average(average: float, value: float) -> float:
    """The moving average of a duration after ``value`` (the first value when none)."""
    return value if average in (math.inf, 0.0) else 0.8 * average + 0.2 * value
