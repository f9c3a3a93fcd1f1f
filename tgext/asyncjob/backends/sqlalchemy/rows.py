"""A job as a row, and a row as the record the status pages read."""
from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import func as sqlfunc
from sqlalchemy import insert, literal, select
from sqlalchemy.sql import Executable

from ...job import Job
from . import codec
from .schema import jobs

#: The PostgreSQL channel workers LISTEN on; the payload is the job's queue name.
CHANNEL = 'asyncjob'


def job_row(job: Job, queue: str, path: str, run_at: float) -> dict[str, Any]:
    """The row that queues ``job`` (callable at import ``path``); ``TypeError`` if its
    arguments, retry policy or meta are not JSON."""
    args, kwargs = codec.dump_arguments(job.func_name, job.args, job.kwargs)
    meta = getattr(job, 'meta', None)
    options = getattr(job, 'options', None)
    return {
        'id': job.id, 'queue': queue, 'func': path, 'name': job.func_name,
        'args': args, 'kwargs': kwargs, 'retry': codec.dump_retry(job.retry),
        'meta': codec.dumps(meta) if meta else None, 'state': 'queued',
        'priority': int(getattr(options, 'priority', 0) or 0), 'run_at': run_at,
        'enqueued_at': job.enqueued_at, 'attempt': job.attempt, 'cancel_requested': False,
        'retry_of': None, 'unique_key': getattr(options, 'unique_key', None),
        'concurrency_key': getattr(options, 'concurrency_key', None),
        'concurrency_limit': getattr(options, 'concurrency_limit', None),
        'time_limit': getattr(options, 'time_limit', None),
    }


#: The columns :func:`job_row` fills.
ROW_COLUMNS = ('id', 'queue', 'func', 'name', 'args', 'kwargs', 'retry', 'meta', 'state',
               'priority', 'run_at', 'enqueued_at', 'attempt', 'cancel_requested', 'retry_of',
               'unique_key', 'concurrency_key', 'concurrency_limit', 'time_limit')


@functools.lru_cache(maxsize=None)
def insert_statement(dialect: str) -> Executable:
    """The INSERT of a :func:`job_row` (executed with the row as parameters; built
    once). On PostgreSQL the same statement also NOTIFYs the workers (delivered when
    the transaction commits): one round trip for both."""
    stmt = insert(jobs).values({name: bindparam(name) for name in ROW_COLUMNS})
    if dialect != 'postgresql':
        return stmt
    inserted = stmt.returning(jobs.c.queue).cte('inserted')
    return select(sqlfunc.pg_notify(literal(CHANNEL), inserted.c.queue))


_RECORD_COLUMNS = ('state', 'name', 'enqueued_at', 'started_at', 'finished_at', 'attempt',
                   'progress', 'detail', 'func', 'retry_of', 'retried_as')
_JSON_COLUMNS = ('data', 'result', 'error', 'meta', 'args', 'kwargs')

#: The columns a status read needs.
RECORD_COLUMNS = [jobs.c.id, jobs.c.run_at, jobs.c.cancel_requested,
                  *(jobs.c[n] for n in _RECORD_COLUMNS + _JSON_COLUMNS)]


def record_of(row: Any) -> dict[str, Any]:
    """The tracker-style record (see ``trackers.base``) of a jobs row."""
    mapping = row._mapping
    record: dict[str, Any] = {n: mapping[n] for n in _RECORD_COLUMNS if mapping[n] is not None}
    for name in _JSON_COLUMNS:
        if mapping[name] is not None:
            record[name] = codec.loads(mapping[name])
    if record.get('state') == 'queued' and mapping['run_at'] > mapping['enqueued_at']:
        record['eta'] = mapping['run_at']
    if mapping['cancel_requested'] and record.get('state') == 'running':
        record['cancel_requested'] = True
    return record
