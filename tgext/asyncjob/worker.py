"""The worker pool: threads that take jobs from a queue and run each in its own
transaction. A job can raise anything, ``SystemExit`` included, and the thread goes on;
if a thread dies anyway, the watchdog replaces it and fails the job it held.
"""
from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
from typing import TYPE_CHECKING, Any

from .context import enter_job, leave_job
from .database import end_job_sessions, run_in_transaction
from .errors import QueueFull, QueueStopped
from .job import Job, JobError, JobState
from .retry import policy_for

if TYPE_CHECKING:
    from .queue import JobQueue

log = logging.getLogger('tgext.asyncjob')


def run_job(q: JobQueue, job: Job) -> None:
    """Run one job to its end and record how it ended. Never raises."""
    if job.cancelled:
        return
    q.started(job)
    enter_job(q, job)
    try:
        result = run_in_transaction(job.func, job.args, job.kwargs, q.attempts, conf=q.conf)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt must not end the worker
        leave_job()
        error = JobError.from_exception(exc)
        policy = policy_for(job.retry, job.func)
        if (policy is not None and not q.stopped and policy.should_retry(exc, job.attempt)
                and getattr(q.backend, 'supports_retry', True)):
            log.warning('asyncjob %s (%s) attempt %d failed (%s: %s); retrying', job.id,
                        job.func_name, job.attempt, error.type, error.message)
            q.retry_later(job, error, policy.delay(job.attempt))
        else:
            log.error('asyncjob %s (%s) failed, its transaction was aborted',
                      job.id, job.func_name, exc_info=True)
            q.finished(job, JobState.FAILED, error=error)
    else:
        leave_job()
        q.finished(job, JobState.SUCCEEDED, result=result)
    finally:
        end_job_sessions(q.conf)


class WorkerThread(threading.Thread):
    """One worker. ``current`` is the job it holds, for the watchdog."""

    def __init__(self, pool: WorkerPool, index: int):
        super().__init__(name=f'asyncjob-worker-{index}', daemon=True)
        self.pool = pool
        self.current: Job | None = None

    def run(self) -> None:
        pool = self.pool
        q = pool.queue
        conf = q.conf
        if conf is not None:
            # tg.config inside a job is the job's own app, even with several apps per process.
            from tg.request_local import config as tg_config
            tg_config.push_thread_config(conf)
        while True:
            job = pool.channel.get()
            if job is None:
                return
            if pool.claim(job, self):
                run_job(q, job)  # returns at once for a job cancelled while queued
                self.current = None


