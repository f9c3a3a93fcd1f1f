"""What an RQ job of this backend carries, and our job rebuilt from it.

Each run of one of our jobs is an RQ job calling :data:`RUNNER` with the callable's
import path, the arguments, and our job's id, attempts made so far, retry policy and
``meta``. Its RQ id is our id for the first run, ``<id>-<n>`` for the n-th
(:func:`rq_job_id`): a retry is scheduled by the failing run, whose RQ job id cannot
be reused while it still executes.
"""
from __future__ import annotations

from typing import Any, Callable

from ... import importpath
from ...importpath import THREADS_HINT, import_callable
from ...job import Job, is_job_id
from ...options import JobOptions
from ...timelimits import time_limit_of

#: What every RQ job of this backend calls, by name (RQ imports it in the worker).
RUNNER = 'tgext.asyncjob.backends.rq.run_rq_job'
#: RQ's failure callback of every job: how a run that died unnoticed gets recorded.
ON_FAILURE = 'tgext.asyncjob.backends.rq.rq_job_failed'



def is_our_id(jobid: Any) -> bool:
    """True for an id ``asyncjob_perform`` could have returned (never touch other RQ
    jobs)."""
    return is_job_id(jobid)


def rq_job_id(jobid: str, attempt: int) -> str:
    """The RQ job id of the run that follows ``attempt`` runs of our job ``jobid``."""
    return jobid if attempt == 0 else f'{jobid}-{attempt + 1}'


def claim_key(rq_id: str) -> str:
    """Set once (``SET NX``) for the RQ job ``rq_id``: ``run`` by the worker that starts
    it, ``cancel`` by a cancel that came first. So a run and a cancel exclude each other."""
    return f'asyncjob:rq:claim:{rq_id}'


def cancel_key(jobid: str) -> str:
    """Exists while someone asked a running job ``jobid`` to stop (``asyncjob_cancelled()``)."""
    return f'asyncjob:rq:cancel:{jobid}'


def died_key(rq_id: str) -> str:
    """Set once by the process that records the death of the run ``rq_id``."""
    return f'asyncjob:rq:died:{rq_id}'


def callable_path(func: Callable[..., Any]) -> str:
    """``module:qualname`` that an RQ worker imports ``func`` by (see
    :mod:`tgext.asyncjob.importpath`)."""
    return importpath.callable_path(func, 'rq')


def runner_call(job: Job) -> dict[str, Any]:
    """RQ's ``args``, ``kwargs``, ``job_id`` and ``description`` for the next run of
    ``job`` (whose callable ``validate`` accepted)."""
    path = callable_path(job.func)
    job.name = path.replace(':', '.')
    kwargs = dict(jobid=job.id, attempt=job.attempt, retry=job.retry, meta=job.meta,
                  **_limits(job))
    priority = getattr(job.options, 'priority', None)
    if priority:  # its retries go to the same band (absent: the payload of before)
        kwargs['priority'] = priority
    return dict(args=(path, job.args, job.kwargs), kwargs=kwargs,
                job_id=rq_job_id(job.id, job.attempt), description=job.name)


def _limits(job: Job) -> dict[str, Any]:
    # Carried to the worker only when set: the next run (a retry) is queued from there.
    limit = time_limit_of(job)
    return {} if limit is None else {'time_limit': limit}


def job_of(path: str, args: tuple | list, kwargs: dict[str, Any], *, jobid: str,
           attempt: int = 0, retry: Any = None, meta: dict[str, Any] | None = None,
           time_limit: float | None = None, job_class: type[Job] = Job,
           priority: int | None = None) -> tuple[Job, Exception | None]:
    """Our job named by an RQ job's arguments (``attempt``: the runs made before), and
    why its callable cannot be imported here: then the job has a placeholder callable,
    :func:`not_importable`, and keeps its real name."""
    error = None
    try:
        func = import_callable(path)
    except Exception as exc:
        func, error = not_importable, exc
    options = (JobOptions(priority=priority or None, time_limit=time_limit)
               if priority or time_limit is not None else None)
    job = job_class(func, tuple(args), dict(kwargs), jobid=jobid, retry=retry, meta=meta,
                    options=options)
    job.name = path.replace(':', '.')
    job.attempt = attempt
    return job, error


def job_from_rq(rq_job: Any, job_class: type[Job] = Job) -> Job:
    """Our job for the run ``rq_job`` (an ``rq.job.Job`` of this backend)."""
    path, args, kwargs = rq_job.args
    options = rq_job.kwargs
    return job_of(path, args, kwargs, jobid=options.get('jobid') or rq_job.id,
                  attempt=int(options.get('attempt') or 0), retry=options.get('retry'),
                  meta=options.get('meta'), time_limit=options.get('time_limit'),
                  job_class=job_class, priority=options.get('priority'))[0]


def not_importable() -> None:
    """Stands for a job's callable this process could not import (its name is kept)."""
