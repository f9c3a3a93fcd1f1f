"""Retention: finished jobs older than ``retention`` seconds are deleted, in batches
(short transactions, no long lock on the table), by one process at a time (the holder
of the ``prune`` lease, see :func:`.leases.acquire`)."""
from __future__ import annotations

from sqlalchemy import delete, select

from .engine import Engines
from .leases import acquire
from .schema import jobs
from .transitions import FINAL_STATES
from .uniquekeys import forget_jobs

#: Rows deleted per transaction.
BATCH = 1000


def prune(engines: Engines, holder: str, retention: float, now: float,
          batch: int = BATCH, lease_ttl: float = 300) -> int | None:
    """Delete jobs finished before ``now - retention``; return how many, or ``None``
    if another process holds the lease (and prunes)."""
    if not acquire(engines, 'prune', holder, lease_ttl, now):
        return None
    return delete_finished_before(engines, now - retention, batch)


def delete_finished_before(engines: Engines, cutoff: float, batch: int = BATCH) -> int:
    """Delete jobs finished before ``cutoff`` (epoch seconds), ``batch`` rows per
    transaction; return how many."""
    deleted = 0
    while True:
        with engines.writing() as conn:
            # Ids first, then DELETE by primary key: MySQL refuses a LIMIT in an IN
            # subquery of the table being deleted from.
            rows = conn.execute(
                select(jobs.c.id, jobs.c.unique_key).where(
                    jobs.c.state.in_(FINAL_STATES), jobs.c.finished_at < cutoff).limit(batch)).all()
            ids = [row.id for row in rows]
            keyed = [row.id for row in rows if row.unique_key is not None]
            if keyed:  # their keys are stale already; the rows go with their jobs
                forget_jobs(conn, keyed)
            if ids:
                conn.execute(delete(jobs).where(jobs.c.id.in_(ids),
                                                jobs.c.state.in_(FINAL_STATES)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted
