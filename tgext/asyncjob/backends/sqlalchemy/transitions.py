"""State changes of job rows, each one compare-and-set ``UPDATE ... WHERE state = ...``.

A running job's changes also name the worker and the attempt that claimed it, so a
worker whose lease expired (its job rescued and maybe running elsewhere) changes
nothing: the UPDATE matches no row and the caller learns it (``False``).

The UPDATEs a worker makes for every job are built once per set of columns, with
bound parameters (:func:`of_run`): building a statement costs more CPU than
executing it, and a statement built once also has its compiled form cached.
"""
from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import and_, bindparam, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Update

from .schema import jobs

FINAL_STATES = ('succeeded', 'failed', 'cancelled')


def of_row(jobid: Any, *expected: ColumnElement[bool]) -> ColumnElement[bool]:
    """``id = jobid``, and the row only if ``expected`` all hold: the compare of a
    compare-and-set. The expectations are tested as one ``(...) IS TRUE``, which no
    index can serve: otherwise, while a table has no statistics yet (created minutes
    ago), PostgreSQL may find the row through an index on ``state`` (walking every
    row that ever held that state) rather than by its primary key."""
    return and_(jobs.c.id == jobid, and_(*expected).is_(true()))


@functools.lru_cache(maxsize=64)
def _run_update(columns: tuple[str, ...]) -> Update:
    return (update(jobs)
            .where(of_row(bindparam('run_id'), jobs.c.state == 'running',
                          jobs.c.worker_id == bindparam('run_worker'),
                          jobs.c.attempt == bindparam('run_attempt')))
            .values({name: bindparam('set_' + name, type_=jobs.c[name].type)
                     for name in columns}))


def of_run(jobid: str, worker_id: str, attempt: int,
           values: dict[str, Any]) -> tuple[Update, dict[str, Any]]:
    """The UPDATE setting ``values`` on the row only while this worker's run
    ``attempt`` holds it, and its parameters: ``connection.execute(*of_run(...))``."""
    params = {'set_' + name: value for name, value in values.items()}
    params.update(run_id=jobid, run_worker=worker_id, run_attempt=attempt)
    return _run_update(tuple(sorted(values))), params


def finish_run(conn: Connection, jobid: str, worker_id: str, attempt: int,
               fields: dict[str, Any]) -> bool:
    """Running → ``fields['state']`` (final, or ``queued`` for a retry); ``False`` if
    the run no longer holds the row."""
    values = dict(fields)
    if values['state'] == 'queued':
        values.update(worker_id=None, started_at=None, cancel_requested=False)
    return conn.execute(*of_run(jobid, worker_id, attempt, values)).rowcount == 1


def cancel_queued(conn: Connection, jobid: str, now: float, detail: str) -> bool:
    """Queued → cancelled, atomically: ``False`` if it is no longer queued (a worker
    claimed it first, and the job runs)."""
    stmt = (update(jobs).where(of_row(jobid, jobs.c.state == 'queued'))
            .values(state='cancelled', finished_at=now, detail=detail))
    return conn.execute(stmt).rowcount == 1


def request_cancel(conn: Connection, jobid: str) -> bool:
    """Flag a running job; its worker's monitor hands the flag to the job."""
    stmt = (update(jobs).where(of_row(jobid, jobs.c.state == 'running'))
            .values(cancel_requested=True))
    return conn.execute(stmt).rowcount == 1


def set_progress(conn: Connection, updates: list[dict[str, Any]]) -> None:
    """Progress of running jobs, one executemany: ``{'jobid', 'progress', 'data'}``."""
    stmt = (update(jobs).where(of_row(bindparam('jobid'), jobs.c.state == 'running'))
            .values(progress=bindparam('p_value'), data=bindparam('p_data')))
    conn.execute(stmt, [{'jobid': u['jobid'], 'p_value': u['progress'], 'p_data': u['data']}
                        for u in updates])
