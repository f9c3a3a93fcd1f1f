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
from rq import Callback
from rq import Queue as RQQueue
from rq import get_current_job
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import BaseDeathPenalty

from ..errors import AsyncJobError
from ..job import Job, JobError, JobState
from ..retry import policy_for

if TYPE_CHECKING:
    from ..queue import JobQueue

log = logging.getLogger('tgext.asyncjob')

#: What every RQ job of this backend calls, by name (RQ imports it in the worker).
RUNNER = 'tgext.asyncjob.backends.rq.run_rq_job'
#: RQ's failure callback of every job: how a run that died unnoticed gets recorded.
ON_FAILURE = 'tgext.asyncjob.backends.rq.rq_job_failed'
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


def _seconds(name: str, value: Any, default: float, minimum: float) -> float:
    """A setting in seconds (an .ini gives strings): finite and at least ``minimum``."""
    seconds = default if value in (None, '') else float(value)
    if not math.isfinite(seconds) or seconds < minimum:
        raise ValueError(f'asyncjob.backend.{name} must be a number of seconds >= {minimum}, '
                         f'got {value!r}')
    return seconds


class WorkerDied(AsyncJobError):
    """The process running a job ended before the job did (killed, out of memory):
    what a retry policy sees for such a run (``Retry(on=...)`` may name it)."""


class _NoTimeLimit(BaseDeathPenalty):
    # RQ runs failure callbacks under a SIGALRM time limit, which only the main thread
    # may set: the cleanup thread runs ours (short Redis calls) without one.
    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


