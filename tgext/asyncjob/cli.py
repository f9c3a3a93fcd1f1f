"""The ``python -m tgext.asyncjob`` command line, and the ``gearbox asyncjob-worker`` command.

::

    python -m tgext.asyncjob worker production.ini [--threads N] [--burst] [--queue NAME]
    python -m tgext.asyncjob worker --app myapp.wsgi:make_app
    gearbox asyncjob-worker -c production.ini
    python -m tgext.asyncjob jobs -c production.ini list|show|cancel|retry|delete|purge|health
    gearbox asyncjob-jobs -c production.ini list --state failed

``jobs`` operates on the application's jobs without running any (see :mod:`.jobscli`).
``worker`` loads the TurboGears application (its .ini with PasteDeploy, as ``gearbox
serve`` does, logging included; or by calling ``--app module:factory``), keeps that
application's queue from running jobs in this process's own threads
(``asyncjob.backend.in_process = false``), then runs the queue's backend worker loop
(``queue.backend.work()``) until SIGTERM or SIGINT asks it to stop: running jobs then
get ``asyncjob.stop_timeout`` seconds to finish; a second signal exits at once. The
same command serves every backend that has worker processes (``sqlalchemy``, ``rq``);
the ``threads`` backend has none, it is refused.

Subcommands are :data:`COMMANDS` entries: each adds its arguments to its own
subparser and runs the parsed options.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import logging.config
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .jobscli import add_jobs_arguments, run_jobs

log = logging.getLogger('tgext.asyncjob')

#: Settings the worker command forces on every application it loads, per backend:
#: its queue must not claim jobs in threads of its own besides the ``work()`` loop.
WORKER_OVERRIDES = {'sqlalchemy': {'asyncjob.backend.in_process': 'false'}}

THREADS_REFUSED = ('asyncjob.backend = threads: its jobs live in the memory of the web '
                   'process and run only in its threads, so a worker process has nothing to '
                   'run. Set asyncjob.backend = sqlalchemy (or rq) to run jobs in worker '
                   'processes.')


class CommandError(SystemExit):
    """A mistake in the command line or the application's configuration: the message is
    printed and the command exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- loading the application -------------------------------------------------------

