"""Unique keys in the jobs database: taking one is one upsert on its primary key.

::

    INSERT INTO asyncjob_unique_keys (unique_key, job_id, expires_at) VALUES (...)
    ON CONFLICT (unique_key) DO UPDATE            -- MySQL/MariaDB: ON DUPLICATE KEY UPDATE
      SET job_id = CASE WHEN <stale> THEN <new id> ELSE job_id END, ...
    RETURNING job_id                              -- MySQL/MariaDB: SELECT ... FOR UPDATE

``<stale>``: the key expired, or its job's row says it finished. The returned holder
is the new job (the key was free or stale: insert its row in the same transaction),
or the live job holding it (its id is the answer, nothing is queued).

A transaction that inserted or updated the key's row holds the row's lock until it
ends, so a concurrent upsert of the same key waits for it (PostgreSQL, MariaDB; SQLite
has one writer at a time): it then sees the committed holder, whose job row was
committed with it, or no row if that transaction aborted. The key is let go with no
write of its own: the transaction recording a job's end makes its row stale. A
holder's job row not (yet) seen counts as live, so a key only stays held past its
job's life if that row was deleted; :func:`.pruning.prune` deletes the keys of the
jobs it deletes.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import case, delete, exists, literal_column, or_, select
from sqlalchemy.dialects import mysql, postgresql, sqlite

from .schema import jobs, unique_keys
from .transitions import FINAL_STATES

_INSERTS = {'postgresql': postgresql.insert, 'sqlite': sqlite.insert,
            'mysql': mysql.insert, 'mariadb': mysql.insert}


def _stale(now: float) -> Any:
    # The row in conflict, named as the upsert's target: SQLAlchemy does not correlate
    # a subquery of an INSERT with its table, and would add it to the subquery's FROM
    # (then any finished holder of any key would make every key stale).
    holder: Any = literal_column(f'{unique_keys.name}.job_id')
    return or_(unique_keys.c.expires_at <= now,
               exists().where(jobs.c.id == holder, jobs.c.state.in_(FINAL_STATES)))


def hold(conn: Any, dialect: str, key: str, jobid: str, expires_at: float | None,
         now: float) -> str | None:
    """Take ``key`` for ``jobid`` on ``conn`` (a connection or session, in the
    transaction that inserts the job's row). ``None`` if taken: insert the job's row
    now; else the id of the live job holding it."""
    held = unique_keys.c
    # Any: each dialect's Insert has its own upsert methods, unknown to the base type.
    insert: Any = _INSERTS[dialect](unique_keys).values(unique_key=key, job_id=jobid,
                                                        expires_at=expires_at)
    stale = _stale(now)
    if dialect in ('mysql', 'mariadb'):
        # Assignments run left to right: once job_id is ours the key was taken.
        stmt = insert.on_duplicate_key_update([
            ('job_id', case((stale, insert.inserted.job_id), else_=held.job_id)),
            ('expires_at', case((held.job_id == insert.inserted.job_id,
                                 insert.inserted.expires_at), else_=held.expires_at)),
        ])
        conn.execute(stmt)
        # A locking read: the latest committed row (the transaction's snapshot may be
        # older), whose lock this transaction holds already.
        holder = conn.execute(select(held.job_id).where(held.unique_key == key)
                              .with_for_update()).scalar()
    else:
        stmt = insert.on_conflict_do_update(
            index_elements=[held.unique_key],
            set_={'job_id': case((stale, insert.excluded.job_id), else_=held.job_id),
                  'expires_at': case((stale, insert.excluded.expires_at),
                                     else_=held.expires_at)},
        ).returning(held.job_id)
        holder = conn.execute(stmt).scalar()
    return None if holder == jobid else holder


def let_go(conn: Any, key: str, jobid: str) -> None:
    """Delete ``key`` if ``jobid`` holds it (its job was never inserted)."""
    conn.execute(delete(unique_keys).where(unique_keys.c.unique_key == key,
                                           unique_keys.c.job_id == jobid))


def forget_jobs(conn: Any, jobids: list[str]) -> None:
    """Delete the keys held by ``jobids`` (rows about to be pruned)."""
    conn.execute(delete(unique_keys).where(unique_keys.c.job_id.in_(jobids)))
