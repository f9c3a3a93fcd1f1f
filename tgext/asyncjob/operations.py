"""Operating on jobs after the fact: listing and counting them, retrying a failed one,
deleting and purging finished ones. What the command line (``python -m tgext.asyncjob
jobs``) and the jobs dashboard call, through the public ``asyncjob_*`` functions.

Everything goes through the queue's job store (:mod:`.trackers.base`); a store that
cannot do an operation (a 0.3-style tracker keeps no records) raises
:class:`~tgext.asyncjob.errors.OperationUnsupported` naming it. State changes of live
jobs (cancelling) stay with the queue and its lifecycle: these functions only read
records, write a retry as a *new* job, and remove records of jobs that ended.
"""
from __future__ import annotations

from typing import Any

from . import checks
from .errors import JobNotFound, JobStateError, NotRetryable, OperationUnsupported
from .importpath import import_callable
from .job import JobState, JobStatus
from .trackers.base import FINISHED_STATES

#: The states a job can be retried from: it ended without a result.
RETRYABLE_STATES = frozenset({'failed', 'cancelled'})


def _store(queue: Any, capability: str, what: str) -> Any:
    store = queue.store
    if not getattr(store, capability, False):
        raise OperationUnsupported(
            f'{type(queue.tracker).__name__} cannot {what}: it keeps no listable job '
            f'records ({capability} is False); use the memory or Redis tracker, or the '
            'sqlalchemy backend')
    return store


def _state_name(state: JobState | str | None) -> str | None:
    return state.value if isinstance(state, JobState) else state


def list_jobs(queue: Any, state: JobState | str | None = None, name: str | None = None,
              offset: int = 0, limit: int = 50) -> list[JobStatus]:
    """Jobs newest first, in ``state`` and of the callable ``name`` (its dotted name, as
    ``JobStatus.name``) when given, skipping ``offset``. ``ValueError`` for an unknown
    state or a negative offset, a limit below 1."""
    store = _store(queue, 'supports_listing', 'list jobs')
    page = store.query(_state_name(state), name, offset, limit)
    return [JobStatus.from_record(jobid, record) for jobid, record in page]


def count_jobs(queue: Any) -> dict[str, int]:
    """Jobs kept per state (``queued``, ``running``, ``succeeded``, ``failed``,
    ``cancelled``; 0 included)."""
    return dict(_store(queue, 'supports_listing', 'count jobs').counts())


def _record(store: Any, jobid: str) -> dict[str, Any]:
    record = store.get_record(jobid) if isinstance(jobid, str) else None
    if record is None:
        raise JobNotFound(f'no job {jobid!r}: never queued, or its record expired or was '
                          'deleted')
    return dict(record)


def retry_job(queue: Any, jobid: str) -> str:
    """Queue a new job with the callable and arguments of the failed (or cancelled) job
    ``jobid``; return the new job's id. The records link both ways: the new one's
    ``retry_of`` is ``jobid``, the old one's ``retried_as`` the new id.

    Raises :class:`JobNotFound`, :class:`JobStateError` for a job that did not fail or
    was retried already, :class:`NotRetryable` when its record keeps no importable
    callable or no arguments, and whatever ``perform`` raises for the new job.
    """
    store = _store(queue, 'supports_status', 'retry jobs')
    record = _record(store, jobid)
    state = record.get('state')
    if state not in RETRYABLE_STATES:
        raise JobStateError(f'job {jobid} is {state}: only failed or cancelled jobs can be '
                            'retried', state)
    if record.get('retried_as'):
        raise JobStateError(f'job {jobid} was retried already, as {record["retried_as"]}: '
                            'retry that one', state)
    func = _callable_of(jobid, record)
    if 'args' not in record or 'kwargs' not in record:
        raise NotRetryable(f'job {jobid}: its record keeps no arguments (the Redis tracker '
                           'keeps only JSON arguments within its data budget; records '
                           'written before tgext.asyncjob kept them have none)')
    new = queue.perform(func, tuple(record['args'] or ()), dict(record['kwargs'] or {}),
                        retry_of=jobid)
    try:
        store.annotate(jobid, {'retried_as': new})
    except OperationUnsupported:
        pass  # a custom tracker without annotate(): the new job ran anyway, unlinked
    return str(new)


def _callable_of(jobid: str, record: dict[str, Any]) -> Any:
    path = record.get('func')
    if not path:
        raise NotRetryable(f'job {jobid} ({record.get("name")}): its callable has no import '
                           'path (a lambda, a closure, a bound method...), so it cannot be '
                           'queued again from its record')
    try:
        return import_callable(path)
    except (ImportError, AttributeError) as exc:
        raise NotRetryable(f'job {jobid}: its callable {path} cannot be imported any more: '
                           f'{exc}') from None


def delete_job(queue: Any, jobid: str) -> None:
    """Delete the record of the finished job ``jobid``. :class:`JobNotFound` if there is
    none, :class:`JobStateError` if the job is queued or running (cancel it first)."""
    store = _store(queue, 'supports_status', 'delete jobs')
    state = _record(store, jobid).get('state')
    if state not in FINISHED_STATES or not store.delete_finished(jobid):
        state = (store.get_record(jobid) or {}).get('state', state)
        raise JobStateError(f'job {jobid} is {state}: only finished jobs can be deleted '
                            '(cancel it first)', state)


def purge_jobs(queue: Any, older_than: float) -> int:
    """Delete the records of jobs finished more than ``older_than`` seconds ago; return
    how many. ``ValueError`` for a negative or non-finite number of seconds."""
    seconds = checks.seconds('older_than', older_than)
    assert seconds is not None
    return int(_store(queue, 'supports_listing', 'purge jobs').purge_finished(seconds))