class RQBackend:
    """Hands jobs to an RQ queue; worker processes (``tgext.asyncjob.rqworker``) run them.

    ``redis_url`` and ``queue_name`` say where (``asyncjob.backend.redis_url``,
    ``asyncjob.backend.queue_name``), or pass a ``connection`` (a ``redis.Redis``).
    ``job_timeout`` is RQ's per-job limit in seconds (default: none, as with threads).
    ``ttl`` is how long a job may wait in the queue before RQ drops it (default:
    forever). Immediate mode runs the job in a thread of this process, as the thread
    backend does, after the same checks as a queued job.

    A worker killed together with its job (``kill -9``, the OOM killer) is found by
    RQ's own abandoned-job detection: workers heartbeat each running job every
    ``heartbeat_interval`` seconds (default 10), a job without a heartbeat for
    ``abandoned_after`` seconds (default 45) is abandoned, and every process with this
    backend (web and workers) looks for abandoned jobs every ``cleanup_interval``
    seconds (default 15). So such a job is retried (if its policy allows) or failed
    with ``WorkerDied`` at most ``abandoned_after + cleanup_interval`` seconds (60 by
    default) after the kill, while any process of the application runs.
    """

    name = 'rq'

    durable = True
    supports_cancel = True
    supports_immediate = True
    # Retries and delayed jobs are RQ scheduled jobs: they wait in Redis (schedule).
    supports_retry = True
    supports_schedule = True

    def __init__(self, queue: JobQueue, redis_url: str | None = None,
                 queue_name: str | None = None, *, connection: redis.Redis | None = None,
                 job_timeout: int | str | None = None, ttl: int | str | None = None,
                 heartbeat_interval: int | str | None = None,
                 abandoned_after: int | str | None = None,
                 cleanup_interval: float | str | None = None):
        # RQ's heartbeats and time limits count whole seconds.
        self.heartbeat_interval = int(_seconds('heartbeat_interval', heartbeat_interval, 10, 1))
        self.abandoned_after = int(_seconds('abandoned_after', abandoned_after, 45,
                                            self.heartbeat_interval + 1))
        self.cleanup_interval = _seconds('cleanup_interval', cleanup_interval, 15, 0.1)
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
        self._cleaner: threading.Thread | None = None
        self._cleaner_stop = threading.Event()
        _BACKENDS[self.queue_name] = self

    @property
    def description(self) -> str:
        """One line for the start-up log: where jobs go and who runs them."""
        return (f'RQ queue {self.queue_name!r} at {_safe_url(self.connection)}; jobs run in '
                f'worker processes (python -m tgext.asyncjob.rqworker)')

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
        """RQ's arguments for a run of ``job``, which :meth:`check` accepted when it was
        queued (the arguments are not pickled once more to find out)."""
        path = callable_path(job.func)
        job.name = path.replace(':', '.')
        return dict(args=(path, job.args, job.kwargs),
                    kwargs=dict(jobid=job.id, attempt=job.attempt, retry=job.retry),
                    job_id=rq_job_id(job.id, job.attempt), result_ttl=0, failure_ttl=None,
                    description=job.name, on_failure=Callback(ON_FAILURE))

    def enqueue(self, job: Job) -> None:
        """Put ``job`` on the RQ queue (see :meth:`_runner_call`)."""
        self.rq_queue.enqueue_call(RUNNER, timeout=self.job_timeout, ttl=self.ttl,
                                   **self._runner_call(job))

    def schedule(self, job: Job, eta: float) -> None:
        """Put ``job`` in RQ's scheduled-jobs registry, due at ``eta``: the scheduler of
        a worker (``rqworker``) moves it to the queue then."""
        if eta <= time.time():  # due (a retry without backoff): no scheduler needed
            self.enqueue(job)
            return
        call = self._runner_call(job)
        # RQ keeps whole seconds, rounded down: round up so it never starts early.
        when = datetime.datetime.fromtimestamp(math.ceil(eta), datetime.timezone.utc)
        # ``ttl`` counts from when the job is due, not from now.
        ttl = None if self.ttl is None else self.ttl + max(math.ceil(eta - time.time()), 0)
        self.rq_queue.enqueue_at(when, RUNNER, job_timeout=self.job_timeout, ttl=ttl, **call)

    def run_now(self, job: Job) -> None:
        """Immediate mode: run the job (which :meth:`check` accepted, as for a queued
        one) in a thread of this process (own session and transaction); wait for it."""
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
        job = job_from_rq(rq_job)
        self.queue.finished(job, JobState.CANCELLED, detail='cancelled before it started')
        self.queue.flush_tracker()
        rq_job.delete(remove_from_queue=True)
        return True

    def start(self) -> None:
        """Start looking for abandoned jobs (no job runs in the web process)."""
        if self._cleaner is not None and self._cleaner.is_alive():
            return
        self._cleaner_stop = threading.Event()
        self._cleaner = threading.Thread(target=self._clean_loop, daemon=True,
                                         name='asyncjob-rq-cleanup')
        self._cleaner.start()

    def _clean_loop(self) -> None:
        stop = self._cleaner_stop
        while not stop.wait(self.cleanup_interval):
            try:
                self.clean_abandoned()
            except Exception:  # Redis down: log, and try again next time
                log.warning('asyncjob rq: looking for abandoned jobs failed', exc_info=True)

    def clean_abandoned(self) -> None:
        """RQ's own abandoned-job detection, once: each job of the queue whose worker sent
        no heartbeat for ``abandoned_after`` seconds is failed by RQ, which calls
        :func:`rq_job_failed`: retried or recorded as failed (``WorkerDied``)."""
        registry = StartedJobRegistry(self.queue_name, connection=self.connection,
                                      death_penalty_class=_NoTimeLimit)
        registry.cleanup()

    def stop(self, timeout: float) -> list[str]:
        """Nothing to drain: queued jobs stay in Redis for the workers."""
        self._cleaner_stop.set()
        return []

    def after_fork(self) -> None:
        """In a forked child: drop the parent's Redis connections (never share sockets),
        and look for abandoned jobs there too, unless the child is an RQ work horse."""
        self.connection.connection_pool.reset()
        if self._cleaner is not None and not self.queue.stopped and not _forking_work_horse:
            self._cleaner = None
            self.start()


#: True while an RQ worker of this process forks a work horse (set by ``rqworker``):
#: a horse runs one job and exits, it has no abandoned jobs to look for.
_forking_work_horse = False


def _safe_url(connection: redis.Redis) -> str:
    """Where ``connection`` goes, without its password."""
    kwargs = connection.connection_pool.connection_kwargs
    if 'path' in kwargs:
        return f'unix://{kwargs["path"]}?db={kwargs.get("db", 0)}'
    return f'redis://{kwargs.get("host")}:{kwargs.get("port")}/{kwargs.get("db", 0)}'


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
    job, import_error = _job_of(func_path, args, kwargs, jobid, attempt, retry)
    if import_error is not None:
        q.finished(job, JobState.FAILED, error=JobError.from_exception(import_error),
                   detail='the worker could not import the callable')
        q.flush_tracker()
        return
    try:
        run_with_config(q, job, run_job)
    finally:
        q.flush_tracker()  # a forked work horse exits right after: send its writes now


