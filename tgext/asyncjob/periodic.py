"""Periodic jobs: cron schedules that queue an ordinary job once per slot.

A schedule is declared with :func:`asyncjob_periodic` on an importable function,
``plug(..., periodic=[('0 3 * * *', 'myapp.jobs:nightly')])`` or an ``.ini`` line
``asyncjob.periodic.nightly = 0 3 * * * myapp.jobs:nightly``. Cron expressions are
parsed by ``croniter`` (5 fields, or 6 with seconds last). Each process running a queue
runs one :class:`PeriodicRunner` thread; at each slot it asks the :class:`SlotClaims`
of its backend/store whether this process is the one to queue the run (a unique row, a
Redis ``SET NX``, or a set in this process's memory), then queues it through
``queue.perform``: states, progress, pages and retries are those of any job.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import inspect
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping, Protocol, TypeVar

from croniter import croniter  # type: ignore[import-untyped]

from . import forking
from .errors import QueueStopped

log = logging.getLogger('tgext.asyncjob')

F = TypeVar('F', bound=Callable[..., Any])

#: ``.ini`` keys ``asyncjob.periodic.<name>`` declare schedules.
INI_PREFIX = 'asyncjob.periodic.'
#: Commands whose processes never fire schedules: they load the application to set it
#: up or to explore it, not to serve it.
NEVER_IN = ('setup-app', 'tgshell', 'shell')
#: Seconds a claim is remembered beyond the catch-up window (clock skew between hosts).
CLAIM_MARGIN = 3600
#: Longest wait between two looks at the queue's state (a stopped queue ends the thread).
MAX_WAIT = 1.0


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One periodic job: its ``name`` (a claim per slot is made under it), the ``cron``
    expression, the function and its import path ``target``."""

    name: str
    cron: str
    func: Callable[..., Any]
    target: str

    def next_after(self, when: float, tz: datetime.tzinfo) -> float:
        """The first slot strictly after ``when`` (epoch seconds)."""
        return float(croniter(self.cron, datetime.datetime.fromtimestamp(when, tz))
                     .get_next(float))

    def last_at_or_before(self, when: float, tz: datetime.tzinfo) -> float:
        """The latest slot at or before ``when`` (epoch seconds)."""
        # croniter's get_prev is strictly before: start just after `when`.
        return float(croniter(self.cron, datetime.datetime.fromtimestamp(when + 1e-3, tz))
                     .get_prev(float))

    def run_kwargs(self, slot: float) -> dict[str, Any]:
        """A function with a ``slot`` parameter is told its slot (epoch seconds)."""
        try:
            wants = 'slot' in inspect.signature(self.func).parameters
        except (TypeError, ValueError):
            wants = False
        return {'slot': int(slot)} if wants else {}


def check_cron(name: str, cron: str) -> str:
    """``cron`` stripped; ``ValueError`` naming the schedule if croniter refuses it."""
    if not isinstance(cron, str) or not croniter.is_valid(cron.strip()):
        raise ValueError(f'asyncjob periodic schedule {name!r}: {cron!r} is not a valid cron '
                         'expression (5 fields, or 6 with seconds last)')
    return cron.strip()


def import_target(name: str, target: str) -> Callable[..., Any]:
    """The function at ``module:qualname``; ``ValueError`` naming the schedule if it
    cannot be imported or is not callable."""
    module_name, _, attr = str(target).partition(':')
    try:
        if not module_name or not attr:
            raise ValueError('expected module:function')
        found: Any = importlib.import_module(module_name)
        for part in attr.split('.'):
            found = getattr(found, part)
    except Exception as exc:
        raise ValueError(f'asyncjob periodic schedule {name!r}: cannot import {target!r} '
                         f'({exc})') from None
    if not callable(found):
        raise ValueError(f'asyncjob periodic schedule {name!r}: {target!r} is not callable')
    return found  # type: ignore[no-any-return]


