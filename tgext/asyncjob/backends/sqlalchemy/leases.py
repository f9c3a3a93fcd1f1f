"""Worker heartbeats, rescuing the jobs of dead workers, and named leases.

Each worker process has a row in ``asyncjob_workers`` whose ``heartbeat_at`` it renews
every ``heartbeat_interval`` seconds. A worker whose heartbeat is older than
``lease_timeout`` is dead (kill -9, OOM, power loss, a network partition): any process
of the backend finds its running jobs (:func:`orphans`) and puts each back in the
queue or fails it, through the lifecycle and the same compare-and-set as every state
change; its row is deleted (:func:`bury`). A worker that was only slow finds its jobs taken from it: its own
completion matches no row (see :mod:`.transitions`).
"""
from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from .engine import Engines
from .schema import jobs, leases, workers


def new_worker_id() -> str:
    """A worker id that says where the worker runs: ``host:pid:random``."""
    return f'{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}'


def beat(engines: Engines, worker_id: str, now: float) -> None:
    """Renew ``worker_id``'s lease, registering it if its row is missing (a first
    beat, or a slow worker whose row was deleted as dead)."""
    with engines.writing() as conn:
        renewed = conn.execute(update(workers).where(workers.c.id == worker_id)
                               .values(heartbeat_at=now)).rowcount
        if not renewed:
            conn.execute(insert(workers).values(
                id=worker_id, hostname=socket.gethostname()[:255], pid=os.getpid(),
                started_at=now, heartbeat_at=now))


def retire(engines: Engines, worker_id: str) -> None:
    """Delete a stopping worker's row (its jobs have ended or been handed back)."""
    with engines.writing() as conn:
        conn.execute(delete(workers).where(workers.c.id == worker_id))


def live(conn: Connection, lease_timeout: float, now: float) -> list[str]:
    """The workers whose heartbeat is younger than ``lease_timeout``, as ``id``
    (``host:pid:random``), oldest first."""
    return list(conn.execute(
        select(workers.c.id).where(workers.c.heartbeat_at >= now - lease_timeout)
        .order_by(workers.c.started_at)).scalars())


def orphans(engines: Engines, lease_timeout: float, now: float) -> list[dict[str, Any]]:
    """The running jobs of workers whose heartbeat is older than ``lease_timeout``
    (or that have no worker row at all): ``id``, ``name``, ``func``, ``retry``,
    ``attempt``, ``worker_id`` of each."""
    alive = select(workers.c.id).where(workers.c.heartbeat_at >= now - lease_timeout)
    with engines.read.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(jobs.c.id, jobs.c.name, jobs.c.func, jobs.c.retry, jobs.c.attempt,
                   jobs.c.worker_id)
            .where(jobs.c.state == 'running',
                   # A run younger than a lease is never orphaned (its worker may
                   # have claimed it before its first heartbeat was visible).
                   jobs.c.started_at < now - lease_timeout,
                   jobs.c.worker_id.is_(None) | jobs.c.worker_id.not_in(alive)))]


def bury(engines: Engines, lease_timeout: float, now: float) -> None:
    """Delete the rows of workers dead ``lease_timeout`` seconds."""
    with engines.writing() as conn:
        conn.execute(delete(workers).where(workers.c.heartbeat_at < now - lease_timeout))


def acquire(engines: Engines, name: str, holder: str, ttl: float,
            now: float | None = None) -> bool:
    """Take (or renew) the lease ``name`` for ``ttl`` seconds; ``False`` while another
    holder's lease is unexpired. One row per name: atomic on every dialect."""
    now = time.time() if now is None else now
    with engines.writing() as conn:
        taken = conn.execute(
            update(leases).where(leases.c.name == name,
                                 (leases.c.holder == holder) | (leases.c.expires_at < now))
            .values(holder=holder, expires_at=now + ttl)).rowcount
        if taken:
            return True
        exists = conn.execute(select(leases.c.name).where(leases.c.name == name)).first()
    if exists is not None:
        return False
    from sqlalchemy.exc import IntegrityError
    try:
        with engines.writing() as conn:
            conn.execute(insert(leases).values(name=name, holder=holder, expires_at=now + ttl))
    except IntegrityError:  # another process inserted it first: it holds the lease
        return False
    return True