class WorkerPool:
    """The default backend: ``size`` threads of this process run the queue's jobs.

    ``max_queue`` bounds the waiting jobs (0: unbounded); a full queue makes
    :meth:`enqueue` wait ``put_timeout`` seconds, then raise :class:`QueueFull`.
    """

    #: Capability flags shared by every backend (see ``tgext.asyncjob.backends``).
    durable = False
    supports_cancel = True
    supports_immediate = True
    supports_retry = True

    def __init__(self, queue: JobQueue, size: int, max_queue: int = 0,
                 put_timeout: float | None = 10.0):
        self.queue = queue
        self.size = size
        self.max_queue = max_queue
        self.put_timeout = put_timeout
        self.channel = self._new_channel()
        self.threads: list[WorkerThread] = []
        self.discarding = False
        self._started = False
        self._lock = threading.Lock()
        # Jobs in the channel that no thread has claimed yet, by id. A thread claims a
        # job, and stop() takes the unclaimed ones, under ``_handoff``: so each job is
        # either run or reported by stop(), never both, never neither.
        self._waiting: dict[str, Job] = {}
        self._handoff = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._watch = threading.Event()
        self.watch_interval = 1.0

    def _new_channel(self) -> Any:
        # SimpleQueue is C code, several times cheaper than Queue, and needs no bound.
        return stdqueue.Queue(self.max_queue) if self.max_queue else stdqueue.SimpleQueue()

    def enqueue(self, job: Job) -> None:
        """Hand ``job`` to the threads. Raises :class:`QueueFull` when the bounded queue
        stayed full ``put_timeout`` seconds, :class:`QueueStopped` (the job is then
        reported as not run) once :meth:`stop` has given up waiting."""
        with self._handoff:
            refused = self.discarding
            if not refused:
                self._waiting[job.id] = job
        if refused:
            job.cancelled = True
            self.queue.report_unrun(job, 'the queue was stopped before it started')
            raise QueueStopped('the asyncjob queue was stopped: it accepts no more jobs')
        self.queue.hold(job)
        try:
            self.channel.put(job, True, self.put_timeout)
        except stdqueue.Full:
            with self._handoff:
                self._waiting.pop(job.id, None)
            raise QueueFull(f'the asyncjob queue stayed full ({self.max_queue} jobs) for '
                            f'{self.put_timeout} s') from None

    def claim(self, job: Job, thread: WorkerThread) -> bool:
        """A thread took ``job`` from the channel: make it the thread's ``current``.
        False if :meth:`stop` already reported the job as not run."""
        with self._handoff:
            if self._waiting.pop(job.id, None) is None:
                return False
            thread.current = job
            return True

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

    def _spawn(self, index: int) -> WorkerThread:
        thread = WorkerThread(self, index)
        thread.start()
        return thread

    def check_threads(self) -> int:
        """Replace dead worker threads; fail the job each held. Returns how many."""
        if self.queue.stopped:
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
                    self.queue.finished(job, JobState.FAILED, error=JobError(
                        'WorkerDied', f'worker thread {thread.name} died while running the job'))
                self.threads[index] = self._spawn(index)
                replaced += 1
        return replaced

    def _watchdog_loop(self) -> None:
        while not self._watch.wait(self.watch_interval):
            try:
                self.check_threads()
            except Exception:
                log.exception('asyncjob watchdog failed')

    def run_now(self, job: Job) -> None:
        """Immediate mode: run ``job`` in a fresh thread (its own session and
        transaction, as in a worker) and wait for it."""
        self.queue.hold(job)
        thread = threading.Thread(target=self._run_immediate, args=(job,),
                                  name='asyncjob-immediate', daemon=True)
        thread.start()
        thread.join()

    def _run_immediate(self, job: Job) -> None:
        conf = self.queue.conf
        if conf is not None:
            from tg.request_local import config as tg_config
            tg_config.push_thread_config(conf)
        run_job(self.queue, job)

    def stop(self, timeout: float) -> list[str]:
        """Let the threads drain the queue until ``timeout``; report what is left.

        Each thread gets a sentinel behind the queued jobs and ends on reaching it.
        At the deadline, the jobs no thread has claimed are reported (logged at
        WARNING, marked cancelled) and their ids returned; jobs already running are
        left to finish.
        """
        deadline = time.monotonic() + max(timeout, 0)
        self._watch.set()
        threads = list(self.threads)
        for _ in threads:
            try:
                self.channel.put(None, True, max(deadline - time.monotonic(), 0))
            except stdqueue.Full:  # workers still busy: the rest is reported below
                break
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._handoff:
            self.discarding = True
            unrun = [job for job in self._waiting.values() if not job.cancelled]
            self._waiting.clear()
            for job in unrun:
                job.cancelled = True
        while True:  # empty the channel: frees memory, unblocks callers of a full put()
            try:
                self.channel.get_nowait()
            except stdqueue.Empty:
                break
        for thread in threads:
            if thread.is_alive():
                try:  # it ends after its current job
                    self.channel.put_nowait(None)
                except stdqueue.Full:
                    pass
                running = thread.current
                if running is not None:
                    log.warning('asyncjob %s (%s) still running at stop; left to finish',
                                running.id, running.func_name)
        for job in unrun:
            self.queue.report_unrun(job, 'the queue was stopped before it started')
        return [job.id for job in unrun]

    def after_fork(self) -> None:
        """In a forked child: the parent's threads are gone; start fresh ones if the
        parent had started any."""
        self._lock = threading.Lock()
        self._handoff = threading.Lock()
        self._waiting = {}
        self.channel = self._new_channel()
        was_started, self._started = self._started, False
        self.threads = []
        if was_started and not self.queue.stopped:
            self.start()
