"""The job queue: takes jobs, tracks them, hands them to the backend, and answers for
their status. One ``JobQueue`` per application (``app_globals.asyncjob_queue``).

The queue validates a job at the call site, writes its first record, and hands it over
(at once, after the transaction commits, or when due); every later state change goes
through its :class:`~tgext.asyncjob.lifecycle.Lifecycle`. Immediate mode is
implemented here, once, for every backend.
"""
from __future__ import annotations

import atexit
import dataclasses
import inspect
import logging
import math
import threading
import time
import weakref
from typing import Any, Callable, Mapping

from . import checks
from .backends.base import Backend
from .context import running_job
from .errors import NotInJobError, QueueFull, QueueStopped, UnsupportedOption
from .execution import Runtime
from .forking import reset_in_child
from .hooks import Hooks
from .importpath import importable_path
from .job import Job, JobError, JobState, JobStatus
from .lifecycle import Lifecycle
from .options import JobOptions, check_time_limit
from .retry import Retry, require_retry
from .trackers.base import as_store, check_progress_value

log = logging.getLogger('tgext.asyncjob')


def eta_of(delay: Any, at: Any, now: float) -> float | None:
    """The start time for ``delay`` seconds after ``now`` or ``at`` (a datetime or epoch
    seconds); ``TypeError``/``ValueError`` for anything else, NaN, infinities, or a time
    further than :data:`~tgext.asyncjob.checks.MAX_SECONDS` away."""
    if delay is not None and at is not None:
        raise TypeError('give delay or at, not both')
    if delay is not None:
        return now + checks.seconds('delay', delay)  # type: ignore[operator]
    if at is None:
        return None
    if hasattr(at, 'timestamp'):
        at = at.timestamp()
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise TypeError(f'at must be a datetime or epoch seconds, got {at!r}')
    if not math.isfinite(at) or at - now > checks.MAX_SECONDS:
        raise ValueError(f'at must be a time within {checks.MAX_SECONDS:.0f} s from now, '
                         f'got {at!r}')
    return float(at)


_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def check_callable(func: Any) -> None:
    """``TypeError`` for what cannot be a job: non-callables, and generator functions
    (calling one runs none of its body: the job would "succeed" doing nothing)."""
    if not callable(func):
        raise TypeError(f'asyncjob_perform needs a callable, got {type(func).__name__}: {func!r}')
    code = getattr(func, '__code__', None)  # functions and methods: read the flags at once
    if (code.co_flags & _GENERATOR_FLAGS if code is not None
            else inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)):
        raise TypeError(f'{func!r} is a generator function: its body runs only when iterated, '
                        'which nothing does in a job; queue a function that does the work')


def _open_transaction() -> Any:
    """The thread's current transaction, if one was begun (TG's ``tm`` begins one per
    request, ``with transaction.manager:`` in scripts), else ``None``.

    ``transaction.get()`` would create one implicitly, which nobody would ever commit.
    """
    import transaction
    return getattr(transaction.manager.manager, '_txn', None)


