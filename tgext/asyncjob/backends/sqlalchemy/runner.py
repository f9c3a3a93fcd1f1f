"""The claim loop of one process: a fetcher thread claims due jobs for the threads
that are free, and ``threads`` executor threads run them.

One fetcher per process (not one per thread) makes one claim for all free threads
(one round trip for several jobs) and owns the single wake-up event, so no wake-up
is ever consumed by a thread that then finds nothing to do. While jobs keep coming,
an executor that finished one claims its next itself, at once: the claims of busy
threads run side by side instead of queuing behind the fetcher's one at a time (each
waits for a commit); an executor that finds nothing goes back to the fetcher. An
executor claims for itself only while the last claim found all it asked for.
"""
from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from typing import Any, Callable

log = logging.getLogger('tgext.asyncjob')

#: The longest wait between two claims after a database error.
MAX_BACKOFF = 5.0
#: The shortest wait for a job that is due but was not claimed.
MIN_WAIT = 0.01


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
        self._free = threading.Semaphore(self.threads)
        self._work: stdqueue.SimpleQueue[dict[str, Any] | None] = stdqueue.SimpleQueue()
        self._stopping = threading.Event()
        self._released = threading.Event()
        # Rows go to the executors, and stop() sends its sentinels, under this lock: a
        # row claimed as the stop began is handed back, never left behind a sentinel.
        self._handoff = threading.Lock()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._idle = threading.Condition(self._busy_lock)
        self._executors: list[threading.Thread] = []
        # Whether the last claim found as many jobs as it asked for (more may be due):
        # only then does a finishing executor claim for itself (a hint: if wrong, one
        # empty claim, or the next job waits for the fetcher's wake-up or poll).
        self._more = False
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

    @property
    def busy(self) -> int:
        """How many jobs are running now."""
        return self._busy

    def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if not self._free.acquire(timeout=0.5):
                continue  # every thread busy
            free = 1
            while free < self.threads and self._free.acquire(blocking=False):
                free += 1
            self.wake.clear()  # a wake-up from now on means: claim again
            try:
                rows = [] if self._stopping.is_set() else self.claim(free)
            except Exception as exc:
                for _ in range(free):
                    self._free.release()
                failures += 1
                if failures == 1:
                    log.warning('asyncjob: cannot claim jobs, retrying until the database '
                                'answers: %s', exc)
                self._stopping.wait(min(0.1 * 2 ** failures, MAX_BACKOFF))
                continue
            if failures:
                log.warning('asyncjob: claiming jobs again')
                failures = 0
            self._more = len(rows) == free
            for _ in range(free - len(rows)):
                self._free.release()
            if rows:
                with self._handoff:
                    stopping = self._stopping.is_set()
                    if not stopping:
                        with self._busy_lock:
                            self._busy += len(rows)
                        for row in rows:
                            self._work.put(row)
                if stopping:  # claimed as the stop began: back to the queue, unrun
                    for _ in rows:
                        self._free.release()
                    self.unclaim(rows)
                continue
            if self.burst and self._burst_done():
                return
            self._wait_for_work()

    def _burst_done(self) -> bool:
        with self._busy_lock:
            if self._busy:
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
            while row is not None:
                try:
                    self.execute(row)
                except BaseException:  # execute never raises; if it does, the thread goes on
                    log.exception('asyncjob: running job %s failed unexpectedly',
                                  row.get('id'))
                row = self._claim_next()  # still counted busy, still holding its slot
            with self._busy_lock:
                self._busy -= 1
                self._idle.notify_all()
            self._free.release()

    def _claim_next(self) -> dict[str, Any] | None:
        """One due row for this executor, or ``None`` (none due, stopping, or the
        claim failed: the fetcher retries and reports)."""
        if self._stopping.is_set() or not self._more:
            return None
        try:
            rows = self.claim(1)
        except Exception as exc:
            log.debug('asyncjob: an executor could not claim its next job: %s', exc)
            rows = []
        if not rows:
            self._more = False
            return None
        with self._handoff:
            if not self._stopping.is_set():
                return rows[0]
        try:  # claimed as the stop began: back to the queue, unrun
            self.unclaim(rows)
        except Exception:  # left running: the rescue of this worker's jobs takes it
            log.exception('asyncjob: could not queue job %s again', rows[0].get('id'))
        return None

    # -- stopping ------------------------------------------------------------------

    def stop(self, timeout: float) -> bool:
        """Claim no more; wait up to ``timeout`` s for running jobs. True if none is
        left running."""
        deadline = time.monotonic() + max(timeout, 0)
        with self._handoff:
            self._stopping.set()
            for _ in self._executors:
                self._work.put(None)
        self.wake.set()
        for thread in self._executors:
            thread.join(max(deadline - time.monotonic(), 0))
        return not any(t.is_alive() for t in self._executors)

    def release(self) -> None:
        """Let :meth:`run` return (after :meth:`stop` and whatever follows it)."""
        self._released.set()
