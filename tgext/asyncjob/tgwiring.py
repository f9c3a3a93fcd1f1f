"""TurboGears wiring: starting a queue for an application and finding it again.

``plug(base_config, 'tgext.asyncjob')`` registers :class:`AsyncJobConfigurationComponent`
on that configurator, so each application it builds starts its own queue when its
environment is loaded (TG's milestones are process-wide and fire once; a component's
actions run for every application). ``start_async_worker`` is the 0.3 entry point.
"""
from __future__ import annotations

import logging
import sys
import types
from typing import Any, Mapping

from tg.configurator.base import ConfigurationComponent, EnvironmentLoadedConfigurationAction
from tg.request_local import config as tg_config
from tg.request_local import context as tg_context
from tg.support.converters import asbool, asint

from .errors import AlreadyStarted, AsyncJobError, NoWorkerError
from .context import running_queue
from .queue import JobQueue, stop_all  # noqa: F401 - stop_all: public here since 0.3

log = logging.getLogger('tgext.asyncjob')

#: ``asyncjob.*`` configuration keys (.ini or blueprint) and how to read them.
SETTINGS = {
    'workers': asint,
    'max_queue': asint,
    'put_timeout': float,
    'attempts': asint,
    'immediate': asbool,
    'stop_timeout': float,
    'backend': str,
    'enqueue_on_commit': asbool,
}

_default_queue: JobQueue | None = None

#: Where ``start_async_worker()`` keeps the queue when no application is configured.
SCRIPT_GLOBALS = types.SimpleNamespace()


def _current_conf() -> Mapping[str, Any] | None:
    """This thread's TurboGears configuration, else the process's, else ``None``."""
    configs = _thread_stack(tg_config)
    if configs:
        return configs[-1][0]  # thread configs are stacked as (conf, preserved)
    configs = tg_config.__dict__.get('_process_configs')
    return configs[-1] if configs else None


def _thread_stack(proxy: Any) -> list[Any] | None:
    # The objects a TurboGears StackedObjectProxy holds for this thread, read without
    # its _current_obj(), which raises (slowly) on every thread that has none: this is
    # on the path of every asyncjob_perform.
    try:
        # A thread-local's __dict__ is this thread's: no AttributeError raised and caught.
        return proxy.__dict__['____local__'].__dict__.get('objects')
    except KeyError:  # pragma: no cover
        return None


def _settings(conf: Mapping[str, Any] | None, explicit: dict[str, Any]) -> dict[str, Any]:
    """``asyncjob.*`` keys from the configuration, overridden by explicit arguments."""
    settings: dict[str, Any] = {}
    for name, coerce in SETTINGS.items():
        value = explicit.pop(name, None)
        if value is None and conf is not None:
            value = conf.get(f'asyncjob.{name}')
        if value is not None:
            settings[name] = coerce(value)
    if explicit:
        raise TypeError(f'unknown start_async_worker option(s): {", ".join(sorted(explicit))}')
    return settings


def tracker_from_setting(value: Any) -> Any:
    """A tracker from ``asyncjob.tracker`` in an .ini: ``memory`` or a ``redis://`` URL."""
    if value is None or not isinstance(value, str):
        return value
    if value == 'memory':
        from .trackers.memory import MemoryProgressTracker
        return MemoryProgressTracker()
    if value.startswith(('redis://', 'rediss://', 'unix://')):
        from .trackers.redisdb import RedisProgressTracker
        return RedisProgressTracker(url=value)
    raise ValueError(f'asyncjob.tracker must be "memory" or a redis:// URL, got {value!r}')


def _globals_of_caller(frame: Any) -> Any:
    # The 0.3 promise: called bare inside Globals.__init__, use that `self`. On TG 2.5
    # the globals object is not in the configuration until __init__ returns.
    return frame.f_locals.get('self') if frame is not None else None