class JobQueue:
    """Accepts jobs and runs them through a backend, by default ``workers`` threads.

    ``max_queue`` bounds the number of waiting jobs (0: unbounded); when full,
    :meth:`perform` waits up to ``put_timeout`` seconds (``None``: without limit), then
    raises :class:`QueueFull`. ``attempts`` (>= 1) retries transactions that fail with a
    retryable conflict. ``immediate`` runs each job synchronously, still in its own
    thread, session and transaction (for tests), whatever the backend. ``conf`` is the
    TurboGears configuration jobs run under. ``stop_timeout`` is how long :meth:`stop`
    (and interpreter exit) lets queued and running jobs finish. ``backend``:
    ``'threads'`` (default), ``'rq'``, or a factory ``factory(runtime, **options)``
    returning a :class:`~tgext.asyncjob.backends.base.Backend`.
    """

    def __init__(self, tracker: Any = None, *, workers: int = 1, max_queue: int = 0,
                 put_timeout: float | None = 10.0, attempts: int = 1,
                 immediate: bool = False, conf: Mapping[str, Any] | None = None,
                 hooks: list[Any] | tuple[Any, ...] = (), stop_timeout: float = 10.0,
                 backend: Any = None, backend_options: dict[str, Any] | None = None,
                 enqueue_on_commit: bool = False, time_limit: float | None = None):
        if tracker is None:
            from .trackers.memory import MemoryProgressTracker
            tracker = MemoryProgressTracker()
        self.workers = checks.count('workers', workers, minimum=1)
        self.max_queue = checks.count('max_queue', max_queue)
        self.put_timeout = checks.seconds('put_timeout', put_timeout, none_ok=True)
        self.attempts = checks.count('attempts', attempts, minimum=1)
        self.stop_timeout = checks.seconds('stop_timeout', stop_timeout)
        self.tracker = tracker
        self.immediate = bool(immediate)
        self.conf = conf
        self.hooks = Hooks(hooks)
        self.enqueue_on_commit = bool(enqueue_on_commit)
        self.time_limit = check_time_limit(time_limit)
        self._default_options = JobOptions(on_commit=self.enqueue_on_commit,
                                           time_limit=self.time_limit)
        self.lifecycle = Lifecycle(as_store(tracker), self.hooks)
        self.runtime = Runtime(self, self.lifecycle, conf=conf, attempts=self.attempts,
                               stopping=lambda: self._stopped)
        self._stopped = False
        self._exited = False
        self._waiting_commit: set[str] = set()
        self.backend = self._make_backend(backend, backend_options or {})
        self.runtime.backend = self.backend
        if self.time_limit is not None and not self.backend.supports_time_limit:
            raise UnsupportedOption(f'asyncjob.time_limit is set, but the backend '
                                    f'{type(self.backend).__name__} has no time limits')
        own_store = self.backend.own_store()
        if own_store is not None:
            self.lifecycle.store = own_store
        _QUEUES.add(self)  # for the stop at interpreter exit
        # Registered after its tracker, so the tracker is reset first in a child.
        reset_in_child(self, '_after_fork')

    def _make_backend(self, backend: Any, options: dict[str, Any]) -> Backend:
        if backend in (None, 'threads'):
            from .worker import WorkerPool
            return WorkerPool(self.runtime, self.workers, self.max_queue, self.put_timeout,
                              **options)
        if backend == 'rq':
            from .backends.rq import RQBackend
            return RQBackend(self.runtime, **options)
        if backend == 'sqlalchemy':
            from .backends.sqlalchemy import SQLAlchemyBackend
            return SQLAlchemyBackend(self.runtime, workers=self.workers,
                                     immediate=self.immediate, **options)
        if callable(backend):
            made = backend(self.runtime, **options)
            if not isinstance(made, Backend):
                raise TypeError(f'asyncjob backend factory {backend!r} returned {made!r}, '
                                'not a tgext.asyncjob.backends.base.Backend')
            return made
        raise ValueError(f'unknown asyncjob backend {backend!r}: use "threads", "rq", '
                         '"sqlalchemy", or a factory taking the runtime')

    @property
    def store(self) -> Any:
        """The job store every state change is written to (the tracker, adapted)."""
        return self.lifecycle.store

    @store.setter
    def store(self, store: Any) -> None:
        self.lifecycle.store = store

    # -- taking jobs ---------------------------------------------------------------

    def perform(self, func: Callable[..., Any], args: tuple = (),
                kwargs: dict[str, Any] | None = None, *, delay: float | None = None,
                at: Any = None, on_commit: bool | None = None,
                retry: Retry | None = None, retry_of: str | None = None,
                options: JobOptions | None = None) -> str:
        """Queue ``func(*args, **kwargs)``; return its id once it is tracked.

        ``delay`` (seconds) or ``at`` (a datetime or epoch seconds) hold the job until
        then; ``on_commit`` hands it over only when the current transaction commits
        (default: the queue's ``enqueue_on_commit``); ``retry`` is a :class:`Retry`.
        ``options``, a :class:`JobOptions`, gives all of these and the rest at once
        (instead of those four); its ``time_limit`` defaults to the queue's. With a
        ``unique_key`` the id returned is that of the live job holding the key, if one
        does (nothing is queued then). Every check (these values, the callable, what
        the backend can honour) is made here, before anything is stored. ``retry_of``:
        the id of the job this one copies (see
        :func:`~tgext.asyncjob.operations.retry_job`), in its first record.
        """
        check_callable(func)
        if self._stopped:
            raise QueueStopped('the asyncjob queue was stopped: it accepts no more jobs')
        if options is not None:
            delay, at, on_commit, retry = (options.delay, options.at, options.on_commit,
                                           options.retry)
        require_retry(retry)
        if on_commit is None:
            on_commit = self.enqueue_on_commit
        if options is not None:
            time_limit = self.time_limit if options.time_limit is None else options.time_limit
            options = dataclasses.replace(options, on_commit=bool(on_commit),
                                          time_limit=time_limit)
        elif delay is None and at is None and retry is None and on_commit == self.enqueue_on_commit:
            options = self._default_options  # the common case: one shared, immutable object
        else:
            options = JobOptions(delay, at, bool(on_commit), retry, time_limit=self.time_limit)
        job = Job(func, args, kwargs or {}, retry=retry, options=options)
        job.eta = eta_of(delay, at, job.enqueued_at)
        self.backend.validate(job)
        record = {'state': 'queued', 'enqueued_at': job.enqueued_at, 'name': job.func_name,
                  'args': job.args, 'kwargs': job.kwargs}
        path = importable_path(func)
        if path is not None:
            record['func'] = path  # what a retry imports (records outlive this process)
        if job.eta is not None:
            record['eta'] = job.eta
        if retry_of is not None:
            record['retry_of'] = retry_of
        txn = None
        if on_commit and not self.backend.transactional_enqueue:
            txn = _open_transaction()
            if txn is not None:
                record['detail'] = 'waiting for the transaction that queued it to commit'
        if options.unique_key is None:
            self.lifecycle.track(job, record)
        else:
            holder = self.lifecycle.track_unique(job, record)
            if holder is not None:
                return holder  # a live job holds the key: it is the answer
        self.hooks.emit('enqueued', job)
        if txn is not None:
            self.lifecycle.hold(job)
            self._waiting_commit.add(job.id)
            txn.addAfterCommitHook(self._after_commit, (job,))
            txn.addAfterAbortHook(self._after_commit, (False, job))
        else:
            self._hand_off(job)
        return job.id

    def _hand_off(self, job: Job) -> None:
        """Run ``job`` now (immediate mode), give it to the backend's scheduling if it is
        not due yet, else to the backend. A job refused (queue full or stopped) is
        forgotten and the error raised: the caller gets no id."""
        if self.immediate:
            self._run_immediately(job)
            return
        try:
            if self._stopped:
                raise QueueStopped('the asyncjob queue was stopped: it accepts no more jobs')
            if job.eta is not None and job.eta > time.time():
                self.backend.schedule(job, job.eta)
            else:
                self.backend.enqueue(job)
        except (QueueFull, QueueStopped, TypeError):
            self.lifecycle.forget(job)
            raise

    def _run_immediately(self, job: Job) -> None:
        # A fresh thread, as a worker would: its own transaction, session and config,
        # never the caller's (a request's transaction must not run the job's work).
        self.lifecycle.hold(job)
        thread = threading.Thread(target=self.runtime.execute, args=(job,),
                                  name='asyncjob-immediate', daemon=True)
        thread.start()
        thread.join()
        self.lifecycle.flush()  # the caller sees the final state at once

    def _after_commit(self, committed: bool, job: Job) -> None:
        """The transaction that queued ``job`` ended: hand it over, or drop it."""
        self._waiting_commit.discard(job.id)
        if job.state is not JobState.QUEUED:
            return  # dropped meanwhile by stop(): reported there
        if not committed:
            self.lifecycle.drop(job, 'the transaction that queued it aborted')
            return
        try:
            self._hand_off(job)
        except QueueStopped:
            self.lifecycle.drop(job, 'the queue was stopped before its transaction committed')
        except Exception as exc:
            log.exception('asyncjob %s (%s): could not queue after commit', job.id, job.func_name)
            self.lifecycle.drop(job, f'it could not be queued after the commit ({exc!r})')
        self.lifecycle.flush()

    # -- progress and status -------------------------------------------------------

    def set_progress(self, value: int, data: Any = None) -> None:
        """Record the running job's progress (see ``asyncjob_set_progress``)."""
        job = running_job()
        if job is None:
            raise NotInJobError('asyncjob_set_progress() called outside a job: it sets the '
                                'progress of the job running in the current thread')
        check_progress_value(value)  # built-in trackers also check data they cannot store
        self.lifecycle.guard(self.store.set_progress, job.id, value, data)
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

    # -- waiting, cancelling, stopping -------------------------------------------

    def wait(self, jobid: str, timeout: float | None = None, poll: float = 0.02) -> JobStatus:
        """Block until ``jobid`` is finished (or unknown), or ``timeout`` passes;
        return its status then. Jobs of other processes are polled every ``poll`` s."""
        checks.seconds('timeout', timeout, none_ok=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.get_status(jobid)
            if status.finished or status.state in (JobState.NOT_FOUND, JobState.UNKNOWN):
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return status
            self.lifecycle.wait_for_change(poll if remaining is None else min(poll, remaining))

    def cancel(self, jobid: str) -> bool:
        """Cancel a job. A queued job will not run (state cancelled); a running one only
        gets its flag set, which it may check with ``asyncjob_cancelled()``, and is not
        retried. False if the job is finished or unknown."""
        job = self.lifecycle.get(jobid) if isinstance(jobid, str) else None
        if job is None:
            return bool(self.backend.cancel(jobid))
        done = self.lifecycle.cancel(job)
        self.lifecycle.flush()  # the caller reads the new state next
        return done

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped

    def stop(self, timeout: float | None = None) -> list[str]:
        """Stop taking jobs, run what is queued for up to ``timeout`` seconds (default
        ``stop_timeout``), and report the rest: each job that did not run is logged at
        WARNING, marked cancelled, and its id returned. Jobs still running at the
        deadline are left to finish (logged); at interpreter exit they are recorded
        ``failed`` (``Interrupted``) instead, since the process ends under them."""
        return self._stop(timeout, exiting=False)

    def _stop(self, timeout: float | None, exiting: bool) -> list[str]:
        timeout = self.stop_timeout if timeout is None else checks.seconds('timeout', timeout)
        assert timeout is not None
        deadline = time.monotonic() + timeout
        self._stopped = True
        lifecycle = self.lifecycle
        unrun = [job.id for job in self.backend.stop_scheduled()
                 if lifecycle.drop(job, 'it was still waiting for its start time')]
        unrun += self.backend.stop(timeout)
        for job in lifecycle.held():
            if job.state is JobState.QUEUED and lifecycle.drop(job, self._why_unrun(job)):
                unrun.append(job.id)
        running = [job for job in lifecycle.held() if job.state is JobState.RUNNING]
        if exiting:
            while running and time.monotonic() < deadline:
                lifecycle.wait_for_change(min(deadline - time.monotonic(), 0.05))
                running = [job for job in running if job.state is JobState.RUNNING]
            for job in running:
                lifecycle.interrupt(job, f'still running when the process exited, '
                                         f'{timeout:g} s after the queue was stopped')
        else:
            for job in running:
                log.warning('asyncjob %s (%s) still running at stop; left to finish',
                            job.id, job.func_name)
        lifecycle.flush()
        return unrun

    def _why_unrun(self, job: Job) -> str:
        if job.id in self._waiting_commit:
            return 'the queue was stopped before the transaction that queued it committed'
        if job.eta is not None and job.eta > time.time():
            return 'it was still waiting for its start time'
        return 'the queue was stopped before it started'

    def _after_fork(self) -> None:
        # The child must not run or report the parent's jobs (the parent does): start empty.
        self.lifecycle.after_fork()
        self._waiting_commit = set()
        self.backend.after_fork()


_QUEUES: weakref.WeakSet[JobQueue] = weakref.WeakSet()


def stop_all(timeout: float | None = None) -> None:
    """Stop every running queue of this process."""
    for q in list(_QUEUES):
        if not q.stopped:
            q.stop(timeout)


def _stop_at_exit() -> None:
    # Registered when this module is imported, before anything that imports it, so it
    # runs after their exit handlers (atexit is last in, first out). Running jobs get
    # their queue's stop_timeout; any still running then are recorded as interrupted.
    for q in list(_QUEUES):
        if not q._exited:
            q._exited = True
            try:
                q._stop(None, exiting=True)
            except Exception:
                log.exception('asyncjob: stopping a queue at exit failed')


atexit.register(_stop_at_exit)
