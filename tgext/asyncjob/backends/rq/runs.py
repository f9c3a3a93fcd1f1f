"""The worker side: a run of one of our jobs in an RQ worker, and the record of a run
whose worker died with it.

:func:`run_rq_job` is what RQ calls: it claims the run in Redis (so a cancel that came
first wins), rebuilds our job, and runs it through ``runtime.execute``, the single
execution path (transaction, sessions, progress, hooks, outcome or retry).

A run that ends without recording how (its work horse killed, or its worker killed
with it) is recorded by :func:`job_died`: retried if the job's retry policy allows
(the error is :class:`WorkerDied`), else ``failed`` with error type ``WorkerDied``.
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

import redis
from rq import get_current_job
from rq.exceptions import AbandonedJobError

from ...errors import WorkerDied
from ...job import Job, JobError, JobState
from .calls import cancel_key, claim_key, died_key, job_from_rq, job_of

if TYPE_CHECKING:
    from .backend import RQBackend

log = logging.getLogger('tgext.asyncjob')

#: Seconds a claim or a death record stays in Redis: longer than any run takes to be
#: noticed, so the same RQ job never runs, or is recorded dead, twice.
ONCE_TTL = 7 * 86400
#: ``asyncjob_cancelled()`` in a worker asks Redis at most this often (seconds).
CANCEL_PROBE_INTERVAL = 0.5

#: Live backends of this process by RQ queue name: how a worker finds the app's queue.
BACKENDS: weakref.WeakValueDictionary[str, RQBackend] = weakref.WeakValueDictionary()


_CANCEL_SLOT: Any = Job.__dict__['cancel_requested']


class RQRun(Job):
    """Our job while a worker of this backend runs it (or records its death): its
    ``cancel_requested`` also turns true once another process cancelled it, which that
    process says with a key in Redis. Asked at most every
    :data:`CANCEL_PROBE_INTERVAL` seconds, and only when someone reads the flag
    (``asyncjob_cancelled()``, or a failure deciding whether to retry)."""

    __slots__ = ('redis', '_probed_at')

    def __init__(self, *args: Any, **kwargs: Any):
        self.redis: redis.Redis | None = None
        self._probed_at = 0.0
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def cancel_requested(self) -> bool:
        if _CANCEL_SLOT.__get__(self, Job):
            return True
        now = time.monotonic()
        if self.redis is None or now - self._probed_at < CANCEL_PROBE_INTERVAL:
            return False
        self._probed_at = now
        try:
            flagged = bool(self.redis.exists(cancel_key(self.id)))
        except redis.RedisError:
            return False  # Redis unreachable: not cancelled, as far as anyone can tell
        if flagged:
            _CANCEL_SLOT.__set__(self, True)
        return flagged

    @cancel_requested.setter
    def cancel_requested(self, value: bool) -> None:
        _CANCEL_SLOT.__set__(self, value)


def backend_for(queue_name: str) -> RQBackend:
    """The rq backend of this (worker) process whose RQ queue is ``queue_name``."""
    backend = BACKENDS.get(queue_name)
    if backend is None:
        raise RuntimeError(
            f'no TurboGears application with asyncjob.backend = rq and queue '
            f'{queue_name!r} is loaded in this process: start workers with '
            f'"python -m tgext.asyncjob worker <app.ini>", not a bare "rq worker"')
    return backend


def run_rq_job(func_path: str, args: tuple | list, kwargs: dict[str, Any],
               jobid: str | None = None, attempt: int = 0, retry: Any = None,
               meta: dict[str, Any] | None = None, time_limit: float | None = None,
               priority: int | None = None) -> None:
    """What RQ calls in the worker: claim this run, rebuild our job (id ``jobid``,
    ``attempt`` runs made before, ``retry`` policy, ``meta``, ``time_limit``,
    ``priority``) and run it through the runtime. A run cancelled before it started
    is skipped."""
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError('run_rq_job runs inside an RQ worker only')
    backend = backend_for(rq_job.origin)
    runtime = backend.runtime
    if not backend.connection.set(claim_key(rq_job.id), 'run', nx=True, ex=ONCE_TTL):
        log.info('asyncjob %s: not run, it was cancelled before it started', rq_job.id)
        return
    job, import_error = job_of(func_path, args, kwargs, jobid=jobid or rq_job.id,
                               attempt=attempt, retry=retry, meta=meta,
                               time_limit=time_limit, job_class=RQRun,
                               priority=priority)
    assert isinstance(job, RQRun)
    job.redis = backend.connection
    try:
        if import_error is None:
            runtime.execute(job)
        elif runtime.lifecycle.claim(job):
            runtime.lifecycle.fail(job, JobError.from_exception(import_error),
                                   detail='the worker could not import the callable')
    finally:
        runtime.lifecycle.flush()  # a forked work horse exits right after: send its writes


def rq_job_failed(rq_job: Any, connection: redis.Redis, exc_type: type,
                  exc: BaseException | None, tb: Any) -> None:
    """RQ's failure callback of our jobs. :func:`run_rq_job` records every outcome of
    the job's code itself, so RQ calls this for the rest: a run its cleanup found
    abandoned (the worker died with it: :class:`rq.exceptions.AbandonedJobError`), or
    an error outside the job's code. Either way :func:`job_died` records it."""
    if isinstance(exc, AbandonedJobError):
        backend = BACKENDS.get(rq_job.origin)
        after = f' (none for {backend.abandoned_after} s)' if backend is not None else ''
        why = (f'its worker stopped sending heartbeats{after}: the worker was killed or '
               f'died with it')
    else:
        why = f'RQ failed the job outside its code ({exc_type.__name__}: {exc})'
    job_died(rq_job, why)


def job_died(rq_job: Any, why: str) -> None:
    """The run ``rq_job`` of one of our jobs ended without recording how: retry the
    job if its policy allows (the error is :class:`WorkerDied`), else record it failed
    (``WorkerDied``). Acts once per run, in whichever process of the application
    notices first (a worker whose horse died, any abandoned-job cleanup); a finished
    record, or one already at a later attempt, is left alone."""
    backend = BACKENDS.get(rq_job.origin)
    if backend is None:
        log.warning('asyncjob rq: job %s died (%s), but no application with its queue %r '
                    'is loaded in this process to record it', rq_job.id, why, rq_job.origin)
        return
    if not backend.connection.set(died_key(rq_job.id), 1, nx=True, ex=ONCE_TTL):
        return  # another process noticed first
    runtime = backend.runtime
    job = job_from_rq(rq_job, RQRun)
    assert isinstance(job, RQRun)
    job.redis = backend.connection
    record = runtime.lifecycle.guard(runtime.store.get_record, job.id) or {}
    state = record.get('state')
    if state is not None and JobState(state).finished:
        return
    if int(record.get('attempt') or 0) > job.attempt + 1:
        return  # a later run exists: this one was dealt with
    job.state = JobState.RUNNING  # the run that died, counted
    job.attempt += 1
    job.started_at = record.get('started_at')
    runtime.failed(job, WorkerDied(why))
    runtime.lifecycle.flush()
