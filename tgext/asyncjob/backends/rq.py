"""The ``rq`` backend: jobs go to an RQ queue in Redis and run in worker processes.

``asyncjob.backend = rq`` (or ``backend='rq'``) makes ``asyncjob_perform`` enqueue
the call onto the RQ queue ``asyncjob.backend.queue_name`` at
``asyncjob.backend.redis_url``; nothing runs in the web process. Workers are started
with ``python -m tgext.asyncjob.rqworker app.ini`` (:mod:`tgext.asyncjob.rqworker`),
which loads the application so each job gets its configuration, its own session and
transaction, exactly as :func:`tgext.asyncjob.worker.run_job` gives threads.

What RQ stores is a call of :func:`run_rq_job` with the callable's import path, its
arguments, our job id, the attempts made so far and the job's retry policy. So the
callable must be importable by name (a module-level function, class, or a class's
static/class method) and the arguments must pickle: both are checked at the call
site (:meth:`RQBackend.check`).

Delayed jobs and retries are RQ scheduled jobs (``enqueue_at``), moved to the queue
when due by the scheduler the worker command runs: they wait in Redis, not in a
process. The first attempt's RQ job id is our job id; a retry's is ``<id>-<n>`` for
attempt number n (:func:`rq_job_id`), because it is scheduled by the failing attempt while that RQ
job, whose id cannot be reused, is still executing.

Job records must be visible to the web process and the workers alike: a process-local
tracker (the default ``MemoryProgressTracker``) is replaced by a
:class:`~tgext.asyncjob.trackers.redisdb.RedisProgressTracker` on the same Redis.
"""
from __future__ import annotations

import datetime
import logging
import math
import re
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable

import redis
from rq import Queue as RQQueue
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

from ..job import Job, JobError, JobState

if TYPE_CHECKING:
    from ..queue import JobQueue

log = logging.getLogger('tgext.asyncjob')

#: What every RQ job of this backend calls, by name (RQ imports it in the worker).
RUNNER = 'tgext.asyncjob.backends.rq.run_rq_job'
DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379/0'
DEFAULT_QUEUE_NAME = 'asyncjob'
_JOB_ID = re.compile(r'[0-9a-f]{32}\Z')

#: Live backends of this process by RQ queue name: how a worker finds the app's queue.
_BACKENDS: weakref.WeakValueDictionary[str, RQBackend] = weakref.WeakValueDictionary()

_THREADS_HINT = ("; or run it in the web process with the in-process backend "
                 "(asyncjob.backend = threads)")


def callable_path(func: Callable[..., Any]) -> str:
    """``module:qualname`` a worker process can import ``func`` by.

    Raises ``TypeError`` for what it cannot: lambdas, closures and nested functions,
    functions of ``__main__``, bound methods of instances, partials and other
    callable objects.
    """
    module = getattr(func, '__module__', None)
    qualname = getattr(func, '__qualname__', None)
    what = f'{func!r}'
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f'the rq backend runs jobs in worker processes, which import the '
                        f'callable by name, and {what} has none: queue a module-level '
                        f'function instead{_THREADS_HINT}')
    if '<lambda>' in qualname or '<locals>' in qualname:
        kind = 'a lambda' if '<lambda>' in qualname else 'a nested function or closure'
        raise TypeError(f'the rq backend cannot queue {what}: it is {kind}, which worker '
                        f'processes cannot import; queue a module-level function '
                        f'instead{_THREADS_HINT}')
    if module == '__main__':
        raise TypeError(f'the rq backend cannot queue {what}: it is defined in __main__, '
                        f'which worker processes cannot import; move it to a module'
                        f'{_THREADS_HINT}')
    target: Any = sys.modules.get(module)
    for part in qualname.split('.'):
        target = getattr(target, part, None)
    if target is not func and not (target is not None and target == func):
        raise TypeError(f'the rq backend cannot queue {what}: {module}.{qualname} does not '
                        f'name it (a bound method of an instance, or a replaced attribute); '
                        f'queue a module-level function and pass the data it needs'
                        f'{_THREADS_HINT}')
    return f'{module}:{qualname}'


def import_callable(path: str) -> Callable[..., Any]:
    """The callable named by :func:`callable_path`."""
    import importlib
    module, _, qualname = path.partition(':')
    target: Any = importlib.import_module(module)
    for part in qualname.split('.'):
        target = getattr(target, part)
    return target


def rq_job_id(jobid: str, attempt: int) -> str:
    """The RQ job id of the run that follows ``attempt`` runs of our job ``jobid``."""
    return jobid if attempt == 0 else f'{jobid}-{attempt + 1}'


def _as_int(value: Any) -> int | None:
    return None if value in (None, '') else int(value)