def target_of(func: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function; ``ValueError`` for one that
    worker processes could not import (a lambda, a nested function)."""
    qualname = getattr(func, '__qualname__', '')
    module = getattr(func, '__module__', None)
    if not module or not qualname or '<' in qualname:
        raise ValueError(f'asyncjob_periodic needs an importable module-level function, '
                         f'got {func!r}')
    return f'{module}:{qualname}'


#: Schedules declared with :func:`asyncjob_periodic`, by name.
DECLARED: dict[str, tuple[str, str]] = {}


def asyncjob_periodic(cron: str, *, name: str | None = None) -> Callable[[F], F]:
    """Decorator: queue the decorated (importable, module-level) function as a job at
    every slot of ``cron``, once per slot, in every application whose queue starts after
    the module is imported. ``name`` defaults to ``module:qualname``. A function with a
    ``slot`` parameter gets the slot's epoch seconds. The expression is checked here."""
    checked = check_cron(name or 'asyncjob_periodic', cron)  # at the call: a clear line

    def register(func: F) -> F:
        target = target_of(func)
        DECLARED[name or target] = (checked, target)
        return func
    return register


def parse_ini_line(name: str, value: str) -> tuple[str, str]:
    """``'0 3 * * * myapp.jobs:nightly'`` as ``(cron, target)``: the last word is the
    target."""
    cron, _, target = str(value).strip().rpartition(' ')
    if not cron or ':' not in target:
        raise ValueError(f'asyncjob periodic schedule {name!r}: expected "<cron> '
                         f'module:function", got {value!r}')
    return cron, target


def collect(conf: Mapping[str, Any] | None, plugged: Iterable[Any] = ()) -> list[Schedule]:
    """Every schedule: decorated functions, ``plug(periodic=[(cron, target), ...])``
    (named by their target), and ``asyncjob.periodic.<name>`` keys (which replace a
    schedule of the same name). ``ValueError`` naming the schedule for a bad expression
    or a target that cannot be imported."""
    declared: dict[str, tuple[str, str]] = dict(DECLARED)
    for entry in plugged or ():
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f'plug(periodic=...) wants (cron, "module:function") pairs, '
                             f'got {entry!r}')
        cron, target = entry
        if callable(target):
            target = target_of(target)
        declared[str(target)] = (cron, str(target))
    for key, value in (conf or {}).items():
        if isinstance(key, str) and key.startswith(INI_PREFIX):
            declared[key[len(INI_PREFIX):]] = parse_ini_line(key[len(INI_PREFIX):], value)
    return [Schedule(name, check_cron(name, cron), import_target(name, target), target)
            for name, (cron, target) in sorted(declared.items())]


def blocked_command(argv: list[str] | None = None) -> str | None:
    """The name of the command this process runs if it is one that must never fire
    schedules (``gearbox setup-app``, ``gearbox tgshell``), else ``None``."""
    argv = sys.argv if argv is None else argv
    if not argv or os.path.basename(argv[0]) not in ('gearbox', 'gearbox.exe', '__main__.py'):
        return None
    for word in argv[1:]:
        if not word.startswith('-'):
            return f'gearbox {word}' if word in NEVER_IN else None
    return None


# -- claims: who queues the run of a slot -------------------------------------------

class SlotClaims(Protocol):
    """Decides which process queues the run of a slot. ``durable``: claims outlive the
    process (so a restart can tell a missed slot from one that ran: catch-up)."""

    durable: bool

    def claim(self, name: str, slot: int) -> bool:
        """True for exactly one caller per ``(name, slot)`` within the claims' reach."""
        ...


class ProcessClaims:
    """Claims in this process's memory: once per slot per process."""

    durable = False

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def claim(self, name: str, slot: int) -> bool:
        """True the first time a slot later than the last one claimed is asked for."""
        with self._lock:
            if self._last.get(name, -1) >= slot:
                return False
            self._last[name] = slot
            return True


class RedisClaims:
    """One atomic ``SET key NX EX`` per slot: once per slot for every process sharing
    the Redis database."""

    durable = True

    def __init__(self, client: Any, ttl: int, prefix: str = 'asyncjob:periodic:'):
        self.client, self.ttl, self.prefix = client, max(int(ttl), 1), prefix

    def claim(self, name: str, slot: int) -> bool:
        """True if this call set the slot's key."""
        return bool(self.client.set(f'{self.prefix}{name}:{slot}', os.getpid(),
                                    nx=True, ex=self.ttl))


def claims_for(queue: Any, keep: int) -> SlotClaims:
    """The claims that reach as far as the queue's jobs do: the backend's database
    (sqlalchemy), its Redis (rq), the Redis tracker (threads), else this process.
    ``keep``: seconds a claim must be remembered."""
    backend, store = queue.backend, queue.store
    engines = getattr(backend, 'engines', None)
    if engines is not None:
        from .backends.sqlalchemy.periodic import SQLClaims
        return SQLClaims(engines, keep)
    for holder, attr in ((backend, 'connection'), (store, 'redis')):
        client = getattr(holder, attr, None)
        if client is not None and hasattr(client, 'set'):
            return RedisClaims(client, keep)
    return ProcessClaims()


# -- the thread ------------------------------------------------------------------