def _backend_options(conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """``asyncjob.backend.<name> = value`` keys, as keyword arguments for the backend."""
    prefix = 'asyncjob.backend.'
    return {k[len(prefix):]: v for k, v in (conf or {}).items() if k.startswith(prefix)}


def start_async_worker(app_globals: Any = None, progress_tracker: Any = None, *,
                       hooks: list[Any] | tuple[Any, ...] = (),
                       backend_options: dict[str, Any] | None = None,
                       **options: Any) -> JobQueue:
    """Start a job queue and its worker threads for an application.

    ``app_globals`` is where the queue is kept (``app_globals.asyncjob_queue``); left out,
    it is the current application's globals, or the ``Globals`` instance whose
    ``__init__`` is calling, or (no application at all: a script) ``SCRIPT_GLOBALS``. ``progress_tracker`` defaults to a
    :class:`~tgext.asyncjob.trackers.memory.MemoryProgressTracker`. Options
    (``workers``, ``max_queue``, ``put_timeout``, ``attempts``, ``immediate``,
    ``stop_timeout``, ``backend``) override the ``asyncjob.*`` configuration keys;
    ``backend_options`` override ``asyncjob.backend.*`` keys.

    Raises :class:`AlreadyStarted` if these globals already have a running queue.
    """
    global _default_queue
    conf = options.pop('conf', None)
    if conf is None:
        conf = _current_conf()
        if (app_globals is not None and conf is not None
                and conf.get('tg.app_globals') not in (None, app_globals)):
            conf = None  # the configuration of another application: not these globals'
    in_app = conf is not None and conf.get('package') is not None
    if app_globals is None:
        app_globals = conf.get('tg.app_globals') if conf is not None else None
        if app_globals is None and in_app:
            # Inside Globals.__init__ of an application being configured.
            app_globals = _globals_of_caller(sys._getframe(1))
            if app_globals is None:
                raise AsyncJobError(
                    'start_async_worker() cannot find the application globals: pass '
                    'them, e.g. start_async_worker(self) in Globals.__init__')
        if app_globals is None:
            app_globals = SCRIPT_GLOBALS  # no TurboGears application: a script or shell
    existing = getattr(app_globals, 'asyncjob_queue', None)
    if isinstance(existing, JobQueue) and not existing.stopped:
        raise AlreadyStarted('an asyncjob worker is already running for these app_globals; '
                             'stop() it first, or plug tgext.asyncjob only once')
    if progress_tracker is None and conf is not None:
        progress_tracker = tracker_from_setting(conf.get('asyncjob.tracker'))
    owned_conf = conf if conf is not None and conf.get('package') is not None else None
    backend_options = {**_backend_options(conf), **(backend_options or {})}
    q = JobQueue(progress_tracker, conf=owned_conf, hooks=hooks,
                 backend_options=backend_options, **_settings(conf, options))
    app_globals.asyncjob_queue = q
    q.backend.start()
    _default_queue = q
    return q


def current_queue() -> JobQueue:
    """The queue for the caller: the running job's; in a request, its application's;
    elsewhere the last one started in this process, or else the current application's."""
    q = running_queue()
    if q is not None:
        return q
    context = _thread_stack(tg_context)
    if context:
        q = getattr(context[-1][0].app_globals, 'asyncjob_queue', None)
        if q is not None:
            return q
    if _default_queue is not None and not _default_queue.stopped:
        return _default_queue
    conf = _current_conf()
    q = getattr(conf.get('tg.app_globals') if conf else None, 'asyncjob_queue', None)
    if q is not None:
        return q  # if it was stopped, its perform() says so
    if _default_queue is not None:
        return _default_queue  # stopped: its perform() says so
    raise NoWorkerError('no asyncjob worker is running: plug tgext.asyncjob or call '
                        'start_async_worker() first')


class AsyncJobConfigurationComponent(ConfigurationComponent):
    """Starts one queue per application when its environment is loaded."""

    id = 'asyncjob'

    def __init__(self) -> None:
        super().__init__()
        self.plug_options: dict[str, Any] = {}

    def get_defaults(self) -> dict[str, Any]:
        return {'asyncjob.enabled': True}

    def get_coercion(self) -> dict[str, Any]:
        coercion: dict[str, Any] = {f'asyncjob.{k}': v for k, v in SETTINGS.items()}
        coercion['asyncjob.enabled'] = asbool
        return coercion

    def get_actions(self) -> tuple[Any, ...]:
        return (EnvironmentLoadedConfigurationAction(self._start),)

    def _start(self, conf: Any, app: Any) -> None:
        if not conf.get('asyncjob.enabled', True):
            return
        options = dict(self.plug_options)
        given = options.pop('app_globals', None)
        app_globals = conf['tg.app_globals']
        tracker = options.pop('progress_tracker', None)
        hooks = options.pop('hooks', ())
        q = start_async_worker(app_globals, tracker, hooks=hooks, conf=conf,
                               backend_options=options.pop('backend_options', None),
                               **{k: options[k] for k in SETTINGS if options.get(k) is not None})
        if given is not None and given is not app_globals:
            # 0.3 let plug() name the globals object that holds the queue.
            given.asyncjob_queue = q
        from .web import mount_from_config
        mount_from_config(conf)


def plugme(configurator: Any, options: dict[str, Any] | None = None) -> dict[str, str]:
    """tgext.pluggable entry point: ``plug(base_config, 'tgext.asyncjob', **options)``.

    Options: ``app_globals``, ``progress_tracker``, ``hooks`` and the settings of
    :func:`start_async_worker`.
    """
    options = dict(options or {})
    options.pop('appid', None)
    try:
        configurator.register(AsyncJobConfigurationComponent)
    except KeyError:
        pass  # plugged again into the same configurator: options below replace
    configurator.get_component('asyncjob').plug_options = options
    return {'appid': 'tgext.asyncjob'}