class RQBackend:
    """Hands jobs to an RQ queue; worker processes (``tgext.asyncjob.rqworker``) run them.

    ``redis_url`` and ``queue_name`` say where (``asyncjob.backend.redis_url``,
    ``asyncjob.backend.queue_name``), or pass a ``connection`` (a ``redis.Redis``).
    ``job_timeout`` is RQ's per-job limit in seconds (default: none, as with threads).
    ``ttl`` is how long a job may wait in the queue before RQ drops it (default:
    forever). Immediate mode runs the job in a thread of this process, as the thread
    backend does, after the same checks as a queued job.
    """

    durable = True
    supports_cancel = True
    supports_immediate = True
    # Retries and delayed jobs are RQ scheduled jobs: they wait in Redis (schedule).
    supports_retry = True
    supports_schedule = True

    def __init__(self, queue: JobQueue, redis_url: str | None = None,
                 queue_name: str | None = None, *, connection: redis.Redis | None = None,
                 job_timeout: int | str | None = None, ttl: int | str | None = None):
        self.queue = queue
        self.redis_url = redis_url or DEFAULT_REDIS_URL
        self.queue_name = queue_name or DEFAULT_QUEUE_NAME
        self._own_connection = connection is None
        self.connection = connection if connection is not None else redis.Redis.from_url(
            self.redis_url)
        self.job_timeout = _as_int(job_timeout) or -1
        self.ttl = _as_int(ttl)
        self.rq_queue = RQQueue(self.queue_name, connection=self.connection)
        self._share_tracker()
        _BACKENDS[self.queue_name] = self

    def _share_tracker(self) -> None:
        from ..trackers.memory import MemoryProgressTracker
        from ..trackers.redisdb import RedisProgressTracker
        q = self.queue
        if isinstance(q.tracker, MemoryProgressTracker):
            log.info('asyncjob backend rq: job records go to Redis (%s), the memory tracker '
                     'cannot be seen by worker processes', self.redis_url)
            tracker = (RedisProgressTracker(url=self.redis_url) if self._own_connection
                       else RedisProgressTracker(client=self.connection))
            q.tracker = q.store = tracker

    # -- the backend seam ------------------------------------------------------------

    def check(self, job: Job) -> str:
        """Raise ``TypeError`` unless a worker can import ``job``'s callable and its
        arguments (and retry policy) serialise; return the callable's import path."""
        path = callable_path(job.func)
        try:
            self.rq_queue.serializer.dumps((job.args, job.kwargs, job.retry))
        except Exception as exc:
            raise TypeError(f'the rq backend cannot queue {job.func_name}: its arguments '
                            f'(or retry policy) cannot be serialised for the worker '
                            f'processes ({exc}); pass plain data (ids, strings, numbers)'
                            f'{_THREADS_HINT}') from None
        return path

    def _runner_call(self, job: Job) -> dict[str, Any]:
        """RQ's arguments for a run of ``job``. Raises ``TypeError`` (and forgets the
        job) if its callable or arguments cannot go to another process."""
        try:
            path = self.check(job)
        except TypeError:
            self._forget(job)
            raise
        job.name = path.replace(':', '.')
        return dict(args=(path, job.args, job.kwargs),
                    kwargs=dict(jobid=job.id, attempt=job.attempt, retry=job.retry),
                    job_id=rq_job_id(job.id, job.attempt), result_ttl=0, failure_ttl=None,
                    description=job.name)

    def enqueue(self, job: Job) -> None:
        """Put ``job`` on the RQ queue (see :meth:`_runner_call`)."""
        self.rq_queue.enqueue_call(RUNNER, timeout=self.job_timeout, ttl=self.ttl,
                                   **self._runner_call(job))

    def schedule(self, job: Job, eta: float) -> None:
        """Put ``job`` in RQ's scheduled-jobs registry, due at ``eta``: the scheduler of
        a worker (``rqworker``) moves it to the queue then."""
        call = self._runner_call(job)
        # RQ keeps whole seconds, rounded down: round up so it never starts early.
        when = datetime.datetime.fromtimestamp(math.ceil(eta), datetime.timezone.utc)
        # ``ttl`` counts from when the job is due, not from now.
        ttl = None if self.ttl is None else self.ttl + max(math.ceil(eta - time.time()), 0)
        self.rq_queue.enqueue_at(when, RUNNER, job_timeout=self.job_timeout, ttl=ttl, **call)

    def _forget(self, job: Job) -> None:
        # JobQueue.perform tracked the job before handing it over.
        self.queue._guard(self.queue.store.remove, job.id)

    def run_now(self, job: Job) -> None:
        """Immediate mode: check the job as :meth:`enqueue` would, then run it in a
        thread of this process (own session and transaction) and wait for it."""
        try:
            self.check(job)
        except TypeError:
            self._forget(job)
            raise
        thread = threading.Thread(target=_run_in_thread, args=(self.queue, job),
                                  name='asyncjob-immediate', daemon=True)
        thread.start()
        thread.join()

    def cancel(self, jobid: str) -> bool:
        """Cancel a job still waiting in the RQ queue or in RQ's scheduled jobs (delayed,
        or waiting to be retried): it will not run, its record says cancelled. False if
        it is running, finished or unknown (a job a worker is taking at this very
        moment may still run)."""
        if not isinstance(jobid, str) or not _JOB_ID.match(jobid):
            return False  # not one of ours: never touch other RQ jobs
        # The attempts made so far say which RQ job is the one waiting.
        record = self.queue._guard(self.queue.store.get_record, jobid) or {}
        try:
            rq_job = RQJob.fetch(rq_job_id(jobid, int(record.get('attempt') or 0)),
                                 connection=self.connection)
        except NoSuchJobError:
            return False
        if rq_job.get_status(refresh=False) not in (RQStatus.QUEUED, RQStatus.DEFERRED,
                                                     RQStatus.SCHEDULED):
            return False
        # The record first: a worker that took the job meanwhile reads it and skips.
        job = Job(_cancelled, (), {}, jobid=jobid)
        job.name = rq_job.description
        self.queue.finished(job, JobState.CANCELLED, detail='cancelled before it started')
        self.queue.flush_tracker()
        rq_job.delete(remove_from_queue=True)
        return True

    def start(self) -> None:
        """Nothing runs in the web process."""

    def stop(self, timeout: float) -> list[str]:
        """Nothing to drain: queued jobs stay in Redis for the workers."""
        return []

    def after_fork(self) -> None:
        """In a forked child: drop the parent's Redis connections (never share sockets)."""
        self.connection.connection_pool.reset()