def rq_job_failed(rq_job: RQJob, connection: redis.Redis, exc_type: type,
                  exc: BaseException | None, tb: Any) -> None:
    """RQ's failure callback of our jobs. :func:`run_rq_job` records every outcome of
    the job's code itself, so RQ calls this for the rest: a run RQ found abandoned (its
    worker died with it, :class:`rq.exceptions.AbandonedJobError`), or an error outside
    the job's code. Either way, what ``job_died`` does."""
    if isinstance(exc, AbandonedJobError):
        backend = _BACKENDS.get(rq_job.origin)
        after = backend.abandoned_after if backend is not None else None
        why = (f'its worker stopped sending heartbeats (none for {after} s): the worker '
               f'was killed or died with it' if after else 'its worker died with it')
    else:
        why = f'RQ failed the job outside its code ({exc_type.__name__}: {exc})'
    job_died(rq_job, why)


def job_died(rq_job: RQJob, why: str) -> None:
    """The run ``rq_job`` of one of our jobs ended without recording how: retry the job
    if its retry policy allows (the error is :class:`WorkerDied`), else record it failed
    with error type ``WorkerDied``. Acts once per RQ job, whichever process of the
    application notices first (a worker whose horse died, or any abandoned-job cleanup);
    a record already finished is left alone."""
    backend = _BACKENDS.get(rq_job.origin)
    if backend is None:
        log.warning('asyncjob rq: job %s died (%s) but no application with its queue %r is '
                    'loaded in this process to record it', rq_job.id, why, rq_job.origin)
        return
    q = backend.queue
    # Several processes may notice the same death: one acts (a day covers any retry delay).
    if not backend.connection.set(f'asyncjob:rq:died:{rq_job.id}', 1, nx=True, ex=86400):
        return
    job = job_from_rq(rq_job)
    record = q._guard(q.store.get_record, job.id) or {}
    state = record.get('state')
    if state is not None and JobState(state).finished:
        return
    if int(record.get('attempt') or 0) > job.attempt + 1:
        return  # a later run of the job exists: this one was already dealt with
    job.attempt += 1  # the run that died counts
    error = WorkerDied(why)
    policy = policy_for(job.retry, job.func)
    if policy is not None and not q.stopped and policy.should_retry(error, job.attempt):
        log.warning('asyncjob %s (%s) attempt %d died (%s); retrying', job.id, job.func_name,
                    job.attempt, why)
        q.retry_later(job, JobError('WorkerDied', why), policy.delay(job.attempt))
    else:
        log.error('asyncjob %s (%s) failed: %s', job.id, job.func_name, why)
        q.finished(job, JobState.FAILED, error=JobError('WorkerDied', why))
    q.flush_tracker()


def job_from_rq(rq_job: RQJob) -> Job:
    """Our :class:`Job` for the run ``rq_job`` (attempt = the runs made before it), with
    its real callable, or a placeholder named after it if this process cannot import it."""
    path, args, kwargs = rq_job.args
    options = rq_job.kwargs
    return _job_of(path, args, kwargs, options.get('jobid') or rq_job.id,
                   int(options.get('attempt') or 0), options.get('retry'))[0]


def _job_of(path: str, args: tuple | list, kwargs: dict[str, Any], jobid: str, attempt: int,
            retry: Any) -> tuple[Job, Exception | None]:
    """Our job named by an RQ job's arguments, and why its callable cannot be imported
    (then it is a placeholder, :func:`_not_importable`, and the job keeps the name)."""
    error = None
    try:
        func = import_callable(path)
    except Exception as exc:
        func, error = _not_importable, exc
    job = Job(func, tuple(args), dict(kwargs), jobid=jobid, retry=retry)
    job.name = path.replace(':', '.')
    job.attempt = attempt  # the runs made before this one
    return job, error


def _not_importable() -> None:
    """Stands for a job's callable this process could not import (its name is kept)."""
