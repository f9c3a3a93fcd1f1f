"""Finding the job queue of the caller, through TurboGears' public API.

Used by every ``asyncjob_*`` call (through :func:`current_queue`), by
``start_async_worker`` and by the web controller. The queue of an application lives on
its globals (``app_globals.asyncjob_queue``); which application is the caller's is
asked of ``tg.config``: ``current_conf()``, and the thread's stack of configurations
(``_object_stack()``, the documented method of TurboGears' stacked proxies) that a
request, or a worker thread, pushes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from tg.configurator import ApplicationConfigurator
from tg.request_local import config as tg_config

from .context import running_queue
from .errors import NoWorkerError

if TYPE_CHECKING:
    from .queue import JobQueue

_last_started: JobQueue | None = None


def remember(q: JobQueue) -> None:
    """``q`` was just started: scripts and shells without an application find it."""
    global _last_started
    _last_started = q


def is_app_conf(conf: Mapping[str, Any] | None) -> bool:
    """True if an ``ApplicationConfigurator`` built ``conf`` (whatever keys it holds:
    an app configured in code has no ``package``)."""
    ref = conf.get('tg.configurator') if conf is not None else None
    return callable(ref) and isinstance(ref(), ApplicationConfigurator)


def thread_conf() -> Mapping[str, Any] | None:
    """The configuration this thread pushed (a request's, or a worker thread's)."""
    stack = tg_config._object_stack()
    return stack[-1][0] if stack else None


def current_conf() -> Mapping[str, Any] | None:
    """This thread's TurboGears configuration, else the process's, if an application
    built it; else ``None``."""
    try:
        conf = tg_config.current_conf()
    except AttributeError:  # TG's answer when no configuration is registered at all
        return None
    return conf if is_app_conf(conf) else None


def queue_of(conf: Mapping[str, Any] | None) -> JobQueue | None:
    """The queue kept on the globals of the application ``conf`` describes."""
    app_globals = conf.get('tg.app_globals') if conf is not None else None
    return getattr(app_globals, 'asyncjob_queue', None)


def current_queue() -> JobQueue:
    """The queue for the caller: the running job's; in a request, its application's;
    elsewhere the last one started in this process, or else the current application's.

    Raises :class:`NoWorkerError` when there is none, saying why.
    """
    q = running_queue()
    if q is not None:
        return q
    conf = thread_conf()
    q = queue_of(conf)
    if q is not None:
        return q
    _refuse_if_disabled(conf)
    if _last_started is not None and not _last_started.stopped:
        return _last_started
    conf = current_conf()
    q = queue_of(conf)
    if q is not None:
        return q  # if it was stopped, its perform() says so
    if _last_started is not None:
        return _last_started  # stopped: its perform() says so
    _refuse_if_disabled(conf)
    raise NoWorkerError('no asyncjob worker is running: plug tgext.asyncjob or call '
                        'start_async_worker() first')


def _refuse_if_disabled(conf: Mapping[str, Any] | None) -> None:
    if conf is not None and conf.get('asyncjob.enabled') is False:
        raise NoWorkerError('tgext.asyncjob is plugged but disabled by asyncjob.enabled = '
                            'false in this application\'s configuration: no queue runs')