def import_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``module:attribute`` (``attribute`` may be dotted)."""
    module_name, _, attr = spec.partition(':')
    if not module_name or not attr:
        raise CommandError(f'--app wants module:factory, got {spec!r}')
    target: Any = importlib.import_module(module_name)
    for part in attr.split('.'):
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f'--app {spec}: {target!r} is not callable')
    return target


def configure_logging(ini_path: str | None) -> None:
    """Logging from the .ini's ``[loggers]`` sections, as ``gearbox serve`` does; without
    them (or without an .ini) INFO and above on stderr, so a worker is never silent."""
    if ini_path is not None:
        import configparser
        parser = configparser.ConfigParser()
        parser.read([ini_path])
        if parser.has_section('loggers'):
            logging.config.fileConfig(
                ini_path, {'__file__': ini_path, 'here': os.path.dirname(ini_path)},
                disable_existing_loggers=False)
            return
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format='%(asctime)s %(levelname)s [%(name)s] %(message)s')


class _ConfigWatch:
    """Sees the configuration of every TurboGears application built while it is active
    (TG's ``initialized_config`` hook, before the app's queue starts) and applies the
    worker's overrides to it."""

    def __init__(self) -> None:
        self.configs: list[Any] = []

    def __call__(self, configurator: Any, conf: Any) -> None:
        self.configs.append(conf)
        conf.update(WORKER_OVERRIDES.get(str(conf.get('asyncjob.backend')), {}))

    def __enter__(self) -> _ConfigWatch:
        import tg
        tg.hooks.register('initialized_config', self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        import tg
        tg.hooks.disconnect('initialized_config', self)


def load_app(config: str | None = None, app: str | None = None,
             app_name: str | None = None) -> list[Any]:
    """Load the application from an .ini (``file.ini`` or ``file.ini#section``; or the
    section ``app_name``) or by calling the ``module:factory`` ``app``; return the
    TurboGears configurations of the applications it built.

    The application's queue starts as it loads, with :data:`WORKER_OVERRIDES` applied.
    """
    if (config is None) == (app is None):
        raise CommandError('give the application: an .ini file, or --app module:factory')
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as gearbox does: the project is importable
    with _ConfigWatch() as watch:
        if app is not None:
            configure_logging(None)
            import_factory(app)()
        else:
            assert config is not None
            path, _, section = config.partition('#')
            path = os.path.abspath(path)
            if not os.path.exists(path):
                raise CommandError(f'no such configuration file: {path}')
            configure_logging(path)
            from paste.deploy import loadapp
            loadapp(f'config:{path}', name=app_name or section or None)
    return watch.configs


def find_queue(configs: Sequence[Any]) -> Any:
    """The one running asyncjob queue of the loaded application(s); ``CommandError``
    when there is none or several."""
    queues = []
    for conf in configs:
        queue = getattr(conf.get('tg.app_globals'), 'asyncjob_queue', None)
        if queue is not None and not queue.stopped and queue not in queues:
            queues.append(queue)
    if not queues:
        raise CommandError('the application has no running asyncjob queue: plug '
                           "tgext.asyncjob (plug(base_config, 'tgext.asyncjob')) and keep "
                           'asyncjob.enabled true')
    if len(queues) > 1:
        raise CommandError(f'the configuration loads {len(queues)} applications with an '
                           'asyncjob queue: start one worker command per application')
    return queues[0]


# -- running the worker ------------------------------------------------------------

def backend_name(backend: Any) -> str:
    """A short name for messages: ``sqlalchemy``, ``rq``, ``threads``, or the class name
    (looked up along the class's bases, which an adapted backend keeps)."""
    for cls in type(backend).__mro__:
        if cls.__module__ == 'tgext.asyncjob.worker':
            return 'threads'
        for name in ('sqlalchemy', 'rq'):
            if cls.__module__.startswith(f'tgext.asyncjob.backends.{name}'):
                return name
    return type(backend).__name__


class GracefulStop:
    """SIGTERM/SIGINT handlers for the worker loop: the first signal stops the queue
    (running jobs get ``stop_timeout``) from a thread of its own, since a signal handler
    must not block the loop it interrupts; the second exits at once (jobs still running
    are then rescued by another worker when their lease expires).

    Once the queue is stopped, jobs still running were handed back by the backend and
    the process has nothing left to do: if the worker loop has not returned
    ``LOOP_GRACE`` seconds later (a job that ignores the stop keeps it waiting), the
    process exits anyway."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    LOOP_GRACE = 5.0

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.thread: threading.Thread | None = None
        self.loop_done = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (main thread only, as Python requires)."""
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.thread is not None:
            log.warning('tgext.asyncjob worker: %s again, exiting now', name)
            _exit(128 + signum)
        log.info('tgext.asyncjob worker: %s, stopping: running jobs get up to %ss',
                 name, self.queue.stop_timeout)
        self.thread = threading.Thread(target=self._stop, name='asyncjob-stop', daemon=True)
        self.thread.start()

    def _stop(self) -> None:
        self.queue.stop()
        if not self.loop_done.wait(self.LOOP_GRACE):
            log.warning('tgext.asyncjob worker (pid %d): the worker loop did not end %ss '
                        'after the stop; exiting', os.getpid(), self.LOOP_GRACE)
            _exit(0)

    def join(self) -> None:
        """The worker loop returned: wait for a stop a signal began."""
        self.loop_done.set()
        if self.thread is not None:
            self.thread.join()


def _exit(status: int) -> None:
    logging.shutdown()  # what was logged reaches its handlers
    os._exit(status)


def run_worker(options: argparse.Namespace) -> int:
    """Load the application and run its backend's worker loop until stopped (or, with
    ``--burst``, until no job is left); return the exit status."""
    if options.threads < 1:
        raise CommandError(f'--threads must be at least 1, got {options.threads}')
    config = None if options.app else options.config
    queue = find_queue(load_app(config, options.app, options.app_name))
    name = backend_name(queue.backend)
    if name == 'threads' or not getattr(queue.backend, 'spans_processes', True):
        queue.stop()
        raise CommandError(THREADS_REFUSED if name == 'threads' else
                           f'the {name} backend runs jobs only in the process that queued '
                           'them: a worker process has nothing to run')
    stopper = GracefulStop(queue)
    stopper.install()
    log.info('tgext.asyncjob worker (pid %d, %s backend): %d thread(s), queues %s%s',
             os.getpid(), name, options.threads,
             ', '.join(options.queues) or "the application's",
             ', burst' if options.burst else '')
    try:
        _work(queue.backend, threads=options.threads, burst=options.burst,
              queues=options.queues or None)
    finally:
        stopper.join()
        stopper.restore()
        if not queue.stopped:
            queue.stop()
    log.info('tgext.asyncjob worker (pid %d) stopped', os.getpid())
    return 0


def _work(backend: Any, *, threads: int, burst: bool, queues: list[str] | None) -> None:
    # A backend's work() raises NotImplementedError when it has no worker processes,
    # ValueError for options it cannot honour (e.g. rq and --threads 2): both are the
    # user's to fix, not tracebacks.
    try:
        backend.work(threads=threads, burst=burst, queues=queues)
    except NotImplementedError as exc:
        raise CommandError(str(exc) or f'the {backend_name(backend)} backend cannot run '
                           'in a worker process') from None
    except ValueError as exc:
        log.debug('work() refused its options', exc_info=True)
        raise CommandError(str(exc)) from None


# -- the command line --------------------------------------------------------------

def add_worker_arguments(parser: argparse.ArgumentParser, config_option: bool = False) -> None:
    """The ``worker`` options; ``config_option`` takes the .ini as ``-c/--config`` (as
    gearbox commands do) instead of a positional argument."""
    help_ini = 'the application .ini file (file.ini or file.ini#section)'
    if config_option:
        parser.add_argument('-c', '--config', dest='config', metavar='INI',
                            default='development.ini', help=help_ini)
    else:
        parser.add_argument('config', nargs='?', metavar='INI', help=help_ini)
    parser.add_argument('--app', metavar='MODULE:FACTORY',
                        help='load the application by calling this factory instead')
    parser.add_argument('-n', '--app-name', dest='app_name', metavar='NAME',
                        help='application section of the .ini file (default main)')
    parser.add_argument('--threads', type=int, default=1, metavar='N',
                        help='jobs run at the same time in this process (default 1)')
    parser.add_argument('--burst', action='store_true',
                        help='exit when no job is left to run')
    parser.add_argument('--queue', dest='queues', action='append', default=[],
                        metavar='NAME', help='run the jobs of this queue (repeatable; default '
                        "the application's: asyncjob.backend.queue_name)")


@dataclass(frozen=True)
class Subcommand:
    """One ``python -m tgext.asyncjob`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: The subcommands, by name: a new one is one entry here.
COMMANDS: dict[str, Subcommand] = {
    'worker': Subcommand('run jobs in this process (sqlalchemy and rq backends)',
                         add_worker_arguments, run_worker),
    'jobs': Subcommand('list, show, cancel, retry, delete and purge jobs; health check',
                       add_jobs_arguments, run_jobs),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m tgext.asyncjob`` parser, one subparser per :data:`COMMANDS` entry."""
    parser = argparse.ArgumentParser(prog='python -m tgext.asyncjob',
                                     description='tgext.asyncjob command line')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tgext.asyncjob``: parse ``argv`` and run the subcommand; a
    :class:`CommandError` is printed with the usage and exits with status 2."""
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        return int(options.run(options))
    except CommandError as exc:
        parser.exit(2, f'{parser.prog} {options.command}: error: {exc.message}\n')


try:
    from gearbox.command import Command as _GearboxCommand
except ImportError:  # pragma: no cover - gearbox ships with TurboGears
    _GearboxCommand = None

if _GearboxCommand is not None:
    class WorkerCommand(_GearboxCommand):
        """Run the application's asyncjob jobs in this process (sqlalchemy and rq
        backends): ``gearbox asyncjob-worker -c production.ini``."""

        def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
            parser = super().get_parser(prog_name)
            add_worker_arguments(parser, config_option=True)
            return parser

        def take_action(self, parsed_args: argparse.Namespace) -> int:
            try:
                return run_worker(parsed_args)
            except CommandError as exc:
                sys.stderr.write(f'gearbox asyncjob-worker: error: {exc.message}\n')
                return 2
