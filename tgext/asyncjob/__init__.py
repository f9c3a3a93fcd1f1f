"""tgext.asyncjob: background jobs for TurboGears2.

Queue a call with :func:`asyncjob_perform`; it runs on a worker thread in its own
SQLAlchemy session and transaction while the page polls :func:`asyncjob_get_progress`.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from .database import asyncjob_timed_query
from . import operations
from .errors import (AlreadyStarted, AsyncJobError, JobFailed, JobNotFound, JobStateError,
                     NoWorkerError, NotInJobError, NotRetryable, OperationUnsupported,
                     QueueFull, QueueStopped, TimeLimitExceeded, TrackerUnavailable,
                     UnsupportedOption, WorkerDied)
from .job import JobError, JobState, JobStatus
from .context import running_job, running_queue
from .options import JobOptions
from .periodic import asyncjob_periodic
from .queue import JobQueue, eta_of
from .retry import Retry, require_retry, retry
from .tgwiring import current_queue, plugme, start_async_worker, stop_all

__all__ = [
    'asyncjob_perform', 'asyncjob_set_progress', 'asyncjob_get_progress',
    'asyncjob_running_uid', 'asyncjob_timed_query', 'asyncjob_get_status', 'asyncjob_wait',
    'asyncjob_cancel', 'asyncjob_cancelled', 'asyncjob_options', 'start_async_worker', 'stop',
    'plugme', 'stop_all', 'current_queue', 'Retry', 'retry', 'JobOptions',
    'JobQueue', 'JobState', 'JobStatus', 'JobError', 'AsyncJobError', 'AlreadyStarted',
    'NoWorkerError', 'NotInJobError', 'QueueFull', 'QueueStopped', 'TrackerUnavailable',
    'JobFailed', 'UnsupportedOption', 'WorkerDied', 'asyncjob_periodic',
    'asyncjob_jobs', 'asyncjob_counts', 'asyncjob_retry', 'asyncjob_delete', 'asyncjob_purge',
    'JobNotFound', 'JobStateError', 'NotRetryable', 'OperationUnsupported',
    'TimeLimitExceeded',
]


def asyncjob_perform(callable: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """Run ``callable(*args, **kwargs)`` in the background; return the job's id at once.

    Works inside a request, inside a job, or anywhere once a worker is running.
    Raises ``TypeError`` if ``callable`` is not callable.
    """
    return current_queue().perform(callable, args, kwargs)


def asyncjob_options(*, delay: float | None = None, at: Any = None,
                     on_commit: bool | None = None, retry: Retry | None = None,
                     unique_key: str | None = None, unique_for: float | None = None,
                     priority: int | None = None, concurrency_key: str | None = None,
                     concurrency_limit: int | None = None,
                     time_limit: float | None = None) -> JobOptions:
    """Options for one job: ``asyncjob_options(delay=30).perform(fn, *args, **kwargs)``.

    ``delay``: seconds to wait before starting; ``at``: a datetime or epoch seconds;
    ``on_commit``: hand the job to the worker only once the current transaction commits
    (dropped, state cancelled, if it aborts); ``retry``: a :class:`Retry` policy.
    ``unique_key``: while a job queued with this key is queued or running, ``perform``
    returns its id instead of queueing another; ``unique_for``: seconds the key is held
    at most (default: until the job ends). ``priority``: an int from -100 to 100,
    higher runs first (default 0). ``concurrency_key`` with ``concurrency_limit``: at
    most that many jobs of the key run at once, the others wait in order;
    ``time_limit``: seconds the job may run. See README "Unique jobs", "Priorities",
    "Concurrency limits" and "Time limits". Checked here; what the backend cannot
    honour raises :class:`UnsupportedOption` at ``perform``.
    """
    require_retry(retry)
    eta_of(delay, at, time.time())  # the same checks perform() makes, here at the call site
    return JobOptions(delay=delay, at=at, on_commit=on_commit, retry=retry,
                      unique_key=unique_key, unique_for=unique_for, priority=priority,
                      concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
                      time_limit=time_limit)


def asyncjob_set_progress(value: int, data: Any = None) -> None:
    """Inside a job: record its progress, an ``int``, and any ``data`` to show with it.

    Raises :class:`NotInJobError` outside a job, ``TypeError`` for a non-int value or
    data the tracker cannot store. A tracker outage is logged, never raised.
    """
    q = running_queue()
    if q is None:
        raise NotInJobError('asyncjob_set_progress() called outside a job: it sets the '
                            'progress of the job running in the current thread')
    q.set_progress(value, data)


def asyncjob_get_progress(jobid: str) -> tuple[int, Any] | None:
    """``(-1, None)`` while queued, ``(value, data)`` while running, ``None`` once
    finished or unknown. Raises :class:`TrackerUnavailable` if the tracker is down."""
    return current_queue().get_progress(jobid)


def asyncjob_running_uid() -> str | None:
    """The id of the job running in this thread, ``None`` outside a job."""
    job = running_job()
    return job.id if job is not None else None


def asyncjob_get_status(jobid: str) -> JobStatus:
    """The full :class:`JobStatus` of a job: state, progress, result or error, times."""
    return current_queue().get_status(jobid)


def asyncjob_wait(jobid: str, timeout: float | None = None) -> JobStatus:
    """Block until the job has finished or ``timeout`` seconds passed; its status then."""
    return current_queue().wait(jobid, timeout)


def asyncjob_cancel(jobid: str) -> bool:
    """Cancel a queued job (it will not run), or flag a running one (see
    :func:`asyncjob_cancelled`). False if the job is not queued or running here."""
    return current_queue().cancel(jobid)


def asyncjob_jobs(state: JobState | str | None = None, name: str | None = None,
                  offset: int = 0, limit: int = 50) -> list[JobStatus]:
    """The jobs kept, newest first: only those in ``state`` and of the callable ``name``
    (its dotted name, ``JobStatus.name``) when given; ``offset``/``limit`` page through
    all of them. Raises :class:`OperationUnsupported` if the tracker cannot list jobs,
    ``ValueError`` for an unknown state or a bad offset/limit."""
    return operations.list_jobs(current_queue(), state, name, offset, limit)


def asyncjob_counts() -> dict[str, int]:
    """How many jobs are kept in each state: ``{'queued': 2, 'running': 1, ...}``
    (every state, 0 included). Raises :class:`OperationUnsupported` if the tracker
    cannot list jobs."""
    return operations.count_jobs(current_queue())


def asyncjob_retry(jobid: str) -> str:
    """Queue a new job with the callable and arguments of the failed or cancelled job
    ``jobid``; return the new id. The records link both ways (``retry_of``,
    ``retried_as``). Raises :class:`JobNotFound`, :class:`JobStateError` (not failed or
    cancelled, or retried already), :class:`NotRetryable` (no importable callable or
    no stored arguments)."""
    return operations.retry_job(current_queue(), jobid)


def asyncjob_delete(jobid: str) -> None:
    """Delete the record of a finished job. Raises :class:`JobNotFound`, and
    :class:`JobStateError` for a queued or running job (cancel it first)."""
    operations.delete_job(current_queue(), jobid)


def asyncjob_purge(older_than: float) -> int:
    """Delete the records of jobs finished more than ``older_than`` seconds ago; return
    how many. ``ValueError`` for a negative or non-finite number."""
    return operations.purge_jobs(current_queue(), older_than)


def asyncjob_cancelled() -> bool:
    """Inside a job: True once someone asked to cancel it. Jobs that can stop early
    check this between steps; cancelling a running job is cooperative."""
    job = running_job()
    if job is None:
        raise NotInJobError('asyncjob_cancelled() called outside a job')
    return job.cancel_requested


def stop(timeout: float | None = None) -> list[str]:
    """Stop the current application's queue, draining it for up to ``timeout`` seconds.
    Returns the ids of jobs that did not run (each also logged at WARNING)."""
    return current_queue().stop(timeout)
