"""Who may see what on the job pages: ``asyncjob.show_tracebacks`` (error messages
and tracebacks), ``asyncjob.jobs_access`` (the job list) and ``asyncjob.show_arguments``
(a job's arguments, which a record keeps for retries: they may carry personal data or
secrets, so pages show them only where this allows).

Each is a bool (or an .ini string), or a callable taking no arguments called per
request; unset, only a ``debug`` application allows.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import tg
from tg.support.converters import asbool

from . import settings

log = logging.getLogger('tgext.asyncjob')

__all__ = ['check_access_rules', 'tracebacks_allowed', 'jobs_page_allowed',
           'arguments_allowed']


_ACCESS_SETTINGS = ('show_tracebacks', 'jobs_access', 'show_arguments')


def _access_rule(conf: Mapping[str, Any], name: str) -> Any:
    """The rule ``asyncjob.<name>`` holds: ``None`` (unset), a callable, or a bool,
    read by its definition in :mod:`.settings`; ``ValueError`` naming the key for a
    value that is none of these (an .ini string such as ``yes please``)."""
    setting = settings.BY_NAME[name]
    return setting.coerce(conf.get(setting.key))


def check_access_rules(conf: Mapping[str, Any]) -> None:
    """``ValueError`` naming the key if ``asyncjob.show_tracebacks``,
    ``asyncjob.jobs_access`` or ``asyncjob.show_arguments`` is not a valid rule. Called at start-up by
    :func:`~tgext.asyncjob.web.mount_from_config`."""
    for name in _ACCESS_SETTINGS:
        _access_rule(conf, name)


def _allowed(conf: Mapping[str, Any], name: str) -> bool:
    """``asyncjob.<name>`` decides when set (a bool, an .ini string, or a callable
    taking no arguments that returns one); unset, only a ``debug`` application allows.

    A failing predicate or an invalid value denies: a bug in an access check must not
    open the page. (An invalid value fails at start-up; one put in the configuration
    later, or in an application whose start-up never checked it, is logged here.)
    """
    try:
        rule = _access_rule(conf, name)
    except (TypeError, ValueError) as exc:
        log.error('tgext.asyncjob: %s; denying', exc)
        return False
    if rule is None:
        return asbool(conf.get('debug', False))
    if callable(rule):
        try:
            return bool(rule())
        except Exception:
            log.exception('tgext.asyncjob: the asyncjob.%s predicate failed; denying', name)
            return False
    return bool(rule)


def tracebacks_allowed() -> bool:
    """True when this request may see job tracebacks (``asyncjob.show_tracebacks``)."""
    return _allowed(tg.config, 'show_tracebacks')


def jobs_page_allowed() -> bool:
    """True when this request may list jobs (``asyncjob.jobs_access``)."""
    return _allowed(tg.config, 'jobs_access')


def arguments_allowed() -> bool:
    """True when this request may see jobs' arguments (``asyncjob.show_arguments``):
    pass it as ``JobStatus.to_dict(include_arguments=...)``."""
    return _allowed(tg.config, 'show_arguments')
