"""The TurboGears-aware RQ worker for ``asyncjob.backend = rq``.

::

    python -m tgext.asyncjob.rqworker production.ini [--burst] [--simple] [--name W1]
    python -m tgext.asyncjob.rqworker --app myapp.wsgi:make_app
    gearbox rqworker -c production.ini          # the same, as a gearbox command
    python -m tgext.asyncjob worker production.ini   # every backend's command

All of them run the backend's ``work()`` (:meth:`RQBackend.work
<tgext.asyncjob.backends.rq.RQBackend.work>`), which runs :func:`work` here. It loads the application from its ``.ini`` file (PasteDeploy, as ``gearbox serve``
does; logging too if the file configures it), or by calling ``--app
module:factory``. Loading starts the app's asyncjob queue, whose ``rq`` backend says
which Redis and RQ queue to listen on (``asyncjob.backend.redis_url`` and
``asyncjob.backend.queue_name``). Each job then runs with the app's configuration
as ``tg.config``, in its own transaction and SQLAlchemy session (commit if it
returns, abort if it raises), and its progress and final state go to the shared
Redis tracker the web process reads.

By default each job runs in a forked child (RQ's ``Worker``): a crash, a leak or a
hard kill ends the child, not the worker, and the job is retried or recorded as
failed (``WorkerDied``). ``--simple`` runs jobs in the worker process itself (RQ's
``SimpleWorker``): faster for short jobs, the way the in-process thread backend runs
them. Both heartbeat each running job every ``asyncjob.backend.heartbeat_interval``
seconds, with a TTL of ``asyncjob.backend.abandoned_after``: a worker killed with
its job is found by RQ's abandoned-job detection (see the rq backend).

Each worker also runs RQ's scheduler (RQ's ``with_scheduler``; one of the workers of
a queue holds its lock at a time): it moves delayed jobs and retries to the queue
when they are due, checking every second. ``--no-scheduler`` turns it off, for
workers next to others that run it; without any, delayed jobs and retries never run.
"""
from __future__ import annotations

import argparse
import configparser
import importlib
import logging
import logging.config
import os
import sys
import threading
from typing import Any, Sequence

from rq import Queue, SimpleWorker, Worker

from .backends.rq import RQBackend, backend as rq_backend, job_died
from .backends.rq.priorities import queue_names
from .backends.rq.runs import BACKENDS

log = logging.getLogger('tgext.asyncjob')


def load_application(config: str | None = None, app: str | None = None,
                     name: str | None = None) -> Any:
    """Load the TurboGears application (which starts its asyncjob queue) and return it.

    ``config`` is an .ini path (``file.ini#section`` or ``name`` picks the app
    section, default ``main``), loaded with PasteDeploy; ``app`` is a
    ``module:factory`` called with no arguments.
    """
    if (config is None) == (app is None):
        raise SystemExit('give the application: an .ini file, or --app module:factory')
    if app is not None:
        module, _, attr = app.partition(':')
        if not attr:
            raise SystemExit(f'--app wants module:factory, got {app!r}')
        factory: Any = importlib.import_module(module)
        for part in attr.split('.'):
            factory = getattr(factory, part)
        return factory()
    assert config is not None  # the first check: exactly one of config and app
    from paste.deploy import loadapp
    path, _, section = config.partition('#')
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise SystemExit(f'no such configuration file: {path}')
    setup_logging(path)
    return loadapp(f'config:{path}', name=name or section or None)


def setup_logging(path: str) -> None:
    """Configure logging from the .ini file's ``[loggers]`` sections, if it has them."""
    parser = configparser.ConfigParser()
    parser.read([path])
    if parser.has_section('loggers'):
        logging.config.fileConfig(path, {'__file__': path, 'here': os.path.dirname(path)},
                                  disable_existing_loggers=False)


def rq_backends() -> list[RQBackend]:
    """The rq backends of the applications loaded in this process."""
    return [b for b in list(BACKENDS.values()) if not b.runtime.stopping]


def _engines(backends: Sequence[RQBackend]) -> list[Any]:
    engines = []
    for backend in backends:
        conf = backend.runtime.conf or {}
        app_globals = conf.get('tg.app_globals')
        engine = getattr(app_globals, 'sa_engine', None)
        if engine is not None:
            engines.append(engine)
    return engines


#: Seconds between a worker's RQ maintenance runs (RQ: 600), where an idle worker also
#: takes over RQ's scheduler if the worker that ran it died: its lock expires after 61 s.
MAINTENANCE_INTERVAL = 60
#: An idle worker wakes every WORKER_TTL - 15 s (RQ: 420), so maintenance is not
#: held up behind a blocking wait for jobs of up to 405 s.
WORKER_TTL = 60


class _Heartbeats:
    """What both worker classes share: the backend's heartbeat settings."""

    tg_backends: Sequence[RQBackend] = ()
    tg_abandoned_after: int = 45  # set by make_worker

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        # RQ allows a running job 60 s more than the heartbeat interval before its
        # cleanup calls it abandoned; the backend's ``abandoned_after`` is the bound
        # docs/backends/rq.rst documents.
        return self.tg_abandoned_after


