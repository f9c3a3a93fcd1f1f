"""The jobs table as the queue's job store: every process reads the same records.

Implements the store interface of :mod:`tgext.asyncjob.trackers.base`. Writes made
for the job's life go through the backend's compare-and-set transitions; ``track``
writes nothing because the INSERT that queues a job (:meth:`SQLAlchemyBackend.enqueue`,
after the ``on_enqueued`` hooks) is its record.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from ...errors import TrackerUnavailable
from ...trackers.writebehind import WriteBehind
from ...trackers.base import (STATES, check_annotations, check_page, check_progress_value,
                              progress_from_record)
from . import codec, transitions
from .pruning import delete_finished_before
from .rows import RECORD_COLUMNS, record_of
from .engine import retry_disconnect
from .runner import MAX_BACKOFF
from .schema import jobs
from .uniquekeys import forget_jobs

if TYPE_CHECKING:
    from .backend import SQLAlchemyBackend

log = logging.getLogger('tgext.asyncjob')


class SQLJobStore:
    """Job records in the backend's jobs table."""

    supports_status = True
    supports_listing = True

    def __init__(self, backend: SQLAlchemyBackend, linger: float = 0.002):
        self.backend = backend
        self._finals = WriteBehind(self._write_finals, linger)

    # -- reads ---------------------------------------------------------------------

    def get_record(self, entryid: str) -> dict[str, Any] | None:
        """The job's record, ``None`` if there is no such row (never queued, or pruned)."""
        if not isinstance(entryid, str) or len(entryid) > 32:
            return None
        query = select(*RECORD_COLUMNS).where(jobs.c.id == entryid)
        row = self._read(lambda conn: conn.execute(query).first())
        return None if row is None else record_of(row)

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        """The 0.3 answer: ``(-1, None)`` queued, ``(value, data)`` running, else ``None``."""
        return progress_from_record(self.get_record(entryid))

    def recent(self, limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """The most recently queued jobs, newest first."""
        query = select(*RECORD_COLUMNS).order_by(jobs.c.enqueued_at.desc()).limit(int(limit))
        rows = self._read(lambda conn: conn.execute(query).all())
        return [(row.id, record_of(row)) for row in rows]

    def query(self, state: str | None = None, name: str | None = None, offset: int = 0,
              limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """A page of the jobs table, newest first (by the enqueue-time indexes)."""
        check_page(state, name, offset, limit)
        query = select(*RECORD_COLUMNS)
        if state is not None:
            query = query.where(jobs.c.state == state)
        if name is not None:
            query = query.where(jobs.c.name == name)
        query = (query.order_by(jobs.c.enqueued_at.desc(), jobs.c.id.desc())
                 .offset(offset).limit(limit))
        rows = self._read(lambda conn: conn.execute(query).all())
        return [(row.id, record_of(row)) for row in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state: one ``GROUP BY``."""
        query = select(jobs.c.state, func.count()).group_by(jobs.c.state)
        counted = dict.fromkeys(STATES, 0)
        counted.update({state: int(n) for state, n in
                        self._read(lambda conn: conn.execute(query).all())})
        return counted

    def _read(self, call: Callable[[Any], Any]) -> Any:
        """``call(connection)`` on the read engine; once more after a dropped
        connection; :class:`TrackerUnavailable` while the database cannot be reached
        (the pages then say the status is unavailable, as with Redis)."""
        def read() -> Any:
            with self.backend.engines.read.connect() as conn:
                return call(conn)
        try:
            return retry_disconnect(read)
        except (OperationalError, InterfaceError) as exc:
            raise TrackerUnavailable(f'the jobs database cannot be reached: {exc}') from exc

    # -- writes --------------------------------------------------------------------

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        """Nothing yet: queuing the job and writing its record are one INSERT, made when
        the queue hands the job over, once the ``on_enqueued`` hooks have run (they may
        add meta). A retry's link to the job it repeats goes into that INSERT (one
        transaction with the request's, as the old job's link)."""
        row = self.backend.pending_row(entryid)
        if row is not None and record and record.get('retry_of'):
            row['retry_of'] = record['retry_of']

    def track_unique(self, entryid: str, record: dict[str, Any], key: str,
                     unique_for: float | None) -> str | None:
        """Insert the job's row now, taking ``key`` in the same transaction (see
        :mod:`.uniquekeys`); the id of the live job holding it instead, if one does.
        The key needs no release: the job's final state makes it stale. The answer
        needs the INSERT, so it comes before the ``on_enqueued`` hooks: meta they add
        is not in a unique job's row."""
        row = self.backend.take_row(entryid)
        if row is None:
            return None
        row['unique_key'] = key
        return self.backend.insert(row, None if unique_for is None else time.time() + unique_for)

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """A retry (running → queued at ``fields['eta']``). 'running' was written by
        the row's claim already, except in immediate mode, which claims it here."""
        run = self.backend.runs.get(entryid)
        if fields.get('state') == 'running':
            if run is None and self.backend.immediate:
                self.backend.claim_immediate(entryid)
            return
        if fields.get('state') != 'queued' or run is None:
            return
        values = {'state': 'queued', 'run_at': fields.get('eta') or time.time(),
                  'detail': fields.get('detail'), 'progress': None, 'data': None}
        if fields.get('error') is not None:
            values['error'] = codec.dumps(fields['error'])
        def requeue() -> None:
            with self.backend.engines.writing() as conn:
                transitions.finish_run(conn, entryid, run.worker_id, run.attempt, values)
        self._until_stored(requeue)
        self.backend.requeued.add(entryid)
        if self.backend.immediate:  # the retry waits in the table for a worker
            self.backend.runs.pop(entryid, None)

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """The final state. A run of this process: compare-and-set on that run,
        written behind (below); nothing at all if the job's own transaction recorded
        it already. Otherwise (cancelled, or not runnable) the job must still be
        queued, and it is written now."""
        values = {'state': fields['state'], 'finished_at': fields.get('finished_at', time.time()),
                  'detail': fields.get('detail') or None}
        if fields.get('result') is not None:
            values['result'] = codec.dumps(fields['result'])  # TypeError: the queue keeps repr
        if fields.get('error') is not None:
            values['error'] = codec.dumps(fields['error'])
        run = self.backend.runs.get(entryid)
        if run is not None:
            if run.recorded and values['state'] == 'succeeded':
                return
            pending = self.backend.progress.take(entryid)
            if pending is not None:
                values.update(progress=pending['progress'], data=pending['data'])
            if run.executing:
                self._finals.add((entryid, run, values))
                return
        self._store_final(entryid, run, values)

    def _store_final(self, entryid: str, run: Any, values: dict[str, Any]) -> None:
        try:
            self._until_stored(lambda: self._finish(entryid, run, values))
        except DBAPIError as exc:  # refused (not a connection problem): record why
            log.exception('asyncjob %s: could not store its final state', entryid)
            error = {'type': 'StoreError', 'message': f'its outcome could not be stored: '
                     f'{type(exc).__name__}', 'traceback': ''}
            self._until_stored(lambda: self._finish(entryid, run, {
                'state': 'failed', 'finished_at': values['finished_at'],
                'error': codec.dumps(error)}))

    def _write_finals(self, batch: list[tuple[str, Any, dict[str, Any]]]) -> None:
        """The ends of runs of this process, all in one transaction. Nobody waits for
        them: the worker thread takes its next job at once, and a backlog of short
        jobs shares one commit (River's batched completer). Until written, the row
        still says running: if the process dies meanwhile, the job is rescued like
        any other of a dead worker (see docs: delivery guarantees)."""
        statements: dict[Any, list[dict[str, Any]]] = {}
        for entryid, run, values in batch:
            stmt, params = transitions.of_run(entryid, run.worker_id, run.attempt, values)
            statements.setdefault(stmt, []).append(params)

        def write() -> None:
            with self.backend.engines.transaction() as conn:
                for stmt, rows in statements.items():
                    conn.execute(stmt, rows)
        try:
            self._until_stored(write)
        except DBAPIError:  # refused: one by one, so that a bad row fails alone
            for entryid, run, values in batch:
                self._store_final(entryid, run, values)

    def flush_finals(self) -> None:
        """Write the ends of runs waiting to be written, now."""
        self._finals.flush()

    def _finish(self, entryid: str, run: Any, values: dict[str, Any]) -> None:
        with self.backend.engines.writing() as conn:
            if run is not None:
                transitions.finish_run(conn, entryid, run.worker_id, run.attempt, values)
                if self.backend.immediate:
                    self.backend.runs.pop(entryid, None)
            else:
                conn.execute(update(jobs)
                             .where(jobs.c.id == entryid, jobs.c.state == 'queued')
                             .values(values))

    def _until_stored(self, call: Callable[[], None]) -> None:
        """``call()`` until the database answers: a job's end is never dropped because
        the server was away (if this process stops first, the job is rescued)."""
        failures = 0
        while True:
            try:
                call()
                return
            except DBAPIError as exc:
                if not (exc.connection_invalidated
                        or isinstance(exc, (OperationalError, InterfaceError))):
                    raise
                if self.backend.closed:
                    raise
                failures += 1
                if failures == 1:
                    log.warning('asyncjob: cannot reach the jobs database, retrying: %s', exc)
                time.sleep(min(0.1 * 2 ** failures, MAX_BACKOFF))

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Coalesced: see :class:`.progress.ProgressWriter`."""
        check_progress_value(value)
        self.backend.progress.put(entryid, value, message)

    def remove(self, entryid: str) -> None:
        """Forget a job that was never handed over."""
        self.backend.take_row(entryid)
        with self.backend.engines.writing() as conn:
            conn.execute(delete(jobs).where(jobs.c.id == entryid, jobs.c.state == 'queued'))

    def flush(self) -> None:
        """Write pending progress and the ends of runs now."""
        self.backend.progress.flush()
        self.flush_finals()

    def delete_finished(self, entryid: str) -> bool:
        """Delete a finished job's row; False for a live or unknown one."""
        if not isinstance(entryid, str) or len(entryid) > 32:
            return False
        with self.backend.engines.writing() as conn:
            done = conn.execute(delete(jobs).where(
                jobs.c.id == entryid, jobs.c.state.in_(transitions.FINAL_STATES)))
            if done.rowcount:  # a key it held would look held by a live job forever
                forget_jobs(conn, [entryid])
        return bool(done.rowcount)

    def purge_finished(self, older_than: float) -> int:
        """Delete the jobs finished more than ``older_than`` seconds ago, in batches."""
        return delete_finished_before(self.backend.engines, time.time() - older_than)

    def annotate(self, entryid: str, fields: dict[str, Any]) -> None:
        """Write link columns on the job's row, whatever its state."""
        check_annotations(fields)
        # In the request's transaction when there is one, as the INSERT of the retry
        # it links to (SQLite: a connection of its own would wait for that one's lock).
        self.backend.write_with_request(
            update(jobs).where(jobs.c.id == entryid).values(fields), {}, f'job {entryid} links')
