"""Taking queued jobs: one claim marks up to ``limit`` due jobs running for a worker.

The claim query, on every dialect::

    SELECT id FROM asyncjob_jobs
    WHERE state = 'queued' AND queue IN (...) AND run_at <= :now
    ORDER BY priority DESC, run_at LIMIT :limit FOR UPDATE SKIP LOCKED

PostgreSQL and SQLite run it as a ``WITH due AS MATERIALIZED (...)`` of one
``UPDATE ... RETURNING`` (one round trip; SQLite inside ``BEGIN IMMEDIATE``, which
holds the write lock, so no other process can claim meanwhile and ``SKIP LOCKED`` is
not needed). Materialized, because PostgreSQL may otherwise run ``id IN (subquery)``
as a join that rescans the subquery, and with ``SKIP LOCKED`` every rescan returns
rows not yet locked: one claim then takes more rows than its limit. MySQL and
MariaDB cannot ``UPDATE ... RETURNING`` nor update a table they select from in a
subquery: there the locked rows are selected, then updated, in one transaction.
A job cancelled meanwhile is never taken: the rows are locked (or, on SQLite, the
write lock held) from the SELECT to the UPDATE, and a cancel is itself an UPDATE
requiring ``state = 'queued'``. The one-statement claim is built once per set of
queues, with bound parameters (see :mod:`.transitions`).

Jobs with a ``concurrency_key`` are left out of that query: they are claimed first,
key by key, under the key's lock (:mod:`.keyed`).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

from sqlalchemy import Double, Integer, String, bindparam, select, update
from sqlalchemy.sql import Select, Update

from . import keyed
from .engine import Engines
from .schema import in_queues, jobs

#: What a worker needs to run a claimed job.
CLAIMED_COLUMNS = [jobs.c.id, jobs.c.func, jobs.c.name, jobs.c.args, jobs.c.kwargs,
                   jobs.c.retry, jobs.c.meta, jobs.c.attempt, jobs.c.enqueued_at,
                   jobs.c.run_at, jobs.c.priority, jobs.c.time_limit, jobs.c.concurrency_key]


def due_jobs(queues: Sequence[str], now: Any, limit: Any) -> Select:
    """The claim query (locks the rows it returns, skipping locked ones)."""
    return (select(jobs.c.id)
            .where(jobs.c.state == 'queued', in_queues(queues),
                   jobs.c.run_at <= now, jobs.c.concurrency_key.is_(None))
            .order_by(jobs.c.priority.desc(), jobs.c.run_at)
            .limit(limit)
            .with_for_update(skip_locked=True))


def running(worker_id: Any, now: Any) -> dict[str, Any]:
    """The values that mark a claimed row running for ``worker_id``."""
    return {'state': 'running', 'worker_id': worker_id, 'started_at': now,
            'attempt': jobs.c.attempt + 1, 'progress': None, 'data': None}


@functools.lru_cache(maxsize=32)
def _claim_returning(queues: tuple[str, ...]) -> Update:
    """The one-statement claim of ``queues`` (parameters ``now``, ``limit``, ``worker``)."""
    now: Any = bindparam('claim_now', type_=Double())
    due = (due_jobs(queues, now, bindparam('claim_limit', type_=Integer()))
           .cte('due').prefix_with('MATERIALIZED', dialect='postgresql'))
    # No second ``state = 'queued'`` test here: the CTE locked the rows it returns (on
    # SQLite the transaction holds the write lock), so they are still queued, and with
    # such a test PostgreSQL may walk the state index (every queued row) instead of
    # looking the few ids up by primary key.
    return (update(jobs)
            .where(jobs.c.id.in_(select(due.c.id)))
            .values(running(bindparam('claim_worker', type_=String()), now))
            .returning(*CLAIMED_COLUMNS))


def claim(engines: Engines, worker_id: str, queues: Sequence[str], now: float,
          limit: int, *, keyed_too: bool = True) -> list[dict[str, Any]]:
    """Mark up to ``limit`` due jobs of ``queues`` running for ``worker_id``; return
    them (``attempt`` already counting this run), highest priority first. Keyed jobs
    only with ``keyed_too`` (looking for them is a query of its own)."""
    if limit <= 0:
        return []
    taken = (keyed.claim_keyed(engines, worker_id, queues, now, limit,
                               CLAIMED_COLUMNS, running(worker_id, now))
             if keyed_too else [])
    if len(taken) < limit:
        taken += _claim_unkeyed(engines, worker_id, queues, now, limit - len(taken))
    taken.sort(key=lambda r: (-r['priority'], r['run_at']))
    return taken


def _claim_unkeyed(engines: Engines, worker_id: str, queues: Sequence[str], now: float,
                   limit: int) -> list[dict[str, Any]]:
    if engines.write.dialect.update_returning:
        params = {'claim_now': now, 'claim_limit': limit, 'claim_worker': worker_id}
        with engines.writing() as conn:
            rows = [dict(r._mapping) for r in
                    conn.execute(_claim_returning(tuple(queues)), params)]
        return rows
    query = due_jobs(queues, now, limit)
    with engines.write.begin() as conn:
        locked = [dict(r._mapping) for r in conn.execute(
            query.with_only_columns(*CLAIMED_COLUMNS))]
        if not locked:
            return []
        conn.execute(update(jobs)
                     .where(jobs.c.id.in_([r['id'] for r in locked]),
                            jobs.c.state == 'queued')
                     .values(running(worker_id, now)))
    for row in locked:  # the rows are locked: nobody changed them in between
        row['attempt'] += 1
    return locked


def claim_by_id(engines: Engines, worker_id: str, jobid: str, now: float) -> int | None:
    """Mark the queued job ``jobid`` running for ``worker_id`` (immediate mode runs a
    given job, not the next due); its attempt number, or ``None`` if it is not queued."""
    with engines.writing() as conn:
        done = conn.execute(update(jobs).where(jobs.c.id == jobid, jobs.c.state == 'queued')
                            .values(running(worker_id, now))).rowcount
        if not done:
            return None
        return conn.execute(select(jobs.c.attempt).where(jobs.c.id == jobid)).scalar()


def next_run_at(engines: Engines, queues: Sequence[str]) -> float | None:
    """When the earliest queued job of ``queues`` is due (for the poll wait); a job
    whose key has no free slot does not count (it waits for a job of its key to end,
    not for a time)."""
    from sqlalchemy import func
    with engines.read.connect() as conn:
        return conn.execute(select(func.min(jobs.c.run_at))
                            .where(jobs.c.state == 'queued',
                                   in_queues(queues),
                                   keyed.claimable())).scalar()
