"""Claims of jobs with a concurrency key: never more running rows of a key than its
limit, whichever processes and machines claim at the same instant.

Each key's claim is a transaction of its own that first locks the key's row in
``asyncjob_concurrency_keys`` (``SELECT ... FOR UPDATE``; SQLite: the claim's
``BEGIN IMMEDIATE`` holds the database's write lock already). So claims of one key
are made one after the other, and each reads, under the lock and after the previous
one committed, how many rows of the key run, then marks running at most as many due
rows of the key as the limit leaves free, in ``priority DESC, run_at`` order (the
order of every claim). The job rows themselves are locked ``FOR UPDATE`` (no
``SKIP LOCKED``: a row locked by a cancel is waited for, not skipped, so the order
holds). A row that stops running, however (finished, retried, rescued from a dead
worker), frees its slot: the next claim counts one fewer.

The limit applied is that of the job about to start (jobs of one key normally share
it). Key rows are inserted on first use (an idempotent INSERT in a transaction of its
own, before the claim's: MySQL's gap locks would make an INSERT inside it wait for
itself) and never deleted: one short row per key.

Which keys to try comes from an unlocked read (:func:`candidate_keys`): it may be
stale, the locked recount decides.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

from sqlalchemy import Double, Integer, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement, Select

from .engine import Engines
from .schema import concurrency_keys, in_queues, jobs

#: Keys known to have their row, in this process (bounded: a cache, not a registry).
_KNOWN: set[tuple[str, str]] = set()
_MAX_KNOWN = 10000


def _running_of_key() -> Any:
    other = jobs.alias('running_jobs')
    return (select(func.count()).select_from(other)
            .where(other.c.concurrency_key == jobs.c.concurrency_key,
                   other.c.state == 'running')
            .scalar_subquery())


def claimable() -> ColumnElement[bool]:
    """True for a queued row that a claim could take now, as far as its key goes: no
    key, or fewer running rows of its key than its limit (an unlocked read)."""
    return or_(jobs.c.concurrency_key.is_(None),
               _running_of_key() < jobs.c.concurrency_limit)


@functools.lru_cache(maxsize=32)
def _candidates(queues: tuple[str, ...]) -> Select:
    # Built once per set of queues (parameters ``keys_now``, ``keys_limit``): building
    # this statement costs far more CPU than running it on an empty queue.
    return (select(jobs.c.concurrency_key)
            .where(jobs.c.state == 'queued', jobs.c.concurrency_key.is_not(None),
                   in_queues(queues),
                   jobs.c.run_at <= bindparam('keys_now', type_=Double()),
                   _running_of_key() < jobs.c.concurrency_limit)
            .group_by(jobs.c.concurrency_key)
            .order_by(func.max(jobs.c.priority).desc(), func.min(jobs.c.run_at))
            .limit(bindparam('keys_limit', type_=Integer())))


def candidate_keys(engines: Engines, queues: Sequence[str], now: float,
                   limit: int) -> list[str]:
    """Up to ``limit`` keys with due queued rows in ``queues`` and, by an unlocked
    read, a free slot; the key of the most urgent job first."""
    with engines.read.connect() as conn:
        return list(conn.execute(_candidates(tuple(queues)),
                                 {'keys_now': now, 'keys_limit': limit}).scalars())


def claim_keyed(engines: Engines, worker_id: str, queues: Sequence[str], now: float,
                limit: int, columns: list[Any], running: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """Mark up to ``limit`` due keyed rows of ``queues`` running (``running``: the
    values to set); return their ``columns``, ``attempt`` counting this run."""
    taken: list[dict[str, Any]] = []
    for key in candidate_keys(engines, queues, now, limit):
        if len(taken) >= limit:
            break
        taken += _claim_key(engines, key, queues, now, limit - len(taken), columns, running)
    return taken


def _claim_key(engines: Engines, key: str, queues: Sequence[str], now: float, limit: int,
               columns: list[Any], running: dict[str, Any]) -> list[dict[str, Any]]:
    sqlite = engines.write_lock is not None
    if not sqlite:
        _ensure_key_row(engines, key)
    for _ in range(2):  # once more if the key's row was gone (tables recreated)
        with (engines.writing() if sqlite else engines.write.begin()) as conn:
            if sqlite or _lock_key(conn, key):
                return _take(conn, key, queues, now, limit, columns, running)
        _KNOWN.discard((str(engines.write.url), key))
        _ensure_key_row(engines, key)
    return []


def _take(conn: Connection, key: str, queues: Sequence[str], now: float, limit: int,
          columns: list[Any], running: dict[str, Any]) -> list[dict[str, Any]]:
    # Under the key's lock: every other claim of the key has committed or waits.
    live = [dict(r._mapping) for r in conn.execute(
        select(jobs.c.state, jobs.c.queue, jobs.c.concurrency_limit, *columns)
        .where(jobs.c.concurrency_key == key, jobs.c.state.in_(('queued', 'running')))
        .order_by(jobs.c.priority.desc(), jobs.c.run_at)
        .with_for_update())]
    busy = sum(1 for row in live if row['state'] == 'running')
    names = set(queues)
    chosen: list[dict[str, Any]] = []
    for row in live:
        if len(chosen) >= limit or busy >= (row['concurrency_limit'] or 1):
            break
        if row['state'] != 'queued' or row['queue'] not in names or row['run_at'] > now:
            continue
        chosen.append(row)
        busy += 1
    if not chosen:
        return []
    conn.execute(update(jobs).where(jobs.c.id.in_([r['id'] for r in chosen]),
                                    jobs.c.state == 'queued').values(running))
    for row in chosen:  # locked since the SELECT: nobody changed them in between
        row['attempt'] += 1
        for extra in ('state', 'queue', 'concurrency_limit'):
            del row[extra]
    return chosen


def announce_free_slot(engines: Engines, queue: str) -> None:
    """On PostgreSQL, wake every listening worker (``NOTIFY``): a keyed job ended, so
    the next of its key may be claimed now rather than at the next poll."""
    if engines.dialect != 'postgresql':
        return
    from .rows import CHANNEL
    with engines.writing() as conn:
        conn.execute(select(func.pg_notify(CHANNEL, queue)))


def _lock_key(conn: Connection, key: str) -> bool:
    """Lock the key's row (waits for another claim of the key to commit); False if
    the row is missing."""
    return conn.execute(select(concurrency_keys.c.concurrency_key)
                        .where(concurrency_keys.c.concurrency_key == key)
                        .with_for_update()).first() is not None


def _ensure_key_row(engines: Engines, key: str) -> None:
    known = (str(engines.write.url), key)
    if known in _KNOWN:
        return
    dialect = engines.dialect
    if dialect == 'postgresql':
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        stmt: Any = pg_insert(concurrency_keys).on_conflict_do_nothing()
    elif dialect in ('mysql', 'mariadb'):
        stmt = insert(concurrency_keys).prefix_with('IGNORE')
    else:
        stmt = insert(concurrency_keys)
    try:
        with engines.writing() as conn:
            conn.execute(stmt.values(concurrency_key=key))
    except IntegrityError:
        pass  # another process inserted it first
    if len(_KNOWN) >= _MAX_KNOWN:
        _KNOWN.clear()
    _KNOWN.add(known)

