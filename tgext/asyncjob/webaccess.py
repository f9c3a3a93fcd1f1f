"""Who may see what on the job pages: ``asyncjob.show_tracebacks`` (error messages
and tracebacks) and ``asyncjob.jobs_access`` (the job list).

Each is a bool (or an .ini string), or a callable taking no arguments called per
request; unset, only a ``debug`` application allows.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import tg
from tg.support.converters import asbool

log = logging.getLogger('tgext.asyncjob')

__all__ = ['check_access_rules', 'tracebacks_allowed', 'jobs_page_allowed']


_ACCESS_SETTINGS = ('asyncjob.show_tracebacks', 'asyncjob.jobs_access')


def _access_rule(conf: Mapping[str, Any], key: str) -> bool | Callable[[], Any] | None:
    """The rule ``conf[key]`` holds: ``None`` (unset), a callable, or a bool.

    Raises ValueError naming the setting for a value that is none of these (an .ini
    string such as ``yes please``).
    """
    rule = conf.get(key)
    if rule is None or callable(rule):
        return rule
    try:
        return asbool(rule)
    except ValueError:
        raise ValueError(
            f'{key} = {rule!r} is not valid: use true or false (also yes/no, on/off, 1/0) '
            'or a callable taking no arguments that returns whether to allow') from None


def check_access_rules(conf: Mapping[str, Any]) -> None:
    """Raise ValueError, naming the setting and its valid values, if
    ``asyncjob.show_tracebacks`` or ``asyncjob.jobs_access`` is not a valid rule.
    Called at start-up by :func:`mount_from_config`."""
    for key in _ACCESS_SETTINGS:
        _access_rule(conf, key)


def _allowed(conf: Mapping[str, Any], key: str) -> bool:
    """``conf[key]`` decides when set (a bool, an .ini string, or a callable taking no
    arguments that returns one); unset, only a ``debug`` application allows.

    A failing predicate or an invalid value denies: a bug in an access check must not
    open the page (an invalid value fails at start-up where :func:`mount_from_config`
    runs; a controller mounted by hand in an app that is not plugged only logs it).
    """
    try:
        rule = _access_rule(conf, key)
    except ValueError as exc:
        log.error('tgext.asyncjob: %s; denying', exc)
        return False
    if rule is None:
        return asbool(conf.get('debug', False))
    if callable(rule):
        try:
            return bool(rule())
        except Exception:
            log.exception('tgext.asyncjob: the %s predicate failed; denying', key)
            return False
    return rule


def tracebacks_allowed() -> bool:
    """True when this request may see job tracebacks (``asyncjob.show_tracebacks``)."""
    return _allowed(tg.config, 'asyncjob.show_tracebacks')


def jobs_page_allowed() -> bool:
    """True when this request may list jobs (``asyncjob.jobs_access``)."""
    return _allowed(tg.config, 'asyncjob.jobs_access')
