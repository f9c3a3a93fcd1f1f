"""The ``threads`` backend: threads of this process take jobs from a channel and run
each through ``runtime.execute`` (its own transaction and session). A job can raise
anything, ``SystemExit`` included, and the thread goes on; if a thread dies anyway,
the watchdog replaces it and fails the job it was running.
"""
from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from typing import TYPE_CHECKING

from . import checks
from .backends.base import Backend
from .channel import PriorityChannel
from .concurrency import KeySlots
from .errors import QueueFull, QueueStopped
from .job import Job, JobError, JobState

if TYPE_CHECKING:
    from .execution import Runtime

log = logging.getLogger('tgext.asyncjob')


class WorkerThread(threading.Thread):
    """One worker. ``current`` is the job it took, for the watchdog."""

    def __init__(self, pool: WorkerPool, index: int):
        super().__init__(name=f'asyncjob-worker-{index}', daemon=True)
        self.pool = pool
        self.current: Job | None = None

    def run(self) -> None:
        channel = self.pool.channel
        while True:
            job = channel.get()
            if job is None:
                return
            if self.pool.discarding:
                continue  # stop() gave up waiting: it reports the jobs left
            slots = self.pool.slots
            # Set aside if over its key's limit (the thread is free for others); the
            # next of its key comes back from release(), unless stop() gave up.
            while job is not None and not self.pool.discarding and slots.admit(job):
                self.current = job
                self.pool.runtime.execute(job)  # at once if cancelled or dropped meanwhile
                self.current = None
                job = slots.release(job)  # the next of its key, if one waited


class WorkerPool(Backend):
    """The default backend: ``workers`` threads of this process run the queue's jobs.

    Concurrency limits are counted in this process (:class:`~.concurrency.KeySlots`);
    time limits flag the job (:mod:`~.timelimits`, mode ``flag``).

    ``max_queue`` bounds the waiting jobs (0: unbounded); a full queue makes
    :meth:`enqueue` wait ``put_timeout`` seconds (``None``: as long as it takes),
    then raise :class:`QueueFull`. Waiting jobs run highest ``priority`` first, in
    arrival order within a priority (:mod:`.channel`); ``unique_key`` is held by the
    queue's tracker.
    """

    supports_priority = True
    supports_unique = True
    supports_concurrency_limit = True
    supports_time_limit = True

    def __init__(self, runtime: Runtime, workers: int = 1, max_queue: int = 0,
                 put_timeout: float | None = 10.0):
        super().__init__(runtime)
        self.slots = KeySlots()
        self.size = checks.count('workers', workers, minimum=1)
        self.max_queue = checks.count('max_queue', max_queue)
        self.put_timeout = checks.seconds('put_timeout', put_timeout, none_ok=True)
        self.channel = self._new_channel()
        self.threads: list[WorkerThread] = []
        self._started = False
        self._lock = threading.Lock()
        # Under _lock: once stop() set it, enqueue() refuses, so every job this
        # backend ever took is held before stop() sweeps the held jobs.
        self.discarding = False
        self._watchdog: threading.Thread | None = None
        self._watch = threading.Event()
        self.watch_interval = 1.0

    def _new_channel(self) -> PriorityChannel:
        return PriorityChannel(self.max_queue)

    def enqueue(self, job: Job) -> None:
        """Hand ``job`` to the threads. Raises :class:`QueueFull` when the bounded queue
        stayed full ``put_timeout`` seconds, :class:`QueueStopped` once :meth:`stop`
        has given up waiting."""
        with self._lock:
            if self.discarding:
                raise QueueStopped('the asyncjob queue was stopped: it accepts no more jobs')
            self.runtime.lifecycle.hold(job)
        try:
            self.channel.put(job, True, self.put_timeout)
        except stdqueue.Full:
            raise QueueFull(f'the asyncjob queue stayed full ({self.max_queue} jobs) for '
                            f'{self.put_timeout} s') from None

    def start(self) -> None:
        """Start the threads and the watchdog (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self.threads = [self._spawn(i) for i in range(self.size)]
            self._watch = threading.Event()
            self._watchdog = threading.Thread(target=self._watchdog_loop, daemon=True,
                                              name='asyncjob-watchdog')
            self._watchdog.start()
        log.debug('asyncjob worker pool: %d thread(s) started', self.size)

    def _spawn(self, index: int) -> WorkerThread:
        thread = WorkerThread(self, index)
        thread.start()
        return thread

    def check_threads(self) -> int:
        """Replace dead worker threads; fail the job each was running (a job it took
        but had not started is queued again). Returns how many were replaced."""
        if self.runtime.stopping:
            return 0
        replaced = 0
        with self._lock:
            for index, thread in enumerate(self.threads):
                if thread.is_alive():
                    continue
                job = thread.current
                if job is None:
                    log.error('asyncjob worker thread %s died; replacing it', thread.name)
                else:
                    log.error('asyncjob worker thread %s died while running %s (%s); '
                              'replacing it, the job failed', thread.name, job.id, job.func_name)
                self.threads[index] = self._spawn(index)
                replaced += 1
                following = self.slots.release(job) if job is not None else None
                if following is not None:
                    self.channel.put(following)
                if job is not None and job.state is JobState.QUEUED:
                    self.channel.put(job)  # it never started: someone else runs it
                elif job is not None:
                    self.runtime.lifecycle.fail(job, JobError(
                        'WorkerDied', f'worker thread {thread.name} died while running the job'))
        return replaced

    def _watchdog_loop(self) -> None:
        while not self._watch.wait(self.watch_interval):
            try:
                self.check_threads()
            except Exception:
                log.exception('asyncjob watchdog failed')

    def stop(self, timeout: float) -> list[str]:
        """Let the threads drain the channel until ``timeout``; then drop the jobs no
        thread has started and return their ids (in queue order).

        Each thread gets a sentinel behind the queued jobs and ends on reaching it. A
        thread still running a job at the deadline gets its sentinel next and ends after
        that job; the queue decides what becomes of the job.
        """
        deadline = time.monotonic() + max(timeout, 0)
        self._watch.set()
        threads = list(self.threads)
        for _ in threads:
            try:
                self.channel.put(None, True, max(deadline - time.monotonic(), 0))
            except stdqueue.Full:  # workers still busy: the rest is dropped below
                break
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            self.discarding = True
        dropped = []
        while True:  # empty the channel: frees memory, unblocks callers of a full put()
            try:
                job = self.channel.get_nowait()
            except stdqueue.Empty:
                break
            if job is not None and self.runtime.lifecycle.drop(
                    job, 'the queue was stopped before it started'):
                dropped.append(job.id)
        for thread in threads:
            if thread.is_alive():
                try:  # it ends after its current job
                    self.channel.put_nowait(None)
                except stdqueue.Full:
                    pass
        return dropped

    def after_fork(self) -> None:
        """In a forked child: the parent's threads are gone; start fresh ones if the
        parent had started any."""
        super().after_fork()
        self._lock = threading.Lock()
        self.channel = self._new_channel()
        self.slots = KeySlots()
        was_started, self._started = self._started, False
        self.threads = []
        self.discarding = False
        if was_started and not self.runtime.stopping:
            self.start()
