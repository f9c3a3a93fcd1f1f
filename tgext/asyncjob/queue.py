"""The job queue: takes jobs, tracks them, hands them to the worker pool, and
answers for their status. One ``JobQueue`` per application (``app_globals.asyncjob_queue``).
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable, Mapping

from .errors import NotInJobError, QueueFull, QueueStopped, TrackerUnavailable
from .context import running_job
from .forking import reset_in_child
from .hooks import Hooks
from .job import Job, JobError, JobState, JobStatus
from .retry import Retry, require_retry
from .scheduler import Scheduler
from .trackers.base import as_store, check_progress_value

log = logging.getLogger('tgext.asyncjob')


def eta_of(delay: float | None, at: Any, now: float) -> float | None:
    """The start time for ``delay`` seconds after ``now`` or ``at`` (datetime or epoch
    seconds); ``TypeError``/``ValueError`` for anything else."""
    if delay is not None and at is not None:
        raise TypeError('give delay or at, not both')
    if delay is not None:
        if not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError(f'delay must be a number of seconds >= 0, got {delay!r}')
        return now + delay
    if at is not None:
        if hasattr(at, 'timestamp'):
            at = at.timestamp()
        if not isinstance(at, (int, float)):
            raise TypeError(f'at must be a datetime or epoch seconds, got {at!r}')
        return float(at)
    return None


def _open_transaction() -> Any:
    """The thread's current transaction, if one was begun (TG's ``tm`` begins one per
    request, ``with transaction.manager:`` in scripts), else ``None``.

    ``transaction.get()`` would create one implicitly, which nobody would ever commit.
    """
    import transaction
    return getattr(transaction.manager.manager, '_txn', None)


class JobQueue:
    """Accepts jobs and runs them on a pool of ``workers`` threads.

    ``max_queue`` bounds the number of waiting jobs (0: unbounded); when full,
    :meth:`perform` waits up to ``put_timeout`` seconds, then raises :class:`QueueFull`.
    ``attempts`` retries transactions that fail with a retryable conflict.
    ``immediate`` runs each job synchronously, still in its own thread, session and
    transaction (for tests). ``conf`` is the TurboGears configuration jobs run under.
    ``backend`` runs the jobs: by default a :class:`~tgext.asyncjob.worker.WorkerPool`
    of threads in this process.
    """

    def __init__(self, tracker: Any = None, *, workers: int = 1, max_queue: int = 0,
                 put_timeout: float | None = 10.0, attempts: int = 1,
                 immediate: bool = False, conf: Mapping[str, Any] | None = None,
                 hooks: list[Any] | tuple[Any, ...] = (), stop_timeout: float = 10.0,
                 backend: Any = None, backend_options: dict[str, Any] | None = None,
                 enqueue_on_commit: bool = False):
        if tracker is None:
            from .trackers.memory import MemoryProgressTracker
            tracker = MemoryProgressTracker()
        if int(workers) < 1:
            raise ValueError(f'workers must be at least 1, got {workers!r}')
        if int(max_queue) < 0:
            raise ValueError(f'max_queue must not be negative, got {max_queue!r}')
        self.tracker = tracker
        self.store = as_store(tracker)
        self.workers = int(workers)
        self.max_queue = int(max_queue)
        self.put_timeout = put_timeout
        self.attempts = max(int(attempts), 1)
        self.immediate = bool(immediate)
        self.conf = conf
        self.hooks = Hooks(hooks)
        self.stop_timeout = stop_timeout
        self.enqueue_on_commit = bool(enqueue_on_commit)
        self._scheduler: Scheduler | None = None
        self._jobs: dict[str, Job] = {}
        self._stopped = False
        self._tracker_down = False
        self._tracker_lock = threading.Lock()
        self._finished = threading.Condition()
        self._waiters = 0
        self.backend = self._make_backend(backend, backend_options or {})
        self._backend_check = getattr(self.backend, 'check', None)
        # A backend that schedules itself (rq: in Redis) keeps delayed jobs and retries
        # durable; otherwise they wait in this process's Scheduler thread.
        self._backend_schedule: Callable[[Job, float], None] | None = (
            self.backend.schedule if getattr(self.backend, 'supports_schedule', False)
            else None)
        _QUEUES.add(self)  # for stop_all() at interpreter exit
        # Registered after its tracker, so the tracker is reset first in a child.
        reset_in_child(self, '_after_fork')

    def _make_backend(self, backend: Any, options: dict[str, Any]) -> Any:
        if backend in (None, 'threads'):
            from .worker import WorkerPool
            return WorkerPool(self, self.workers, self.max_queue, self.put_timeout)
        if backend == 'rq':
            from .backends.rq import RQBackend
            return RQBackend(self, **options)
        if backend == 'sqlalchemy':
            from .backends.sqlalchemy import SQLAlchemyBackend
            return SQLAlchemyBackend(self, **options)
        if callable(backend):
            return backend(self, **options)
        raise ValueError(f'unknown asyncjob backend {backend!r}: use "threads", "rq", '
                         'or a factory taking the JobQueue')

    # -- taking jobs ---------------------------------------------------------------

    def perform(self, func: Callable[..., Any], args: tuple = (),
                kwargs: dict[str, Any] | None = None, *, delay: float | None = None,
                at: float | None = None, on_commit: bool | None = None,
                retry: Retry | None = None) -> str:
        """Queue ``func(*args, **kwargs)``; return its id once it is tracked.

        ``delay`` (seconds) or ``at`` (epoch seconds) hold the job until then;
        ``on_commit`` hands it over only when the current transaction commits
        (default: the queue's ``enqueue_on_commit``); ``retry`` is a :class:`Retry`.
        """
        if not callable(func):
            raise TypeError(f'asyncjob_perform needs a callable, got {type(func).__name__}: {func!r}')
        if self._stopped:
            raise QueueStopped('the asyncjob queue was stopped: it accepts no more jobs')
        require_retry(retry)
        job = Job(func, args, kwargs or {}, retry=retry)
        record = {'state': 'queued', 'enqueued_at': job.enqueued_at, 'name': job.func_name}
        if delay is not None or at is not None:
            record['eta'] = job.eta = eta_of(delay, at, job.enqueued_at)
        if self._backend_check is not None:
            self._backend_check(job)  # e.g. rq: an importable callable, picklable arguments
        txn = None
        if on_commit or (on_commit is None and self.enqueue_on_commit):
            txn = _open_transaction()
            if txn is not None:
                record['detail'] = 'waiting for the transaction that queued it to commit'
        # The request path: _guard() inlined.
        try:
            self.store.track(job.id, record)
        except TrackerUnavailable as exc:
            self._tracker_failed(exc)
        else:
            if self._tracker_down:
                self._tracker_back()
        if self.hooks:
            self.hooks.emit('enqueued', job)
        if txn is not None:
            self.hold(job)
            txn.addAfterCommitHook(self._after_commit, (job,))
            txn.addAfterAbortHook(self._after_abort, (job,))
        else:
            self._hand_off(job)
        return job.id

    def _hand_off(self, job: Job) -> None:
        """Give a job to the scheduler if it is not due yet, else to the backend."""
        if job.eta is not None and job.eta > time.time() and not self.immediate:
            self._schedule(job, job.eta)
            return
        try:
            if self.immediate:
                self.backend.run_now(job)
                self.flush_tracker()  # the caller sees the final state at once
            else:
                self.backend.enqueue(job)
        except QueueFull:
            self._jobs.pop(job.id, None)
            self._guard(self.store.remove, job.id)
            raise

    def _release(self, job: Job) -> None:
        """A delayed job is due (called by the scheduler thread)."""
        try:
            self.backend.enqueue(job)
        except QueueStopped:
            pass  # the backend already reported it
        except Exception as exc:
            log.exception('asyncjob %s (%s): could not hand over a due job', job.id, job.func_name)
            self.finished(job, JobState.FAILED, error=JobError.from_exception(exc))

    def _after_commit(self, committed: bool, job: Job) -> None:
        if not committed:
            self._after_abort(job)
            return
        try:
            self._hand_off(job)
        except Exception:
            log.exception('asyncjob %s (%s): could not queue after commit', job.id, job.func_name)
            self._after_abort(job, 'it could not be queued after the commit')

    def _after_abort(self, job: Job, why: str = 'the transaction that queued it aborted') -> None:
        if not job.cancelled:
            job.cancelled = True
            self.finished(job, JobState.CANCELLED, detail=f'not run: {why}')
            self.flush_tracker()

    @property
    def scheduler(self) -> Scheduler:
        """The delayed-jobs scheduler, made on first use."""
        if self._scheduler is None:
            self._scheduler = Scheduler(self._release)
        return self._scheduler

    def retry_later(self, job: Job, error: JobError, delay: float) -> None:
        """Queue ``job`` again in ``delay`` seconds after a failed attempt. For workers."""
        job.started_at = None
        eta = time.time() + delay
        fields = {'state': 'queued', 'attempt': job.attempt, 'eta': eta,
                  'detail': f'attempt {job.attempt} failed; retrying in {delay:.3g} s',
                  'error': error.as_record()}
        self._guard(self.store.update, job.id, fields)
        if self.hooks:
            self.hooks.emit('retrying', job, error, delay)
        self._schedule(job, eta)

    def _schedule(self, job: Job, eta: float) -> None:
        """Run ``job`` at ``eta``: the backend's own scheduling if it has any, else
        this process's scheduler thread (which holds the job, for cancel and stop)."""
        if self._backend_schedule is not None:
            job.eta = eta
            self.flush_tracker()  # the record says queued before anyone can see the job
            self._backend_schedule(job, eta)
            return
        self.hold(job)
        self.scheduler.schedule(job, eta)

    # -- tracker access, shielded from outages ------------------------------------

    def _guard(self, call: Callable[..., Any], *args: Any) -> Any:
        """Tracker writes from the queue and workers: an outage is logged once, not raised."""
        try:
            result = call(*args)
        except TrackerUnavailable as exc:
            self._tracker_failed(exc)
            return None
        if self._tracker_down:
            self._tracker_back()
        return result

    def _tracker_failed(self, exc: TrackerUnavailable) -> None:
        with self._tracker_lock:
            first, self._tracker_down = not self._tracker_down, True
        if first:
            log.warning('asyncjob tracker unavailable, jobs keep running untracked: %s', exc)

    def _tracker_back(self) -> None:
        with self._tracker_lock:
            back, self._tracker_down = self._tracker_down, False
        if back:
            log.warning('asyncjob tracker is reachable again')

    def set_progress(self, value: int, data: Any = None) -> None:
        """Record the running job's progress (see ``asyncjob_set_progress``)."""
        job = running_job()
        if job is None:
            raise NotInJobError('asyncjob_set_progress() called outside a job: it sets the '
                                'progress of the job running in the current thread')
        check_progress_value(value)  # built-in trackers also check data they cannot store
        self._guard(self.store.set_progress, job.id, value, data)
        if self.hooks:
            self.hooks.emit('progress', job, value, data)

    def get_progress(self, jobid: str) -> tuple[int, Any] | None:
        """The 0.3 answer for ``jobid``; raises :class:`TrackerUnavailable` in an outage."""
        return self.store.get_progress(jobid)

    def get_status(self, jobid: str) -> JobStatus:
        """The full status of ``jobid``, ``NOT_FOUND`` if no tracker record exists."""
        record = self.store.get_record(jobid) if isinstance(jobid, str) else None
        if record is None:
            return JobStatus(id=str(jobid), state=JobState.NOT_FOUND)
        return JobStatus.from_record(jobid, record)

    def recent(self, limit: int = 50) -> list[JobStatus]:
        """Recent jobs, newest first, if the tracker can list them."""
        if not getattr(self.store, 'supports_listing', False):
            raise NotImplementedError(f'{type(self.tracker).__name__} cannot list jobs')
        return [JobStatus.from_record(i, r) for i, r in self.store.recent(limit)]

    # -- job lifecycle, called by workers ----------------------------------------

    def started(self, job: Job) -> None:
        """Mark ``job`` running."""
        job.attempt += 1
        job.started_at = time.time()
        self._guard(self.store.update, job.id,
                    {'state': 'running', 'started_at': job.started_at, 'attempt': job.attempt})
        if self.hooks:
            self.hooks.emit('started', job)

    def finished(self, job: Job, state: JobState, result: Any = None,
                 error: JobError | None = None, detail: str = '') -> None:
        """Record the final state (after the commit or abort) and wake waiters."""
        fields: dict[str, Any] = {'state': state.value, 'finished_at': time.time()}
        if result is not None:
            fields['result'] = result
        if error is not None:
            fields['error'] = error.as_record()
        if detail:
            fields['detail'] = detail
        try:
            self._guard(self.store.finish, job.id, fields)
        except TypeError:
            fields['result'] = repr(result)
            fields['detail'] = 'the tracker could not store the result: kept its repr()'
            self._guard(self.store.finish, job.id, fields)
        self._jobs.pop(job.id, None)
        if self.hooks:
            if state is JobState.SUCCEEDED:
                self.hooks.emit('succeeded', job, result)
            elif state is JobState.FAILED:
                self.hooks.emit('failed', job, error)
            else:
                self.hooks.emit('cancelled', job)
        if self._waiters:
            with self._finished:
                self._finished.notify_all()

    # -- waiting, cancelling, stopping -------------------------------------------

    def wait(self, jobid: str, timeout: float | None = None, poll: float = 0.02) -> JobStatus:
        """Block until ``jobid`` is finished (or unknown), or ``timeout`` passes;
        return its status then. Jobs of other processes are polled every ``poll`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.get_status(jobid)
            if status.finished or status.state in (JobState.NOT_FOUND, JobState.UNKNOWN):
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return status
            with self._finished:
                self._waiters += 1
                try:
                    self._finished.wait(poll if remaining is None else min(poll, remaining))
                finally:
                    self._waiters -= 1

    def cancel(self, jobid: str) -> bool:
        """Cancel a job of this process. A queued job will not run (state cancelled);
        a running one only gets its flag set, which it may check with
        ``asyncjob_cancelled()``. Returns False if the job is not queued or running here."""
        job = self._jobs.get(jobid)
        if job is None:
            backend_cancel = getattr(self.backend, 'cancel', None)
            return bool(backend_cancel(jobid)) if backend_cancel is not None else False
        job.cancelled = True
        if job.started_at is None:
            self.finished(job, JobState.CANCELLED, detail='cancelled before it started')
            self.flush_tracker()  # the caller reads the new state next
        return True

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped

    def stop(self, timeout: float | None = None) -> list[str]:
        """Stop taking jobs, run what is queued for up to ``timeout`` seconds, and
        report the rest: each job that did not run is logged at WARNING and marked
        cancelled. Returns the ids of the jobs that did not run."""
        if timeout is None:
            timeout = self.stop_timeout
        self._stopped = True
        unrun = []
        if self._scheduler is not None:
            for job in self._scheduler.stop():
                self.report_unrun(job, 'it was still waiting for its start time')
                unrun.append(job.id)
        unrun += self.backend.stop(timeout)
        self.flush_tracker()
        return unrun

    def flush_tracker(self) -> None:
        """Send the tracker's buffered writes now, if it buffers any (see the Redis
        tracker's ``write_behind``)."""
        flush = getattr(self.store, 'flush', None)
        if flush is not None:
            self._guard(flush)

    def hold(self, job: Job) -> None:
        """Remember a job this process will run, so it can be cancelled. For backends."""
        self._jobs[job.id] = job

    def report_unrun(self, job: Job, why: str) -> None:
        """Log and mark a job that will never run."""
        log.warning('asyncjob %s (%s) did not run: %s', job.id, job.func_name, why)
        self.finished(job, JobState.CANCELLED, detail=f'not run: {why}')

    def _after_fork(self) -> None:
        # The child must not run the parent's queued jobs (the parent does): start empty.
        self._jobs = {}
        self._finished = threading.Condition()
        self._tracker_lock = threading.Lock()
        self._waiters = 0
        if self._scheduler is not None:
            self._scheduler.after_fork()
        self.backend.after_fork()


_QUEUES: weakref.WeakSet[JobQueue] = weakref.WeakSet()
