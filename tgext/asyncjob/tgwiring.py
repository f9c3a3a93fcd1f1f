"""TurboGears wiring: starting a queue for an application.

``plug(base_config, 'tgext.asyncjob')`` registers :class:`AsyncJobConfigurationComponent`
on that configurator, so each application it builds starts its own queue when its
environment is loaded (TG's milestones are process-wide and fire once; a component's
actions run for every application). ``start_async_worker`` is the 0.3 entry point.
Settings are defined in :mod:`.settings`, the queue is found again by :mod:`.locate`.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import types
from typing import Any, Iterator, Mapping

from tg.configurator.base import ConfigurationComponent, EnvironmentLoadedConfigurationAction

from . import database, locate, settings, startup
from .errors import AlreadyStarted, AsyncJobError
from .locate import current_queue
from .queue import JobQueue, stop_all  # noqa: F401 - stop_all: public here since 0.3

__all__ = ['start_async_worker', 'current_queue', 'plugme', 'stop_all',
           'AsyncJobConfigurationComponent', 'SCRIPT_GLOBALS']

log = logging.getLogger('tgext.asyncjob')

#: Where ``start_async_worker()`` keeps the queue when no application is configured.
SCRIPT_GLOBALS = types.SimpleNamespace()

#: Non-empty while a command operates on an application's jobs (``python -m
#: tgext.asyncjob jobs``): its queue is built, to read and change job records, but runs
#: nothing in that process (no worker threads, no periodic jobs). See :func:`operating_only`.
_OPERATING_ONLY: list[str] = []


@contextlib.contextmanager
def operating_only(command: str) -> Iterator[None]:
    """While active, applications that start build their queue without starting its
    backend (its worker threads) or their periodic jobs: ``command`` operates on jobs,
    it does not run them."""
    _OPERATING_ONLY.append(command)
    try:
        yield
    finally:
        _OPERATING_ONLY.remove(command)


#: ``plug()`` options that are not settings.
PLUG_ONLY = ('app_globals', 'progress_tracker', 'hooks', 'backend_options', 'periodic')
#: ``start_async_worker()`` keyword options: the settings that configure the queue.
START_OPTIONS = tuple(s.name for s in settings.SETTINGS if s.scope == settings.QUEUE)


def _globals_of_caller(frame: Any) -> Any:
    # The 0.3 promise: called bare inside Globals.__init__, use that `self`. On TG 2.5
    # the globals object is not in the configuration until __init__ returns.
    return frame.f_locals.get('self') if frame is not None else None


def start_async_worker(app_globals: Any = None, progress_tracker: Any = None, *,
                       conf: Mapping[str, Any] | None = None,
                       hooks: list[Any] | tuple[Any, ...] = (),
                       backend_options: dict[str, Any] | None = None,
                       **options: Any) -> JobQueue:
    """Start a job queue and its worker threads for an application.

    ``app_globals`` is where the queue is kept (``app_globals.asyncjob_queue``); left out,
    it is the current application's globals, or the ``Globals`` instance whose
    ``__init__`` is calling, or (no application at all: a script) ``SCRIPT_GLOBALS``.
    ``progress_tracker`` defaults to the ``asyncjob.tracker`` setting (memory).
    ``conf`` is the TurboGears configuration jobs run under (``tg.config`` inside a
    job, sessions closed after each job); left out, the current application's, if it
    is the one these globals belong to. ``options`` are the settings of
    :mod:`tgext.asyncjob.settings` that configure the queue (``workers``,
    ``max_queue``, ``put_timeout``, ``attempts``, ``enqueue_on_commit``,
    ``stop_timeout``, ``immediate``, ``tracker``, ``backend``); they beat the
    configuration's ``asyncjob.*`` keys, and ``backend_options`` beat its
    ``asyncjob.backend.*`` keys. Unknown options raise ``TypeError``.

    Raises :class:`AlreadyStarted` if these globals already have a running queue.
    """
    settings.check_names(options, START_OPTIONS, 'start_async_worker')
    if conf is None:
        conf = locate.current_conf()
        if (app_globals is not None and conf is not None
                and conf.get('tg.app_globals') not in (None, app_globals)):
            conf = None  # the configuration of another application: not these globals'
    if app_globals is None:
        app_globals = conf.get('tg.app_globals') if conf is not None else None
        if app_globals is None and conf is not None:
            # Inside Globals.__init__ of an application being configured (0.3 usage).
            app_globals = _globals_of_caller(sys._getframe(1))
            if app_globals is None:
                raise AsyncJobError(
                    'start_async_worker() cannot find the application globals: pass '
                    'them, e.g. start_async_worker(self) in Globals.__init__')
        if app_globals is None:
            app_globals = SCRIPT_GLOBALS  # no TurboGears application: a script or shell
    values = settings.resolve(conf, {}, options)
    q = _start(app_globals, progress_tracker, conf, hooks,
               settings.backend_options(conf, None, backend_options), values)
    if conf is not None:  # an application's queue; a bare script declares no schedule
        _start_periodic(q, conf, (), values)
    return q


def _start_periodic(q: JobQueue, conf: Mapping[str, Any], plugged: Any,
                    values: dict[str, Any]) -> None:
    if _OPERATING_ONLY:
        log.info('tgext.asyncjob: %s: no worker threads or periodic jobs in this process',
                 _OPERATING_ONLY[-1])
        return
    from . import periodic
    periodic.start(q, conf, plugged, tz=values['periodic_tz'],
                   catchup=values['periodic_catchup'])


def _start(app_globals: Any, tracker: Any, conf: Mapping[str, Any] | None,
           hooks: list[Any] | tuple[Any, ...], backend_options: dict[str, Any],
           values: dict[str, Any]) -> JobQueue:
    existing = getattr(app_globals, 'asyncjob_queue', None)
    if isinstance(existing, JobQueue) and not existing.stopped:
        raise AlreadyStarted('an asyncjob worker is already running for these app_globals; '
                             'stop() it first, or plug tgext.asyncjob only once')
    if tracker is None:
        tracker = values['tracker']
    tracker = startup.make_tracker(tracker)
    q = JobQueue(tracker, conf=conf, hooks=hooks, backend_options=backend_options,
                 **{name: values[name] for name in START_OPTIONS if name != 'tracker'})
    app_globals.asyncjob_queue = q
    database.dispose_pools_in_child(q, conf)
    startup.check(q, conf)  # warnings only: a misfit deployment is said once, at start
    if not _OPERATING_ONLY:
        q.backend.start()
    locate.remember(q)
    log.info('tgext.asyncjob started: %s', startup.describe(q))
    return q


class AsyncJobConfigurationComponent(ConfigurationComponent):
    """Starts one queue per application when its environment is loaded."""

    id = 'asyncjob'

    def __init__(self) -> None:
        super().__init__()
        self.plug_options: dict[str, Any] = {}

    def get_actions(self) -> tuple[Any, ...]:
        return (EnvironmentLoadedConfigurationAction(self._start),)

    def _start(self, conf: Any, app: Any) -> None:
        options = self.plug_options
        # Checked here rather than as TG coercions at configure time: the build fails
        # just as early for the user, once TG's own set-up (renderers) is complete.
        values = settings.resolve(conf, options, {})
        # The resolved values go back into the configuration, where the web
        # controller reads asyncjob.mount, show_tracebacks and jobs_access.
        conf.update({settings.BY_NAME[name].key: value for name, value in values.items()})
        if not values['enabled']:
            log.info('tgext.asyncjob is plugged but disabled (asyncjob.enabled = false)')
            return
        app_globals = conf['tg.app_globals']
        q = _start(app_globals, options.get('progress_tracker'), conf,
                   options.get('hooks', ()),
                   settings.backend_options(conf, options.get('backend_options'), None),
                   values)
        given = options.get('app_globals')
        if given is not None and given is not app_globals:
            # 0.3 let plug() name the globals object that holds the queue.
            given.asyncjob_queue = q
        from .web import mount_from_config
        mount_from_config(conf)
        _start_periodic(q, conf, options.get('periodic', ()), values)


def plugme(configurator: Any, options: dict[str, Any] | None = None) -> dict[str, str]:
    """tgext.pluggable entry point: ``plug(base_config, 'tgext.asyncjob', **options)``.

    Options: ``app_globals``, ``progress_tracker``, ``hooks``, ``backend_options`` and
    every setting of :mod:`tgext.asyncjob.settings` (the ``.ini`` beats them). Unknown
    options raise ``TypeError``.
    """
    options = dict(options or {})
    options.pop('appid', None)
    settings.check_names(options, PLUG_ONLY + tuple(settings.BY_NAME), 'plug(tgext.asyncjob)')
    for name, value in options.items():
        if name in settings.BY_NAME and value is not None:
            settings.BY_NAME[name].coerce(value)  # a bad value fails here, at the plug() call
    try:
        configurator.register(AsyncJobConfigurationComponent)
    except KeyError:
        pass  # plugged again into the same configurator: options below replace
    configurator.get_component('asyncjob').plug_options = options
    return {'appid': 'tgext.asyncjob'}


