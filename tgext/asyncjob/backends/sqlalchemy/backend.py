"""The ``sqlalchemy`` backend: durable jobs in the application's own database.

``asyncjob.backend = sqlalchemy``; optional ``asyncjob.backend.url`` (default: the
application's ``sqlalchemy.url``), ``asyncjob.backend.in_process`` (default true: the
web process's ``asyncjob.workers`` threads run jobs too), ``asyncjob.backend.create_tables``
(default true). The jobs table is the queue, the schedule and the job store at once, so
every process sees every job. See README "Durable jobs in your database".
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from tg.support.converters import asbool

from ...job import Job, JobError, JobState
from ...retry import policy_for
from . import codec, transitions
from .claims import claim, next_run_at
from .engine import Engines, check_skip_locked, make_engines, retry_disconnect, same_database
from .errors import JobNotStored, LeaseLost, WorkerDied
from .leases import beat, new_worker_id, rescue, retire
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
    from ...queue import JobQueue

log = logging.getLogger('tgext.asyncjob')


@dataclasses.dataclass
class Run:
    """A job this process is running: which attempt (for compare-and-set) and the job."""

    attempt: int
    job: Job


def _open_transaction() -> Any:
    # The thread's current transaction, never creating one (see queue._open_transaction).
    import transaction
    return getattr(transaction.manager.manager, '_txn', None)


class SQLAlchemyBackend:
    """Jobs are rows of ``asyncjob_jobs`` (see :mod:`.schema`); any number of processes
    claim them (``work()``), the web process included unless ``in_process`` is false.

    Options (``asyncjob.backend.<name>``, strings accepted): ``url``, ``in_process``,
    ``create_tables``, ``queue_name`` (default ``default``), ``poll_interval`` (s
    between claims when nothing wakes the workers: 1; 5 on PostgreSQL, which is woken
    by NOTIFY), ``heartbeat_interval`` (10), ``lease_timeout`` (30: a worker silent
    that long is dead), ``rescue_interval`` (15), ``retention`` (s finished jobs are
    kept: 86400), ``prune_interval`` (300), ``progress_interval`` (0.2),
    ``engine_options`` (a dict for ``create_engine``).
    """

    durable = True
    spans_processes = True
    supports_cancel = True
    supports_cancel_running = True
    supports_immediate = True
    supports_retry = True
    supports_schedule = True
    supports_delay = True
    supports_on_commit = True
    transactional_enqueue = True

    def __init__(self, queue: JobQueue, url: str | None = None, *,
                 in_process: Any = True, create_tables: Any = True,
                 queue_name: str = 'default', poll_interval: Any = None,
                 heartbeat_interval: Any = 10, lease_timeout: Any = 30,
                 rescue_interval: Any = 15, retention: Any = 86400,
                 prune_interval: Any = 300, progress_interval: Any = 0.2,
                 engine_options: dict[str, Any] | None = None):
        self.queue = queue
        conf = queue.conf or {}
        url = url or conf.get('sqlalchemy.url')
        if not url:
            raise ValueError('asyncjob.backend = sqlalchemy needs a database: set '
                             'asyncjob.backend.url or the application\'s sqlalchemy.url')
        self.url = str(url)
        self.in_process = asbool(in_process)
        self.queue_name = queue_name
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
        self._runner: Runner | None = None
        self._monitor: Monitor | None = None
        self._listener: Listener | None = None
        self._started = False
        self.closed = False
        self._same_db: dict[int, bool] = {}
        # The jobs table is the store: every process sees every job.
        queue.tracker = queue.store = SQLJobStore(self)

    # -- taking jobs ----------------------------------------------------------------

    def check(self, job: Job) -> str:
        """``TypeError`` unless a worker can import the callable and the arguments,
        retry policy and meta are JSON; returns the callable's import path."""
        path = codec.callable_path(job.func)
        job_row(job, self.queue_name, path, 0.0)
        return path

    def enqueue(self, job: Job) -> None:
        """Insert the job's row (see :meth:`_insert`), due now."""
        self._insert(job, time.time() if job.eta is None else job.eta)

    def schedule(self, job: Job, eta: float) -> None:
        """Insert a delayed job's row, due at ``eta``; for a retry (running → queued)
        the store's update already set its ``run_at``."""
        if job.id in self.requeued:
            self.requeued.discard(job.id)
            self.wake.set()
            return
        self._insert(job, eta)

    def _insert(self, job: Job, run_at: float) -> None:
        """Inside a transaction, through the application's session when it is on the
        jobs database (atomic with the request's rows; ``mark_changed`` so it commits
        even without ORM changes), after its commit otherwise; outside one, alone."""
        path = self.check(job)
        stmt = insert_statement(self.engines.dialect)
        row = job_row(job, self.queue_name, path, run_at)
        txn = _open_transaction()
        session = self._app_session() if txn is not None else None
        try:
            if session is not None:
                from zope.sqlalchemy import mark_changed
                session.execute(stmt, row)
                mark_changed(session)
                txn.addAfterCommitHook(self._wake_after_commit)
            elif txn is not None:
                txn.addAfterCommitHook(self._insert_after_commit, (job, stmt, row))
            else:
                retry_disconnect(lambda: self._execute_alone(stmt, row))
                self.wake.set()
        except SQLAlchemyError as exc:
            raise JobNotStored(f'asyncjob: job {job.id} ({job.func_name}) could not be '
                               f'stored in the database, nothing was queued: {exc}') from exc

    def _execute_alone(self, stmt: Any, row: dict[str, Any]) -> None:
        with self.engines.writing() as conn:
            conn.execute(stmt, row)

    def _app_session(self) -> Any:
        """The application's session (``DBSession``) if it is on the jobs database."""
        dbsession = (self.queue.conf or {}).get('DBSession')
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

    def _insert_after_commit(self, committed: bool, job: Job, stmt: Any,
                             row: dict[str, Any]) -> None:
        # asyncjob.backend.url is another database: the job is inserted once the
        # request's transaction has committed (never for one that aborted).
        if not committed:
            return
        try:
            retry_disconnect(lambda: self._execute_alone(stmt, row))
        except SQLAlchemyError:
            log.exception('asyncjob %s (%s): the request committed but the job could not '
                          'be stored: it will not run', job.id, job.func_name)
            return
        self.wake.set()

    # -- cancelling ----------------------------------------------------------------

    def cancel(self, jobid: str) -> bool:
        """A queued job: cancelled at once, atomically (it will not run). A running
        one, in any process: flagged, ``asyncjob_cancelled()`` turns true in the job
        within a second. False if it is neither."""
        if not isinstance(jobid, str) or len(jobid) > 32:
            return False
        now = time.time()
        with self.engines.writing() as conn:
            if transitions.cancel_queued(conn, jobid, now, 'cancelled before it started'):
                return True
            flagged = transitions.request_cancel(conn, jobid)
        if flagged:
            run = self.runs.get(jobid)
            if run is not None:
                _flag_cancelled(run.job)
        return flagged

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """In the web process: run jobs on ``asyncjob.workers`` threads, unless
        ``in_process`` is false."""
        if self.in_process:
            self._start_runner(self.queue.workers, burst=False, queues=None)

    def work(self, *, threads: int = 1, burst: bool = False,
             queues: list[str] | None = None) -> None:
        """The worker process's loop: claim and run jobs of ``queues`` (default: this
        backend's queue) on ``threads`` threads until :meth:`stop` (or, with ``burst``,
        until no job is due and none runs)."""
        runner = self._start_runner(threads, burst, queues, blocking=True)
        try:
            runner.run()
        finally:
            if burst:
                self._stop_services()

    def _start_runner(self, threads: int, burst: bool, queues: list[str] | None,
                      blocking: bool = False) -> Runner:
        if self._started:
            raise RuntimeError('this sqlalchemy backend already runs jobs in this process')
        self._started = True
        names = list(queues or [self.queue_name])
        self._runner = Runner(functools.partial(self._claim, names), self._execute,
                              functools.partial(next_run_at, self.engines, names), self.wake,
                              threads=threads, poll_interval=self.poll_interval, burst=burst)
        try:  # registered before the first claim, so no rescuer takes its jobs
            beat(self.engines, self.worker_id, time.time())
        except SQLAlchemyError as exc:
            log.warning('asyncjob: cannot reach the jobs database yet: %s', exc)
        self._monitor = Monitor(self._duties())
        self._monitor.start()
        if self.listens:
            self._listener = Listener(self.engines.write, self.wake)
            self._listener.start()
        if not blocking:
            self._runner.start()
        return self._runner

    def _duties(self) -> list[Duty]:
        duties = [
            Duty('heartbeat', self.heartbeat_interval,
                 lambda: beat(self.engines, self.worker_id, time.time())),
            Duty('cancel check', 0.5, self._deliver_cancels),
            Duty('rescue of dead workers\' jobs', self.rescue_interval, self._rescue),
        ]
        if self.retention > 0:
            duties.append(Duty('retention pruning', self.prune_interval, lambda: prune(
                self.engines, self.worker_id, self.retention, time.time())))
        return duties

    def _claim(self, queues: list[str], limit: int) -> list[dict[str, Any]]:
        return claim(self.engines, self.worker_id, queues, time.time(), limit)

    def _execute(self, row: dict[str, Any]) -> None:
        """Run one claimed row through the queue's execution path (never raises)."""
        from ...worker import run_job
        job = self._job_of(row)
        if job is None:
            return
        self.runs[job.id] = Run(row['attempt'], job)
        try:
            _with_config(self.queue, lambda: run_job(self.queue, job))
        finally:
            self.runs.pop(job.id, None)
            self.requeued.discard(job.id)

    def _job_of(self, row: dict[str, Any]) -> Job | None:
        """The :class:`Job` of a claimed row; a row that cannot be run (callable gone,
        bad JSON) is failed at once."""
        try:
            func = codec.import_callable(row['func'])
            job = Job(self._completing(func, row['id'], row['attempt']),
                      tuple(codec.loads(row['args'])), codec.loads(row['kwargs']),
                      jobid=row['id'], retry=codec.load_retry(row['retry']))
        except Exception as exc:
            log.error('asyncjob %s (%s) cannot run: %s', row['id'], row['name'], exc)
            error = JobError.from_exception(exc).as_record()
            with self.engines.writing() as conn:
                transitions.finish_run(conn, row['id'], self.worker_id, row['attempt'], {
                    'state': 'failed', 'finished_at': time.time(), 'error': codec.dumps(error),
                    'detail': 'the worker could not load the job'})
            return None
        job.name = row['name']
        job.enqueued_at = row['enqueued_at']
        job.attempt = row['attempt'] - 1  # run_job counts this run
        return job

    def _completing(self, func: Callable[..., Any], jobid: str,
                    attempt: int) -> Callable[..., Any]:
        """``func``, then, if it wrote through the application's session to the jobs
        database, its ``succeeded`` row written in that same transaction: both commit
        or neither (River's ``JobCompleteTx``, here the default)."""
        @functools.wraps(func)
        def run_then_complete(*args: Any, **kwargs: Any) -> Any:
            result = func(*args, **kwargs)
            self._complete_in_transaction(jobid, attempt, result)
            return result
        return run_then_complete

    def _complete_in_transaction(self, jobid: str, attempt: int, result: Any) -> None:
        dbsession: Any = (self.queue.conf or {}).get('DBSession')
        registry = getattr(dbsession, 'registry', None)
        if registry is None or not registry.has() or not dbsession().in_transaction():
            return  # the job did not use the session: completed after, on its own
        session = self._app_session()
        if session is None:
            return
        try:
            encoded = None if result is None else codec.dumps(result)
        except TypeError:
            return  # completed after, where the queue keeps its repr()
        values = {'state': 'succeeded', 'finished_at': time.time(), 'result': encoded}
        pending = self.progress.take(jobid)
        if pending is not None:
            values.update(progress=pending['progress'], data=pending['data'])
        from zope.sqlalchemy import mark_changed
        done = session.execute(transitions.of_run(jobid, self.worker_id, attempt)
                               .values(values)).rowcount
        mark_changed(session)
        if not done:
            raise LeaseLost(f'job {jobid} was rescued from this worker while it ran (its '
                            f'heartbeat was late): its work is rolled back')

    def _write_progress(self, updates: list[dict[str, Any]]) -> None:
        with self.engines.writing() as conn:
            transitions.set_progress(conn, updates)

    def _deliver_cancels(self) -> None:
        """Hand cancel requests made in any process to the jobs running here."""
        if not self.runs:
            return
        from sqlalchemy import select
        with self.engines.read.connect() as conn:
            flagged = conn.execute(select(jobs.c.id).where(
                jobs.c.worker_id == self.worker_id, jobs.c.state == 'running',
                jobs.c.cancel_requested.is_(True))).scalars().all()
        for jobid in flagged:
            run = self.runs.get(jobid)
            if run is not None:
                _flag_cancelled(run.job)

    def _rescue(self) -> None:
        rescued = rescue(self.engines, self.lease_timeout, time.time(), self._after_death)
        for jobid in rescued:
            log.warning('asyncjob %s: its worker died; rescued', jobid)
        if rescued:
            self.wake.set()

    def _after_death(self, row: dict[str, Any]) -> dict[str, Any]:
        """What becomes of a job whose worker died: retried if its policy allows
        (the attempt that died counts), else failed with ``WorkerDied``."""
        why = f'worker {row["worker_id"]} died while running the job (attempt {row["attempt"]})'
        error = codec.dumps(JobError('WorkerDied', why).as_record())
        try:
            policy = policy_for(codec.load_retry(row['retry']),
                                codec.import_callable(row['func']))
        except Exception:
            policy = None
        now = time.time()
        if policy is not None and policy.should_retry(WorkerDied(why), row['attempt']):
            delay = policy.delay(row['attempt'])
            return {'state': 'queued', 'run_at': now + delay, 'error': error,
                    'detail': f'{why}; retrying in {delay:.3g} s'}
        return {'state': 'failed', 'finished_at': now, 'error': error, 'detail': why}

    # -- stopping, forking ---------------------------------------------------------

    def stop(self, timeout: float) -> list[str]:
        """Claim no more; running jobs get ``timeout`` seconds to finish. Queued jobs
        stay in the database (nothing is lost, so nothing is reported); a job still
        running at the deadline is handed back to the queue to run again."""
        runner = self._runner
        if runner is not None and not runner.stop(timeout):
            for jobid, run in list(self.runs.items()):
                self._hand_back(jobid, run)
        self._stop_services()
        return []

    def _hand_back(self, jobid: str, run: Run) -> None:
        log.warning('asyncjob %s (%s) still running at stop: queued again, to run in '
                    'another worker', jobid, run.job.func_name)
        with self.engines.writing() as conn:
            transitions.finish_run(conn, jobid, self.worker_id, run.attempt, {
                'state': 'queued', 'run_at': time.time(),
                'detail': 'interrupted by a shutdown: queued again'})

    def _stop_services(self) -> None:
        self.closed = True
        for service in (self._monitor, self._listener):
            if service is not None:
                service.stop()
        self.progress.stop()
        if self._started:
            try:
                retire(self.engines, self.worker_id)
            except DBAPIError as exc:
                log.warning('asyncjob: could not unregister worker %s: %s', self.worker_id, exc)

    def after_fork(self) -> None:
        """In a forked child: new pools (never share the parent's connections), a new
        worker id, no threads of the parent; start again if the parent had started."""
        self.engines.dispose(close=False)
        self.worker_id = new_worker_id()
        self.runs = {}
        self.requeued = set()
        self.wake = threading.Event()
        self.progress.after_fork()
        self._same_db = {}
        was_started, self._started = self._started, False
        self._runner = self._monitor = self._listener = None
        if was_started and not self.queue.stopped and self.in_process:
            self.start()


def _flag_cancelled(job: Job) -> None:
    """Tell the running job it was asked to stop (``asyncjob_cancelled()``)."""
    for name in ('cancel_requested', 'cancelled'):
        if hasattr(type(job), name):
            setattr(job, name, True)


def _with_config(q: JobQueue, call: Callable[[], None]) -> None:
    """``call()`` with the application's configuration as ``tg.config``."""
    if q.conf is None:
        call()
        return
    from tg.request_local import config as tg_config
    tg_config.push_thread_config(q.conf)
    try:
        call()
    finally:
        tg_config.pop_thread_config()