#: Seconds a stopping worker waits for its pubsub thread (RQ's command channel) to end
#: before it closes the pubsub under it; the thread is a daemon either way.
PUBSUB_STOP_TIMEOUT = 5.0


class _PubSubShutdown:
    """Both worker classes: an end of RQ's command channel that cannot park the exit.

    RQ's ``unsubscribe()`` sends UNSUBSCRIBE, then stops the pubsub thread that
    redis-py's ``run_in_thread(sleep_time=60)`` runs. The thread reads the reply; if it
    handles it before the stop flag is cleared, its loop turns once more and, with no
    subscription left, ``PubSub.get_message`` waits up to ``sleep_time`` (60 s) for a
    subscription that never comes. redis-py's ``PubSubWorkerThread.stop()`` joins the
    thread (without a timeout), so the worker, ``--burst`` or stopped by a signal, hung
    up to a minute after RQ's "unsubscribing from channel" line before it exited.

    Here the thread's stop flag is cleared *before* UNSUBSCRIBE is sent: the reply is
    then the last thing the thread reads (only it clears the subscription, as it
    handles that reply), it sees the flag and ends; the join is bounded all the same.
    """

    log: logging.Logger
    pubsub: Any
    pubsub_thread: Any
    name: str
    pubsub_channel_name: str

    def unsubscribe(self) -> None:
        thread, pubsub = self.pubsub_thread, self.pubsub
        if not thread:
            return
        self.log.info('Worker %s: unsubscribing from channel %s', self.name,
                      self.pubsub_channel_name)
        running = getattr(thread, '_running', None)  # redis-py's PubSubWorkerThread flag
        if running is not None:
            running.clear()
        pubsub.unsubscribe()
        if running is None:
            thread.stop()  # a redis-py without the flag: its own stop, after the send
        thread.join(PUBSUB_STOP_TIMEOUT)
        if thread.is_alive():
            self.log.warning('Worker %s: the pubsub thread did not end within %ss; '
                             'closing its connection', self.name, PUBSUB_STOP_TIMEOUT)
        pubsub.close()


class TGWorker(_PubSubShutdown, _Heartbeats, Worker):
    """RQ's forking worker; the child closes its own database connections at the end
    and never uses the ones it inherited."""

    tg_parent_pid: int  # set by make_worker

    def fork_work_horse(self, job: Any, queue: Queue) -> None:
        rq_backend.forking_work_horse = True  # read by the backends' after_fork in the child
        try:
            super().fork_work_horse(job, queue)
        finally:
            rq_backend.forking_work_horse = False

    def main_work_horse(self, job: Any, queue: Queue) -> None:
        for engine in _engines(self.tg_backends):
            engine.dispose(close=False)  # inherited sockets belong to the parent
        super().main_work_horse(job, queue)

    def perform_job(self, job: Any, queue: Queue, execution: Any) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        finally:
            if os.getpid() != self.tg_parent_pid:
                for engine in _engines(self.tg_backends):
                    engine.dispose()


class TGSimpleWorker(_PubSubShutdown, _Heartbeats, SimpleWorker):
    """RQ's non-forking worker: jobs run in the worker process, one after the other.

    RQ's ``SimpleWorker`` sends no heartbeat while a job runs (the job holds its only
    thread), so a job longer than its heartbeat TTL would look abandoned; a thread
    sends them here, as the forking worker's main process does for its horse.
    """

    def execute_job(self, job: Any, queue: Queue) -> None:
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, done), daemon=True,
                                name='asyncjob-rq-heartbeat')
        beat.start()
        try:
            super().execute_job(job, queue)
        finally:
            done.set()
            beat.join()

    def _beat(self, job: Any, done: threading.Event) -> None:
        while not done.wait(self.job_monitoring_interval):
            execution = self.execution
            if execution is None:
                continue
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:  # Redis unreachable: the next beat tries again
                log.warning('asyncjob rq: heartbeat for job %s failed', job.id, exc_info=True)


def _horse_killed(job: Any, retpid: Any, ret_val: Any, rusage: Any) -> None:
    job_died(job, f'the work horse ended unexpectedly (wait status {ret_val})')