class PeriodicRunner:
    """The thread that queues each schedule's runs in one process.

    At start, a schedule's latest slot within ``catchup`` seconds is run if no process
    claimed it (durable claims only: the memory of a process cannot tell a missed slot
    from one that ran before a restart). After a pause (downtime, a suspended host) the
    next slot is computed from the current time: missed slots run at most once.
    """

    def __init__(self, queue: Any, schedules: list[Schedule], claims: SlotClaims,
                 tz: datetime.tzinfo, catchup: float, clock: Callable[[], float] = time.time):
        self.queue, self.schedules, self.claims = queue, schedules, claims
        self.tz, self.catchup, self.clock = tz, catchup, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._due: dict[str, float] | None = None  # each schedule's next slot

    def start(self) -> None:
        """Start the thread (daemon: it holds no job of its own), and again in every
        forked child (gunicorn --preload, uWSGI): a thread does not survive fork()."""
        self._thread = threading.Thread(target=self._loop, name='asyncjob-periodic',
                                        daemon=True)
        self._thread.start()
        forking.reset_in_child(self, '_after_fork')

    def _after_fork(self) -> None:
        # The child serves the application as the parent did, so it fires as the parent
        # did; durable claims keep each slot to one run across all of them.
        if self._thread is not None and not self._stop.is_set():
            self.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _first_slots(self, now: float) -> dict[str, float]:
        due: dict[str, float] = {}
        for schedule in self.schedules:
            last = schedule.last_at_or_before(now, self.tz)
            if self.claims.durable and self.catchup > 0 and now - last <= self.catchup:
                due[schedule.name] = last  # run now, unless some process already did
            else:
                due[schedule.name] = schedule.next_after(now, self.tz)
        return due

    def tick(self, now: float) -> bool:
        """Queue the runs due at ``now``; False once the queue is stopped. The first
        tick decides the first slots (catch-up); later ones compute each schedule's
        next slot from ``now``, not from the slot: after a pause, missed slots run once."""
        if self._due is None:
            self._due = self._first_slots(now)
        for schedule in self.schedules:
            slot = self._due[schedule.name]
            if slot > now:
                continue
            if not self._fire(schedule, slot):
                return False
            self._due[schedule.name] = schedule.next_after(max(slot, now), self.tz)
        return not self.queue.stopped

    def _loop(self) -> None:
        while not self._stop.is_set() and self.tick(self.clock()):
            assert self._due is not None
            self._stop.wait(min(max(min(self._due.values()) - self.clock(), 0.0), MAX_WAIT))

    def _fire(self, schedule: Schedule, slot: float) -> bool:
        # False: the queue was stopped, the thread ends.
        try:
            if not self.claims.claim(schedule.name, int(slot)):
                return True
            jobid = self.queue.perform(schedule.func, (), schedule.run_kwargs(slot))
        except QueueStopped:
            return False
        except Exception:
            # A store outage or a full queue loses this slot, never the thread.
            log.exception('asyncjob periodic %s: the run of slot %s could not be queued',
                          schedule.name, _shown(slot, self.tz))
            return True
        log.info('asyncjob periodic %s: slot %s queued as %s', schedule.name,
                 _shown(slot, self.tz), jobid)
        return True


def _shown(slot: float, tz: datetime.tzinfo) -> str:
    return datetime.datetime.fromtimestamp(slot, tz).isoformat()


#: The periodic thread of each queue that has one.
RUNNERS: weakref.WeakKeyDictionary[Any, PeriodicRunner] = weakref.WeakKeyDictionary()


def start(queue: Any, conf: Mapping[str, Any] | None, plugged: Iterable[Any] = (), *,
          tz: datetime.tzinfo, catchup: float) -> PeriodicRunner | None:
    """Start the periodic thread of ``queue`` if any schedule is declared; ``None`` when
    there is none, or in a process that must never fire them (setup-app, tgshell).
    ``ValueError`` naming the schedule for a bad declaration."""
    schedules = collect(conf, plugged)
    if not schedules:
        return None
    command = blocked_command()
    if command is not None:
        log.info('tgext.asyncjob: periodic jobs never fire in %s (%d declared)', command,
                 len(schedules))
        return None
    claims = claims_for(queue, int(catchup) + CLAIM_MARGIN)
    runner = PeriodicRunner(queue, schedules, claims, tz, catchup)
    RUNNERS[queue] = runner
    runner.start()
    log.info('tgext.asyncjob periodic: %s (claims: %s)',
             ', '.join(f'{s.name} = {s.cron}' for s in schedules), type(claims).__name__)
    return runner
