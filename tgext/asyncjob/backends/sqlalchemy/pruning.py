"""Retention: finished jobs older than ``retention`` seconds are deleted, in batches
(short transactions, no long lock on the table), by one process at a time (the holder
of the ``prune`` lease, see :func:`.leases.acquire`)."""
from __future__ import annotations

from sqlalchemy import delete, select

from .engine import Engines
from .leases import acquire
from .schema import jobs
from .transitions import FINAL_STATES

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
            ids = list(conn.execute(
                select(jobs.c.id).where(jobs.c.state.in_(FINAL_STATES),
                                        jobs.c.finished_at < cutoff).limit(batch)).scalars())
            if ids:
                conn.execute(delete(jobs).where(jobs.c.id.in_(ids),
                                                jobs.c.state.in_(FINAL_STATES)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted
