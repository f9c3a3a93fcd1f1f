"""Every ``asyncjob.*`` setting, defined once: its name, how a value is read and
checked, its default, and a one-line description (the README's table and the
documentation's settings reference are made from it).

A value comes from, first to last: ``start_async_worker()`` arguments, the
application's configuration (``.ini`` or blueprint), ``plug()`` options, the default.
Every value is checked where it enters, so a bad one fails at start-up naming its key,
not at the first job or request.
"""
from __future__ import annotations

import dataclasses
import zoneinfo
from typing import Any, Callable, Iterable, Mapping

from tg.support.converters import asbool

from . import checks

PREFIX = 'asyncjob.'

#: Where a setting may be given besides the configuration: ``plug()`` always;
#: ``start_async_worker()`` only for those that configure the queue itself.
QUEUE, APP = 'queue', 'app'


@dataclasses.dataclass(frozen=True)
class Setting:
    """One ``asyncjob.<name>`` setting."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    scope: str = QUEUE  #: QUEUE: also a start_async_worker() argument; APP: not

    @property
    def key(self) -> str:
        """The configuration key, ``asyncjob.<name>``."""
        return PREFIX + self.name

    def coerce(self, value: Any) -> Any:
        """``value`` read and checked; ``ValueError``/``TypeError`` naming the key."""
        try:
            return self.parse(value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f'{self.key}: {exc}') from None


# -- parsers: each accepts the typed value (code) and its .ini string -----------------

def _integer(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip('-').isdigit():
            value = int(value)
        return checks.count('the value', value, minimum=minimum)
    return parse


def seconds(value: Any) -> float:
    """A finite number of seconds in [0, ``checks.MAX_SECONDS``]."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f'expected a number of seconds, got {value!r}') from None
    checked = checks.seconds('the value', value)
    assert checked is not None  # None passes only with none_ok
    return checked


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return asbool(value)  # ValueError for anything but true/false, yes/no, on/off, 1/0
    raise TypeError(f'expected true or false, got {value!r}')


def _access(value: Any) -> Any:
    # A bool, its .ini spelling, or a predicate called per request; None: only in debug.
    if value is None or callable(value):
        return value
    return _boolean(value)


#: The backends ``asyncjob.backend`` names (see ``JobQueue``); a factory also works.
BACKENDS = ('threads', 'rq', 'sqlalchemy')


def _backend(value: Any) -> Any:
    if callable(value):
        return value
    name = str(value).strip()
    if name not in BACKENDS:
        raise ValueError(f'expected {", ".join(map(repr, BACKENDS))} or a backend factory, '
                         f'got {value!r}')
    return name


def _tracker(value: Any) -> Any:
    # "memory", a Redis URL, or a tracker object (plug()/start_async_worker()).
    if not isinstance(value, str):
        return value
    value = value.strip()
    if value == 'memory':
        return value
    from .trackers.redisurl import check_redis_url  # without the optional redis package
    return check_redis_url(value)


def _time_limit(value: Any) -> float | None:
    # Unset or empty: no limit; else seconds > 0 (see options.check_time_limit).
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    from .options import check_time_limit
    return check_time_limit(seconds(value))


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ''
    return text or None


def _zone(value: Any) -> zoneinfo.ZoneInfo:
    if isinstance(value, zoneinfo.ZoneInfo):
        return value
    try:
        return zoneinfo.ZoneInfo(str(value).strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError('expected an IANA time zone name such as UTC or Europe/Rome'
                         ) from None


def _mount(value: Any) -> str | None:
    # None: not mounted. An .ini says false/no/off/0 or nothing for that.
    if value is None or value is False:
        return None
    name = str(value).strip().strip('/')
    if name.lower() in ('', 'false', 'no', 'off', '0'):
        return None
    if not name.isidentifier():
        raise ValueError(f'expected a controller attribute name, got {value!r}')
    return name


SETTINGS: tuple[Setting, ...] = (
    Setting('enabled', _boolean, True, 'false: plugged, but no queue is started', APP),
    Setting('workers', _integer(1), 1, 'worker threads (1 keeps 0.3\'s FIFO order)'),
    Setting('max_queue', _integer(0), 0, 'waiting jobs allowed (0: no bound)'),
    Setting('put_timeout', seconds, 10.0,
            'seconds ``asyncjob_perform`` waits on a full queue'),
    Setting('attempts', _integer(1), 1, 'tries for retryable transaction conflicts'),
    Setting('enqueue_on_commit', _boolean, False,
            'hand jobs over only when the request commits'),
    Setting('stop_timeout', seconds, 10.0, 'seconds ``stop()`` and interpreter exit drain for'),
    Setting('immediate', _boolean, False, 'run each job synchronously (tests)'),
    Setting('time_limit', _time_limit, None,
            'seconds a job may run unless it gives its own ``time_limit``'),
    Setting('tracker', _tracker, None,
            '``memory`` or a ``redis://`` URL; unset: memory (rq: Redis)'),
    Setting('backend', _backend, 'threads',
            '``threads``, ``rq`` or ``sqlalchemy`` (a backend factory in code)'),
    Setting('mount', _mount, 'asyncjob', 'controller name on the root; false: not mounted',
            APP),
    Setting('show_tracebacks', _access, None,
            'show failed jobs\' tracebacks: bool or predicate (unset: ``debug``)', APP),
    Setting('jobs_access', _access, None,
            'who may see the ``jobs`` page: bool or predicate (unset: ``debug``)', APP),
    Setting('show_arguments', _access, None,
            'show jobs\' arguments on the jobs pages: bool or predicate (unset: ``debug``)',
            APP),
    Setting('back_url', _text, None,
            'the progress page\'s link back (unset: the referring page of the site)', APP),
    Setting('secret', _text, None,
            'CSRF token key of the job pages\' actions (unset: the session secret)', APP),
    Setting('periodic_tz', _zone, zoneinfo.ZoneInfo('UTC'),
            'time zone of periodic jobs\' cron expressions', APP),
    Setting('periodic_catchup', seconds, 3600.0,
            'seconds after a slot missed by downtime in which it still runs (once)', APP),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
#: ``asyncjob.backend.<option>`` keys are passed to the backend as keyword arguments.
BACKEND_PREFIX = PREFIX + 'backend.'
#: ``asyncjob.periodic.<name>`` keys declare periodic jobs (see :mod:`.periodic`).
PERIODIC_PREFIX = PREFIX + 'periodic.'


def check_names(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """``TypeError`` naming the unknown ones and the valid ones, if any is unknown."""
    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f'unknown {where} option(s): {", ".join(unknown)}; '
                        f'valid: {", ".join(allowed)}')


def check_conf_keys(conf: Mapping[str, Any] | None) -> None:
    """``ValueError`` for an ``asyncjob.*`` key of the configuration that is no setting
    (a typo such as ``asyncjob.worker``); ``asyncjob.backend.*`` keys are the backend's."""
    unknown = sorted(k for k in (conf or {}) if isinstance(k, str) and k.startswith(PREFIX)
                     and not k.startswith((BACKEND_PREFIX, PERIODIC_PREFIX))
                     and k[len(PREFIX):] not in BY_NAME)
    if unknown:
        raise ValueError(f'unknown setting(s) {", ".join(unknown)}; valid: '
                         f'{", ".join(s.key for s in SETTINGS)}, {BACKEND_PREFIX}<option>')


def coercion() -> dict[str, Callable[[Any], Any]]:
    """``{key: coerce}``, as a TurboGears ``ConfigurationComponent.get_coercion`` returns:
    for code that reads ``asyncjob.*`` keys outside a started queue."""
    return {s.key: s.coerce for s in SETTINGS}


def resolve(conf: Mapping[str, Any] | None, plugged: Mapping[str, Any],
            explicit: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting's value: ``explicit`` arguments, else ``conf``'s key, else
    ``plugged`` options, else the default; each one checked (errors name the key)."""
    check_conf_keys(conf)
    values = {}
    for setting in SETTINGS:
        if explicit.get(setting.name) is not None:
            value = explicit[setting.name]
        elif conf is not None and setting.key in conf:  # None there may mean "off" (mount)
            value = conf[setting.key]
        elif plugged.get(setting.name) is not None:
            value = plugged[setting.name]
        else:
            values[setting.name] = setting.default
            continue
        values[setting.name] = setting.coerce(value)
    return values


def backend_options(conf: Mapping[str, Any] | None, plugged: Mapping[str, Any] | None,
                    explicit: Mapping[str, Any] | None) -> dict[str, Any]:
    """The backend's keyword arguments, in the same order: ``explicit`` beats
    ``asyncjob.backend.<name>`` keys, which beat ``plugged``."""
    from_conf = {k[len(BACKEND_PREFIX):]: v for k, v in (conf or {}).items()
                 if k.startswith(BACKEND_PREFIX)}
    return {**(plugged or {}), **from_conf, **(explicit or {})}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value is None:
        return '(unset)'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rst_table(rows: list[tuple[str, ...]]) -> str:
    # A simple table: its columns as wide as their widest cell, the last one unbounded.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = '  '.join('=' * w for w in widths)

    def line(row: tuple[str, ...]) -> str:
        return '  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
    return '\n'.join([rule, line(rows[0]), rule, *map(line, rows[1:]), rule])


#: What each scope adds to the configuration as a place to give a setting.
GIVEN_AS = {QUEUE: '.ini, ``plug()``, ``start_async_worker()``', APP: '.ini, ``plug()``'}


def rst_table() -> str:
    """The settings as the reStructuredText table of the README."""
    return _rst_table([('key', 'default', 'meaning'),
                       *((f'``{s.key}``', _shown(s.default), s.doc) for s in SETTINGS)])


def rst_reference() -> str:
    """Every setting as the reStructuredText table of the documentation's settings
    reference: the README's columns and where each may be given."""
    return _rst_table([('key', 'default', 'given in', 'meaning'),
                       *((f'``{s.key}``', _shown(s.default), GIVEN_AS[s.scope], s.doc)
                         for s in SETTINGS)])