def make_worker(backends: Sequence[RQBackend] | None = None, *, queues: Sequence[str] = (),
                simple: bool = False, name: str | None = None) -> Worker | SimpleWorker:
    """An RQ worker listening on the loaded applications' rq queues (or on ``queues``).

    Raises ``SystemExit`` with an explanation when no application uses the rq backend.
    """
    backends = list(backends if backends is not None else rq_backends())
    if not backends:
        raise SystemExit('the application has no asyncjob queue with the rq backend: set '
                         'asyncjob.backend = rq (and asyncjob.backend.redis_url, '
                         'asyncjob.backend.queue_name) in its configuration')
    connection = backends[0].connection
    kwargs = connection.connection_pool.connection_kwargs
    for other in backends[1:]:
        if other.connection.connection_pool.connection_kwargs != kwargs:
            raise SystemExit('the loaded applications use different Redis servers: '
                             'start one worker command per application')
    names = list(queues) or list(dict.fromkeys(
        name for b in backends for name in queue_names(b.queue_name)))  # highest first
    rq_queues = [Queue(n, connection=connection) for n in names]
    heartbeat = min(b.heartbeat_interval for b in backends)
    worker: TGWorker | TGSimpleWorker
    if simple:
        worker = TGSimpleWorker(rq_queues, connection=connection, name=name,
                                job_monitoring_interval=heartbeat, worker_ttl=WORKER_TTL,
                                maintenance_interval=MAINTENANCE_INTERVAL)
    else:
        worker = TGWorker(rq_queues, connection=connection, name=name,
                          job_monitoring_interval=heartbeat, worker_ttl=WORKER_TTL,
                          maintenance_interval=MAINTENANCE_INTERVAL,
                          work_horse_killed_handler=_horse_killed)
        worker.tg_parent_pid = os.getpid()
    worker.tg_backends = backends
    worker.tg_abandoned_after = min(b.abandoned_after for b in backends)
    return worker


def add_arguments(parser: argparse.ArgumentParser, config_option: bool = False) -> None:
    """The command's options (``config_option``: ``-c/--config`` instead of a positional
    argument, as gearbox commands take it)."""
    if config_option:
        parser.add_argument('-c', '--config', dest='config', metavar='INI',
                            help='application .ini file (file.ini or file.ini#section)')
    else:
        parser.add_argument('config', nargs='?', metavar='INI',
                            help='application .ini file (file.ini or file.ini#section)')
    parser.add_argument('--app', metavar='MODULE:FACTORY',
                        help='load the application by calling this factory instead')
    parser.add_argument('-n', '--app-name', dest='app_name', metavar='NAME',
                        help='application section of the .ini file (default main)')
    parser.add_argument('-q', '--queue', dest='queues', action='append', default=[],
                        metavar='NAME', help='RQ queue to listen on (repeatable, taken in '
                        'this order; default asyncjob.backend.queue_name and its priority '
                        'queues: NAME:high, NAME, NAME:low)')
    parser.add_argument('-b', '--burst', action='store_true',
                        help='run the queued jobs, then exit')
    parser.add_argument('--simple', action='store_true',
                        help='run jobs in the worker process instead of a forked child each')
    parser.add_argument('--name', help='worker name (default: RQ makes one)')
    parser.add_argument('--no-scheduler', dest='scheduler', action='store_false',
                        help="do not run RQ's scheduler, which queues delayed jobs and "
                        'retries when due (another worker of the queue must)')
    parser.add_argument('--max-jobs', type=int, default=None, help='exit after this many jobs')
    parser.add_argument('--logging-level', default='INFO', help='RQ log level (default INFO)')


def run(options: argparse.Namespace) -> int:
    """Load the application and run the worker until it is stopped (or the queue is
    empty with ``--burst``). Returns the exit status."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as gearbox: the project's package is importable
    config = None if options.app else options.config
    load_application(config, options.app, options.app_name)
    backends = rq_backends()
    rq_options: dict[str, Any] = dict(
        simple=options.simple, name=options.name, with_scheduler=options.scheduler,
        max_jobs=options.max_jobs, logging_level=options.logging_level)
    if len(backends) == 1:  # the application's backend runs its worker, as for any backend
        backends[0].work(burst=options.burst, queues=options.queues, **rq_options)
    else:
        work(backends, burst=options.burst, queues=options.queues, **rq_options)
    return 0


def work(backends: Sequence[RQBackend], *, burst: bool = False, queues: Sequence[str] = (),
         simple: bool = False, name: str | None = None, with_scheduler: bool = True,
         max_jobs: int | None = None, logging_level: str = 'INFO') -> None:
    """Run a worker (:func:`make_worker`) for ``backends`` in this process until it is
    stopped, or until the queues are empty with ``burst``
    (:meth:`~tgext.asyncjob.backends.rq.RQBackend.work` calls this)."""
    worker = make_worker(backends, queues=queues, simple=simple, name=name)
    log.info('tgext.asyncjob rq worker %s listening on %s', worker.name,
             ', '.join(q.name for q in worker.queues))
    worker.work(burst=burst, max_jobs=max_jobs, logging_level=logging_level,
                with_scheduler=with_scheduler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tgext.asyncjob.rqworker``: see the module's documentation."""
    parser = argparse.ArgumentParser(prog='python -m tgext.asyncjob.rqworker',
                                     description=__doc__.split('\n\n')[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


try:
    from gearbox.command import Command as _GearboxCommand
except ImportError:  # pragma: no cover - gearbox ships with TurboGears
    _GearboxCommand = None

if _GearboxCommand is not None:
    class RQWorkerCommand(_GearboxCommand):
        """Run an RQ worker for the application's asyncjob jobs (asyncjob.backend = rq)."""

        def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
            parser = super().get_parser(prog_name)
            add_arguments(parser, config_option=True)
            parser.set_defaults(config='development.ini')
            return parser

        def take_action(self, parsed_args: argparse.Namespace) -> int:
            return run(parsed_args)


if __name__ == '__main__':
    sys.exit(main())
