"""The ``sqlalchemy`` backend: durable jobs in the application's own database.

``asyncjob.backend = sqlalchemy``; optional ``asyncjob.backend.url`` (default: the
application's ``sqlalchemy.url``), ``asyncjob.backend.in_process`` (default true: the
web process's ``asyncjob.workers`` threads run jobs too), ``asyncjob.backend.create_tables``
(default true). The jobs table is the queue, the schedule and the job store at once, so
every process sees every job. See docs/backends/sqlalchemy.rst.

Every state change goes through the queue's lifecycle; the lifecycle's store (this
backend's :class:`~.store.SQLJobStore`) turns each into a compare-and-set UPDATE, so
the database has the last word between processes: a job rebuilt from a claimed row
starts ``queued`` in memory and the lifecycle's claim only records what the row's
claim already did.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from tg.support.converters import asbool

from ...job import Job, JobError, JobState
from ...options import JobOptions
from ...timelimits import FLAG, INTERRUPT
from ...retry import policy_for
from ..base import Backend
from . import codec, transitions, uniquekeys
from .claims import claim, claim_by_id, next_run_at
from .engine import Engines, check_skip_locked, make_engines, retry_disconnect, same_database
from .errors import JobNotStored, LeaseLost, WorkerDied
from .keyed import announce_free_slot
from .leases import beat, bury, new_worker_id, orphans, retire
from .monitor import Duty, Monitor
from .notify import Listener
from .progress import ProgressWriter
from .pruning import prune
from .rows import insert_statement, job_row
from .runner import Runner
from .schema import create_tables as create_schema
from .schema import jobs
from .store import SQLJobStore

if TYPE_CHECKING:
    from ...execution import Runtime

log = logging.getLogger('tgext.asyncjob')

#: Rows validated by ``perform`` and not yet inserted, at most (a bound, not a cache).
_MAX_PENDING_ROWS = 10000
#: Seconds between two looks for claimable keyed jobs while none was found (other
#: processes' keyed jobs may wait that much longer; this process's own, none).
KEYED_LOOK_INTERVAL = 0.1


@dataclasses.dataclass
class Run:
    """A run this process holds: the job, and the (worker, attempt) its row names,
    for every compare-and-set on it."""

    job: Job
    attempt: int
    worker_id: str
    #: A worker thread of this process runs it (its end is written behind, see the
    #: store), rather than a transition made here for a run elsewhere (a rescue).
    executing: bool = False
    #: Its ``succeeded`` row was committed with the job's own work (see _completing).
    recorded: bool = False


def _open_transaction() -> Any:
    # The thread's current transaction, never creating one (see queue._open_transaction).
    import transaction
    return getattr(transaction.manager.manager, '_txn', None)


def _note_recorded(committed: bool, run: Run) -> None:
    run.recorded = committed


def _not_loaded() -> None:
    """Stands for the callable of a job rebuilt only to record a state change."""


class SQLAlchemyBackend(Backend):
    """Jobs are rows of ``asyncjob_jobs`` (see :mod:`.schema`); any number of processes
    claim them (:meth:`work`), the web process included unless ``in_process`` is false.

    Options (``asyncjob.backend.<name>``, strings accepted): ``url``, ``in_process``,
    ``create_tables``, ``queue_name`` (default ``default``), ``poll_interval`` (s
    between claims when nothing wakes the workers: 1; 5 on PostgreSQL, which is woken
    by NOTIFY), ``heartbeat_interval`` (10), ``lease_timeout`` (30: a worker silent
    that long is dead), ``rescue_interval`` (15), ``retention`` (s finished jobs are
    kept: 86400; 0 keeps them), ``prune_interval`` (300), ``progress_interval`` (0.2),
    ``engine_options`` (a dict for ``create_engine``). ``workers`` and ``immediate``
    come from the queue.
    """

    durable = True
    spans_processes = True
    supports_delay = True
    supports_retry = True
    supports_cancel_running = True  # from any process: see cancel()
    supports_on_commit = True  # moot: the insert itself joins the transaction
    transactional_enqueue = True
    supports_priority = True  # the claim takes priority DESC, run_at
    supports_unique = True  # asyncjob_unique_keys, see .uniquekeys
    supports_concurrency_limit = True  # counted in the database: keyed.py
    supports_time_limit = True
    #: Web process threads: flagged; work() (a worker process): stopped.
    time_limit_mode = FLAG

    def __init__(self, runtime: Runtime, url: str | None = None, *, workers: int = 1,
                 immediate: bool = False, in_process: Any = True, create_tables: Any = True,
                 queue_name: str = 'default', poll_interval: Any = None,
                 heartbeat_interval: Any = 10, lease_timeout: Any = 30,
                 rescue_interval: Any = 15, retention: Any = 86400,
                 prune_interval: Any = 300, progress_interval: Any = 0.2,
                 engine_options: dict[str, Any] | None = None):
        super().__init__(runtime)
        conf = runtime.conf or {}
        url = url or conf.get('sqlalchemy.url')
        if not url:
            raise ValueError('asyncjob.backend = sqlalchemy needs a database: set '
                             'asyncjob.backend.url or the application\'s sqlalchemy.url')
        self.url = str(url)
        self.workers = int(workers)
        self.immediate = bool(immediate)
        self.in_process = asbool(in_process)
        self.queue_name = str(queue_name)
        self.engines: Engines = make_engines(self.url, **(engine_options or {}))
        check_skip_locked(self.engines)
        if asbool(create_tables):
            create_schema(self.engines.write)
        self.listens = Listener.available(self.engines.write)
        self.poll_interval = float(poll_interval if poll_interval is not None
                                   else (5.0 if self.listens else 1.0))
        self.heartbeat_interval = float(heartbeat_interval)
        self.lease_timeout = float(lease_timeout)
        self.rescue_interval = float(rescue_interval)
        self.retention = float(retention)
        self.prune_interval = float(prune_interval)
        self.worker_id = new_worker_id()
        self.runs: dict[str, Run] = {}
        self.requeued: set[str] = set()
        self.wake = threading.Event()
        self.progress = ProgressWriter(self._write_progress, float(progress_interval))
        self.store = SQLJobStore(self)
        self.closed = False
        self._rows: dict[str, dict[str, Any]] = {}
        self._next_keyed_look = 0.0  # see _claim
        self._runner: Runner | None = None
        self._registered = False  # this worker has a row in asyncjob_workers
        self._monitor: Monitor | None = None
        self._listener: Listener | None = None
        self._same_db: dict[int, bool] = {}

    def own_store(self) -> SQLJobStore:
        """The jobs table is the store: every process sees every job."""
        return self.store

    def get_record(self, jobid: str) -> dict[str, Any] | None:
        """The record of ``jobid``, read from the jobs table."""
        return self.store.get_record(jobid)

    # -- taking jobs ----------------------------------------------------------------

    def validate(self, job: Job) -> None:
        """The base checks, then ``TypeError`` unless a worker can import the callable
        and the arguments, retry policy and meta are JSON. The row is built here, once,
        and inserted when the queue hands the job over (:meth:`enqueue`,
        :meth:`schedule`), after the ``on_enqueued`` hooks: meta they add (a trace
        context) is in the row."""
        super().validate(job)
        row = job_row(job, self.queue_name, codec.callable_path(job.func),
                      job.enqueued_at if job.eta is None else job.eta)
        if len(self._rows) >= _MAX_PENDING_ROWS:
            self._rows.pop(next(iter(self._rows)))
        self._rows[job.id] = row

    def take_row(self, jobid: str) -> dict[str, Any] | None:
        """The row :meth:`validate` built for ``jobid`` (once)."""
        return self._rows.pop(jobid, None)

    def pending_row(self, jobid: str) -> dict[str, Any] | None:
        """The row :meth:`validate` built for ``jobid``, still to be inserted."""
        return self._rows.get(jobid)

    def insert_pending(self, job: Job) -> None:
        """Insert the row :meth:`validate` built for ``job``, if it is not inserted yet,
        with the meta the job has now (hooks may have added some since)."""
        row = self.take_row(job.id)
        if row is None:
            return
        if job.meta:
            row['meta'] = codec.dumps(job.meta)  # TypeError: the caller is told
        if row.get('concurrency_key') is not None:
            self._next_keyed_look = 0.0
        self.insert(row)

    def insert(self, row: dict[str, Any], expires_at: float | None = None) -> str | None:
        """Insert a job's row (see :meth:`write_with_request`). :class:`JobNotStored`
        if the database refuses.

        A row with a ``unique_key`` takes the key first, in the same transaction
        (held until ``expires_at`` at most, see :mod:`.uniquekeys`); if a live job
        holds it, nothing is inserted and that job's id is returned. On another
        database the key is taken at once, alone, and let go if the transaction aborts.
        """
        stmt = insert_statement(self.engines.dialect)
        what = f'job {row["id"]} ({row["name"]})'
        try:
            if row.get('unique_key') is None:
                self.write_with_request(stmt, row, what)
                return None
            return self._insert_unique(stmt, row, what, expires_at)
        except SQLAlchemyError as exc:
            raise JobNotStored(f'asyncjob: job {row["id"]} ({row["name"]}) could not be '
                               f'stored in the database, nothing was queued: {exc}') from exc

    def _insert_unique(self, stmt: Any, row: dict[str, Any], what: str,
                       expires_at: float | None) -> str | None:
        # write_with_request's three ways, the key taken first.
        txn = None if self.immediate else _open_transaction()
        session = self._app_session() if txn is not None else None
        if session is not None and txn is not None:
            from zope.sqlalchemy import mark_changed
            holder = self._hold_key(session, row, expires_at)
            if holder is None:
                session.execute(stmt, row)
            mark_changed(session)
            txn.addAfterCommitHook(self._wake_after_commit)
            return holder
        if txn is not None:
            holder = retry_disconnect(lambda: self._hold_key_alone(row, expires_at))
            if holder is None:
                txn.addAfterCommitHook(self._write_after_commit, (stmt, row, what))
            return holder
        holder = retry_disconnect(lambda: self._execute_alone(stmt, row, expires_at))
        self.wake.set()
        return holder

    def _hold_key(self, conn: Any, row: dict[str, Any], expires_at: float | None) -> str | None:
        if row.get('unique_key') is None:
            return None
        return uniquekeys.hold(conn, self.engines.dialect, row['unique_key'], row['id'],
                               expires_at, time.time())

    def _hold_key_alone(self, row: dict[str, Any], expires_at: float | None) -> str | None:
        with self.engines.writing() as conn:
            return self._hold_key(conn, row, expires_at)

    def write_with_request(self, stmt: Any, params: dict[str, Any], what: str) -> None:
        """Execute ``stmt``. Inside a transaction, through the application's session
        when it is on the jobs database: atomic with the request's rows, committed even
        without ORM changes (``mark_changed``); on another database, right after the
        transaction commits (never for one that aborts). Outside a transaction, or in
        immediate mode, alone. Workers are woken once it is written."""
        txn = None if self.immediate else _open_transaction()
        session = self._app_session() if txn is not None else None
        if session is not None and txn is not None:
            from zope.sqlalchemy import mark_changed
            session.execute(stmt, params)
            mark_changed(session)
            txn.addAfterCommitHook(self._wake_after_commit)
        elif txn is not None:
            txn.addAfterCommitHook(self._write_after_commit, (stmt, params, what))
        else:
            retry_disconnect(lambda: self._execute_alone(stmt, params))
            self.wake.set()

    def enqueue(self, job: Job) -> None:
        """Insert the job's row: the row is the queue (and the job's record)."""
        self.insert_pending(job)

    def schedule(self, job: Job, eta: float) -> None:
        """Nothing to hold: a delayed job's row has its ``run_at`` (inserted here); a
        retry's was set by the store's running → queued update. Wake the claim loop for
        a due retry."""
        self.insert_pending(job)
        self.requeued.discard(job.id)
        if eta <= time.time() + self.poll_interval:
            self.wake.set()

    def _execute_alone(self, stmt: Any, row: dict[str, Any],
                       expires_at: float | None = None) -> str | None:
        with self.engines.writing() as conn:
            holder = self._hold_key(conn, row, expires_at)  # after a commit: its own key
            if holder is None:
                conn.execute(stmt, row)
        return holder

    def _app_session(self) -> Any:
        """The application's session (``DBSession``) if it is on the jobs database."""
        dbsession = (self.runtime.conf or {}).get('DBSession')
        if dbsession is None:
            return None
        session = dbsession() if callable(dbsession) else dbsession
        try:
            bind = session.get_bind()
        except SQLAlchemyError:
            return None
        key = id(bind)
        if key not in self._same_db:
            self._same_db[key] = same_database(bind, self.engines.write)
        return session if self._same_db[key] else None

    def _wake_after_commit(self, committed: bool) -> None:
        if committed:
            self.wake.set()

    def _write_after_commit(self, committed: bool, stmt: Any, params: dict[str, Any],
                            what: str) -> None:
        # asyncjob.backend.url is another database: written once the request's
        # transaction has committed (never for one that aborted).
        if not committed:
            if params.get('unique_key') is not None:
                self._let_go_key(params)
            return
        try:
            retry_disconnect(lambda: self._execute_alone(stmt, params))
        except SQLAlchemyError:
            log.exception('asyncjob %s: the transaction committed but it could not be '
                          'stored', what)
            return
        self.wake.set()

    def _let_go_key(self, row: dict[str, Any]) -> None:
        try:
            with self.engines.writing() as conn:
                uniquekeys.let_go(conn, row['unique_key'], row['id'])
        except SQLAlchemyError:
            log.exception('asyncjob %s: could not let its unique key go (it expires, or '
                          'is taken over once the key is stale)', row['id'])

    def live_workers(self) -> list[str]:
        """Workers (``asyncjob_workers`` rows) whose heartbeat is younger than
        ``lease_timeout``; :class:`TrackerUnavailable` if the database cannot be read."""
        from .leases import live
        now = time.time()
        return list(self.store._read(lambda conn: live(conn, self.lease_timeout, now)))

    # -- cancelling ----------------------------------------------------------------

    def cancel(self, jobid: str) -> bool:
        """A queued job: cancelled at once, atomically (it will not run). A running
        one, in any process: flagged; its worker hands the flag to the job within half
        a second (``asyncjob_cancelled()``). False if it is neither."""
        if not isinstance(jobid, str) or len(jobid) > 32:
            return False
        self.store.flush_finals()  # a job that ended here is not flagged as running
        with self.engines.writing() as conn:
            if transitions.cancel_queued(conn, jobid, time.time(),
                                         'cancelled before it started'):
                name = conn.execute(select(jobs.c.name).where(jobs.c.id == jobid)).scalar()
                cancelled = True
            else:
                cancelled = False
                flagged = transitions.request_cancel(conn, jobid)
        if cancelled:
            # The row says cancelled already; the lifecycle tells the hooks (its own
            # store write matches no queued row: a no-op).
            self.runtime.lifecycle.cancel(self._stand_in(jobid, name, JobState.QUEUED))
            return True
        run = self.runs.get(jobid)
        if flagged and run is not None:
            self.runtime.lifecycle.cancel(run.job)
        return flagged

    def _stand_in(self, jobid: str, name: str | None, state: JobState,
                  attempt: int = 0) -> Job:
        """A :class:`Job` for a row, to take it through a lifecycle transition."""
        job = Job(_not_loaded, (), {}, jobid=jobid)
        job.name = name
        job.state = state
        job.attempt = attempt
        return job

    def _deliver_cancels(self) -> None:
        """Hand cancel requests made in any process to the jobs running here."""
        if not self.runs:
            return
        with self.engines.read.connect() as conn:
            flagged = conn.execute(select(jobs.c.id).where(
                jobs.c.worker_id == self.worker_id, jobs.c.state == 'running',
                jobs.c.cancel_requested.is_(True))).scalars().all()
        for jobid in flagged:
            run = self.runs.get(jobid)
            if run is not None and not run.job.cancel_requested:
                self.runtime.lifecycle.cancel(run.job)

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """In the web process: run jobs on ``asyncjob.workers`` threads, unless
        ``in_process`` is false or the queue is immediate."""
        if self.in_process and not self.immediate and self._runner is None:
            self._start_runner(self.workers, burst=False, queues=None).start()

    def work(self, *, threads: int = 1, burst: bool = False,
             queues: list[str] | None = None) -> None:
        """The worker process's loop: claim and run jobs of ``queues`` (default: this
        backend's queue) on ``threads`` threads until :meth:`stop` is called (from a
        signal handler, say), or with ``burst`` until no job is due and none runs.
        Threads started in-process by :meth:`start` are stopped first."""
        if self._runner is not None:
            self._runner.stop(self.lease_timeout)
            self._runner.release()
            self._runner = None
        self.closed = False
        self.time_limit_mode = INTERRUPT  # this process is a worker: jobs are stopped
        runner = self._start_runner(threads, burst, queues)
        try:
            runner.run()
        finally:
            if burst:
                self._stop_services()

    def _start_runner(self, threads: int, burst: bool, queues: list[str] | None) -> Runner:
        names = list(queues or [self.queue_name])
        self._runner = Runner(functools.partial(self._claim, names), self._execute,
                              functools.partial(next_run_at, self.engines, names), self.wake,
                              threads=threads, poll_interval=self.poll_interval, burst=burst,
                              unclaim=self._unclaim)
        self._registered = True  # its row goes with the services (_stop_services)
        try:  # registered before the first claim, so no rescuer takes its jobs
            beat(self.engines, self.worker_id, time.time())
        except SQLAlchemyError as exc:
            log.warning('asyncjob: cannot reach the jobs database yet: %s', exc)
        if self._monitor is None:
            self._monitor = Monitor(self._duties())
            self._monitor.start()
        if self.listens and self._listener is None:
            self._listener = Listener(self.engines.write, self.wake)
            self._listener.start()
        return self._runner

    def _duties(self) -> list[Duty]:
        duties = [
            Duty('heartbeat', self.heartbeat_interval,
                 lambda: beat(self.engines, self.worker_id, time.time())),
            Duty('cancel check', 0.5, self._deliver_cancels),
            Duty('rescue of dead workers\' jobs', self.rescue_interval, self.rescue),
        ]
        if self.retention > 0:
            duties.append(Duty('retention pruning', self.prune_interval, lambda: prune(
                self.engines, self.worker_id, self.retention, time.time())))
        return duties

    def claim_immediate(self, jobid: str) -> None:
        """Immediate mode: the queue runs ``jobid`` now, in this process; claim its row
        (so no worker takes it too) and hold the run for its compare-and-sets. The
        queue never hands such a job over: its row is inserted here, first."""
        held = self.runtime.lifecycle.get(jobid)
        if held is not None:
            self.insert_pending(held)
        attempt = claim_by_id(self.engines, self.worker_id, jobid, time.time())
        if attempt is not None:
            self.runs[jobid] = Run(self._stand_in(jobid, None, JobState.RUNNING, attempt),
                                   attempt, self.worker_id)

    def _unclaim(self, rows: list[dict[str, Any]]) -> None:
        """Rows claimed as the stop began, never started: queued again as they were."""
        with self.engines.writing() as conn:
            for row in rows:
                conn.execute(*transitions.of_run(row['id'], self.worker_id, row['attempt'], {
                    'state': 'queued', 'worker_id': None, 'started_at': None,
                    'attempt': row['attempt'] - 1}))

    def _claim(self, queues: list[str], limit: int) -> list[dict[str, Any]]:
        # While no keyed job is claimable, look for one at most every
        # KEYED_LOOK_INTERVAL: the look is a query, and most claims need none.
        now = time.time()
        look = now >= self._next_keyed_look
        rows = claim(self.engines, self.worker_id, queues, now, limit, keyed_too=look)
        if look:
            keyed = any(row.get('concurrency_key') is not None for row in rows)
            self._next_keyed_look = 0.0 if keyed else now + KEYED_LOOK_INTERVAL
        return rows

    def _execute(self, row: dict[str, Any]) -> None:
        """Run one claimed row through ``runtime.execute`` (never raises)."""
        job = self._job_of(row)
        if job is None:
            return
        self.runs[job.id] = Run(job, row['attempt'], self.worker_id, executing=True)
        try:
            self.runtime.execute(job)
        finally:
            self.runs.pop(job.id, None)
            self.requeued.discard(job.id)
            if row.get('concurrency_key') is not None:
                self._slot_freed()

    def _slot_freed(self) -> None:
        # A keyed job ended: the next job of its key may be claimed, here and elsewhere.
        self._next_keyed_look = 0.0
        self.wake.set()
        if self.listens:
            try:
                announce_free_slot(self.engines, self.queue_name)
            except SQLAlchemyError as exc:  # the others claim it at their next poll
                log.warning('asyncjob: could not wake the other workers: %s', exc)

    def _job_of(self, row: dict[str, Any]) -> Job | None:
        """The :class:`Job` of a claimed row, ``queued`` in memory (the lifecycle's
        claim follows). A row that cannot be run (callable gone, bad JSON) is failed."""
        try:
            func = codec.import_callable(row['func'])
            job = Job(self._completing(func, row['id'], row['attempt']),
                      tuple(codec.loads(row['args'])), codec.loads(row['kwargs']),
                      jobid=row['id'], retry=codec.load_retry(row['retry']),
                      meta=codec.loads(row['meta']) or {},
                      options=None if row.get('time_limit') is None else
                      JobOptions(time_limit=row['time_limit']))
        except Exception as exc:
            log.error('asyncjob %s (%s) cannot run: %s', row['id'], row['name'], exc)
            stand_in = self._stand_in(row['id'], row['name'], JobState.RUNNING, row['attempt'])
            self.runs[row['id']] = Run(stand_in, row['attempt'], self.worker_id)
            try:
                self.runtime.lifecycle.fail(stand_in, JobError.from_exception(exc),
                                            detail='the worker could not load the job')
            finally:
                self.runs.pop(row['id'], None)
            return None
        job.name = row['name']
        job.enqueued_at = row['enqueued_at']
        job.attempt = row['attempt'] - 1  # the lifecycle's claim counts this run
        return job

    def _completing(self, func: Callable[..., Any], jobid: str,
                    attempt: int) -> Callable[..., Any]:
        """``func``, then, if it wrote through the application's session to the jobs
        database, its ``succeeded`` row written in that same transaction: both commit
        or neither (River's ``JobCompleteTx``, here the default)."""
        @functools.wraps(func)
        def run_then_complete(*args: Any, **kwargs: Any) -> Any:
            from ...execution import invoke
            result = invoke(func, args, kwargs)
            self._complete_in_transaction(jobid, attempt, result)
            return result
        return run_then_complete

    def _complete_in_transaction(self, jobid: str, attempt: int, result: Any) -> None:
        dbsession: Any = (self.runtime.conf or {}).get('DBSession')
        registry = getattr(dbsession, 'registry', None)
        if registry is None or not registry.has() or not dbsession().in_transaction():
            return  # the job did not use the session: completed after, on its own
        session = self._app_session()
        if session is None:
            return
        try:
            encoded = None if result is None else codec.dumps(result)
        except TypeError:
            return  # completed after, where the lifecycle keeps its repr()
        values = {'state': 'succeeded', 'finished_at': time.time(), 'result': encoded}
        pending = self.progress.take(jobid)
        if pending is not None:
            values.update(progress=pending['progress'], data=pending['data'])
        from zope.sqlalchemy import mark_changed
        done = session.execute(*transitions.of_run(jobid, self.worker_id, attempt,
                                                   values)).rowcount
        mark_changed(session)
        if not done:
            raise LeaseLost(f'job {jobid} was taken from this worker while it ran (its '
                            f'heartbeat was late, or the worker was stopping): its work is '
                            f'rolled back')
        run = self.runs.get(jobid)
        if run is not None:  # the store need not write it again, once this commits
            import transaction
            transaction.get().addAfterCommitHook(_note_recorded, (run,))

    def _write_progress(self, updates: list[dict[str, Any]]) -> None:
        with self.engines.writing() as conn:
            transitions.set_progress(conn, updates)

    # -- dead workers ----------------------------------------------------------------

    def rescue(self) -> list[str]:
        """Retry (if their policy allows; the attempt that died counts) or fail with
        ``WorkerDied`` the jobs of workers dead ``lease_timeout`` seconds, through the
        lifecycle; returns their ids. Run every ``rescue_interval`` s by each worker."""
        now = time.time()
        rescued = []
        for row in orphans(self.engines, self.lease_timeout, now):
            job = self._stand_in(row['id'], row['name'], JobState.RUNNING, row['attempt'])
            self.runs[job.id] = Run(job, row['attempt'], row['worker_id'] or '')
            try:
                if self._bury_job(job, row):
                    rescued.append(job.id)
            finally:
                self.runs.pop(job.id, None)
                self.requeued.discard(job.id)
        bury(self.engines, self.lease_timeout, now)
        if rescued:
            self.wake.set()
        return rescued

    def _bury_job(self, job: Job, row: dict[str, Any]) -> bool:
        why = f'worker {row["worker_id"]} died while running the job (attempt {row["attempt"]})'
        log.warning('asyncjob %s (%s): %s', job.id, job.name, why)
        error = JobError('WorkerDied', why)
        try:
            policy = policy_for(codec.load_retry(row['retry']),
                                codec.import_callable(row['func']))
        except Exception:
            policy = None
        lifecycle = self.runtime.lifecycle
        if policy is not None and policy.should_retry(WorkerDied(why), row['attempt']):
            return lifecycle.retry(job, error, policy.delay(row['attempt']))
        return lifecycle.fail(job, error, detail=why)

    # -- stopping, forking ---------------------------------------------------------

    def stop(self, timeout: float) -> list[str]:
        """Claim no more; running jobs get ``timeout`` seconds to finish. Queued jobs
        stay in the database: nothing is lost, so nothing is reported. A job still
        running at the deadline is queued again (through the lifecycle) to run in
        another worker; if it commits here after all, its in-transaction completion
        finds the row taken and rolls its work back (:class:`LeaseLost`)."""
        runner = self._runner
        if runner is not None and not runner.stop(timeout):
            for run in list(self.runs.values()):
                log.warning('asyncjob %s (%s) still running at stop: queued again, to run '
                            'in another worker', run.job.id, run.job.func_name)
                self.runtime.lifecycle.retry(run.job, JobError(
                    'Interrupted', 'the worker stopped while the job ran'), 0)
        self._stop_services()
        # Pooled connections are closed (status reads after the stop open new ones):
        # a stopped queue holds no connection of the database's limited supply.
        self.engines.dispose()
        if runner is not None:
            runner.release()  # work() returns now: everything is in the database
        return []

    def _stop_services(self) -> None:
        self.closed = True
        for service in (self._monitor, self._listener):
            if service is not None:
                service.stop()
        self._monitor = self._listener = None
        self.progress.stop()
        self.store.flush_finals()  # before this worker's row goes: its jobs are done
        if self._registered:  # once: a burst work() and the queue's stop() both end here
            self._registered = False
            try:
                retire(self.engines, self.worker_id)
            except SQLAlchemyError as exc:
                log.warning('asyncjob: could not unregister worker %s: %s', self.worker_id, exc)

    def after_fork(self) -> None:
        """In a forked child: new pools (never the parent's connections), a new worker
        id, none of the parent's threads; start again if the parent ran jobs."""
        super().after_fork()
        self.engines.dispose(close=False)
        self.worker_id = new_worker_id()
        self.runs = {}
        self.requeued = set()
        self._rows = {}
        self.wake = threading.Event()
        self.progress.after_fork()
        self._same_db = {}
        was_running = self._runner is not None and not self.closed
        self._runner = self._monitor = self._listener = None
        self._registered = False  # the parent's row is the parent's
        if was_running and not self.runtime.stopping:
            self.start()
