"""The backend's tables, as SQLAlchemy ``Table`` objects on their own ``MetaData``.

Hand :data:`metadata` to alembic (``target_metadata = [app_metadata, asyncjob_metadata]``)
to manage them with the application's migrations, or let the backend create them when
missing (``asyncjob.backend.create_tables``, default true).

Times are epoch seconds (``Double``) written from the processes' clocks, so every
dialect compares them the same way; keep the machines' clocks in sync (NTP).
"""
from __future__ import annotations

from typing import Sequence

from sqlalchemy import (Boolean, Column, Double, Index, Integer, MetaData, String, Table,
                        Text, bindparam)
from sqlalchemy.sql import ColumnElement
from sqlalchemy.dialects.mysql import LONGTEXT
from sqlalchemy.engine import Connection, Engine

#: JSON and long text: MySQL's TEXT stops at 64 KiB.
Document = Text().with_variant(LONGTEXT(), 'mysql', 'mariadb')

#: The tables of the ``sqlalchemy`` backend.
metadata = MetaData()

#: One row per job, for its whole life: it is the queue, the schedule and the record.
jobs = Table(
    'asyncjob_jobs', metadata,
    Column('id', String(32), primary_key=True),
    Column('queue', String(100), nullable=False, default='default'),
    Column('func', String(255), nullable=False),  # import path, module:qualname
    Column('name', String(255), nullable=False),  # shown on pages and in logs
    Column('args', Document, nullable=False),  # JSON list
    Column('kwargs', Document, nullable=False),  # JSON object
    Column('retry', Document),  # JSON of the job's own Retry policy
    Column('meta', Document),  # JSON object carried with the job (trace context...)
    Column('state', String(16), nullable=False),
    Column('priority', Integer, nullable=False, default=0),  # higher runs first
    Column('run_at', Double, nullable=False),  # not claimed before
    Column('enqueued_at', Double, nullable=False),
    Column('started_at', Double),
    Column('finished_at', Double),
    Column('attempt', Integer, nullable=False, default=0),  # runs started so far
    Column('worker_id', String(64)),  # the process running it (see ``workers``)
    Column('cancel_requested', Boolean, nullable=False, default=False),
    Column('progress', Integer),
    Column('data', Document),  # JSON progress data
    Column('result', Document),  # JSON
    Column('error', Document),  # JSON: type, message, traceback
    Column('detail', Document),
    # Issue 13's options (unique_key: the key it was queued with, for the pages).
    Column('unique_key', String(255)),
    Column('concurrency_key', String(255)),
    Column('time_limit', Double),
    # Concurrency limits (keyed.py): at most this many running rows of concurrency_key.
    Column('concurrency_limit', Integer),
    Column('retry_of', String(32)),  # the job a manual retry copied (asyncjob_retry)
    Column('retried_as', String(32)),  # the copy a manual retry made of this job
    Index('ix_asyncjob_jobs_worker', 'worker_id'),  # rescue, cancel checks
    Index('ix_asyncjob_jobs_finished', 'state', 'finished_at'),  # retention, purge
    Index('ix_asyncjob_jobs_enqueued', 'enqueued_at'),  # the jobs list, newest first
    Index('ix_asyncjob_jobs_state_enqueued', 'state', 'enqueued_at'),  # list by state
    Index('ix_asyncjob_jobs_name_enqueued', 'name', 'enqueued_at'),  # list by callable
    Index('ix_asyncjob_jobs_unique', 'unique_key'),
    Index('ix_asyncjob_jobs_concurrency', 'concurrency_key', 'state'),  # keyed claims
)
# The claim query: state = 'queued' AND queue IN (...) AND run_at <= now
# ORDER BY priority DESC, run_at. The index walks exactly that order.
Index('ix_asyncjob_jobs_claim', jobs.c.state, jobs.c.queue, jobs.c.priority.desc(),
      jobs.c.run_at)


def in_queues(queues: Sequence[str]) -> ColumnElement[bool]:
    """``queue IN (...)`` with one bound parameter per name, its value set: for
    statements built once per set of queues (an expanding ``IN`` would be rendered
    again at every execution)."""
    return jobs.c.queue.in_([bindparam(f'queue_{i}', name, type_=String())
                             for i, name in enumerate(queues)])


#: Unique keys held (``asyncjob_options(unique_key=...)``): at most one row per key, so
#: the primary key makes taking one atomic between transactions on every dialect. A
#: row holds its key while its job is queued or running and ``expires_at`` (``NULL``:
#: never) has not passed: a finished job lets its key go in the transaction that
#: records its end (see :mod:`.uniquekeys`).
unique_keys = Table(
    'asyncjob_unique_keys', metadata,
    Column('unique_key', String(255), primary_key=True),
    Column('job_id', String(32), nullable=False),
    Column('expires_at', Double),
    Index('ix_asyncjob_unique_keys_job', 'job_id'),  # pruning
)

#: One row per live worker process, its heartbeat renewing its lease.
workers = Table(
    'asyncjob_workers', metadata,
    Column('id', String(64), primary_key=True),
    Column('hostname', String(255), nullable=False),
    Column('pid', Integer, nullable=False),
    Column('started_at', Double, nullable=False),
    Column('heartbeat_at', Double, nullable=False),
)

#: Named leases (e.g. ``prune``): the holder of an unexpired lease does the task alone.
leases = Table(
    'asyncjob_leases', metadata,
    Column('name', String(64), primary_key=True),
    Column('holder', String(64), nullable=False),
    Column('expires_at', Double, nullable=False),
)


#: One row per concurrency key ever used: the row keyed claims lock (``FOR UPDATE``),
#: so that claims of one key, in any process, are made one after the other.
concurrency_keys = Table(
    'asyncjob_concurrency_keys', metadata,
    Column('concurrency_key', String(255), primary_key=True),
)


def create_tables(bind: Engine | Connection) -> None:
    """Create the tables and indexes that are missing (``checkfirst``)."""
    metadata.create_all(bind, checkfirst=True)


from . import periodic  # noqa: E402,F401 - periodic jobs' slot table, on this MetaData