def _cancelled() -> None:
    """Stands for the callable of a job cancelled before it reached a worker."""


def _run_in_thread(q: JobQueue, job: Job) -> None:
    from ..worker import run_job
    run_with_config(q, job, run_job)


def run_with_config(q: JobQueue, job: Job, run: Callable[[JobQueue, Job], None]) -> None:
    """``run(q, job)`` with the application's configuration as ``tg.config``."""
    if q.conf is None:
        run(q, job)
        return
    from tg.request_local import config as tg_config
    tg_config.push_thread_config(q.conf)
    try:
        run(q, job)
    finally:
        tg_config.pop_thread_config()


def queue_for(queue_name: str) -> JobQueue:
    """The application queue of this (worker) process whose RQ queue is ``queue_name``."""
    backend = _BACKENDS.get(queue_name)
    if backend is None:
        raise RuntimeError(
            f'no TurboGears application with asyncjob.backend = rq and queue '
            f'{queue_name!r} is loaded in this process: start workers with '
            f'"python -m tgext.asyncjob.rqworker <app.ini>", not a bare "rq worker"')
    return backend.queue


def run_rq_job(func_path: str, args: tuple | list, kwargs: dict[str, Any],
               jobid: str | None = None, attempt: int = 0, retry: Any = None) -> None:
    """What RQ calls in the worker: rebuild our :class:`Job` (id ``jobid``, ``attempt``
    runs made so far, ``retry`` policy) and run it with
    :func:`~tgext.asyncjob.worker.run_job` (transaction, session, progress, final
    state or retry in the shared tracker). A job cancelled meanwhile is skipped."""
    from ..worker import run_job
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError('run_rq_job runs inside an RQ worker only')
    jobid = jobid or rq_job.id  # RQ jobs queued before jobid was passed
    q = queue_for(rq_job.origin)
    record = q._guard(q.store.get_record, jobid)
    if record is not None and record.get('state') == JobState.CANCELLED.value:
        return
    try:
        func = import_callable(func_path)
    except Exception as exc:
        job = Job(_cancelled, (), {}, jobid=jobid)
        job.name = func_path.replace(':', '.')
        q.finished(job, JobState.FAILED, error=JobError.from_exception(exc),
                   detail='the worker could not import the callable')
        q.flush_tracker()
        return
    job = Job(func, tuple(args), dict(kwargs), jobid=jobid, retry=retry)
    job.name = func_path.replace(':', '.')
    job.attempt = attempt  # run_job counts this run on top
    try:
        run_with_config(q, job, run_job)
    finally:
        q.flush_tracker()  # a forked work horse exits right after: send its writes now


def mark_worker_died(rq_job: RQJob, why: str) -> None:
    """Record a job whose work horse died (killed, out of memory) as failed."""
    try:
        q = queue_for(rq_job.origin)
    except RuntimeError:
        return
    job = Job(_cancelled, (), {}, jobid=rq_job.kwargs.get('jobid') or rq_job.id)
    job.name = rq_job.description
    q.finished(job, JobState.FAILED, error=JobError('WorkerDied', why))
    q.flush_tracker()
