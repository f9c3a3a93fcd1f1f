"""Time limits: one watchdog thread per process watches the running jobs that have one.

A job over its limit is always flagged (``asyncjob_cancelled()`` turns true) and,
whatever it returns, ends ``failed`` with :class:`~tgext.asyncjob.errors.TimeLimitExceeded`,
its transaction rolled back: "over its limit" means the same on every backend. How
hard it is stopped depends on where it runs (the backend's ``time_limit_mode``):

* :data:`FLAG` (threads of a web process): only flagged. A thread cannot be killed,
  and an exception raised into a request-serving process's job thread could land in
  code that is not the job's (its hooks, the ORM's commit);
* :data:`INTERRUPT` (worker processes of the ``sqlalchemy`` backend): flagged, then
  :class:`TimeLimitExceeded` is raised inside the job's thread, as Dramatiq's
  ``TimeLimit`` middleware does, with ``PyThreadState_SetAsyncExc``; again every
  :data:`REINJECT_INTERVAL` seconds while the job has not left its code (a job that
  swallows it is stopped again). Python raises it at the thread's next bytecode: C
  code that never returns to Python (a long ``time.sleep``, a blocking socket read,
  a slow query) is not interrupted until it returns;
* :data:`OWN`: the backend stops jobs itself (rq: RQ's job timeout); a foreign
  exception it raises is recorded as :class:`TimeLimitExceeded` (:func:`translate`).

The exception is raised only while the job is inside its own code: :class:`Bound`
takes the lock the watchdog raises under, and clears a pending one, on the way out.
"""
from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from typing import Any, Callable

from .errors import TimeLimitExceeded
from .forking import reset_in_child
from .job import Job

log = logging.getLogger('tgext.asyncjob')

FLAG, INTERRUPT, OWN = 'flag', 'interrupt', 'own'
#: Seconds between two raises into a job that is still in its code after the first.
REINJECT_INTERVAL = 1.0

#: Exception types of other systems that mean "over its time limit" (rq's).
_FOREIGN: list[type[BaseException]] = []


def time_limit_of(job: Job) -> float | None:
    """The time limit ``job`` was queued with (seconds), if any."""
    return getattr(job.options, 'time_limit', None)


def cancelled(job: Job, exc: BaseException) -> bool:
    """True if ``job``, which ended with ``exc``, was cancelled by someone (not just
    flagged by its time limit): then it is not retried."""
    return job.cancel_requested and not getattr(exc, 'flagged_by_limit_only', False)


def register_foreign(exc_type: type[BaseException]) -> None:
    """Record ``exc_type`` (raised by a backend's own time limit) as TimeLimitExceeded."""
    if exc_type not in _FOREIGN:
        _FOREIGN.append(exc_type)


def translate(exc: BaseException) -> BaseException:
    """``exc``, or a :class:`TimeLimitExceeded` with its message if it is a backend's
    own time-limit exception."""
    if _FOREIGN and isinstance(exc, tuple(_FOREIGN)):
        limited = TimeLimitExceeded(str(exc))
        limited.__cause__ = exc
        return limited
    return exc


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> int:
    # NULL clears a pending exception; see the CPython C API docs.
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None)


class Bound:
    """One run of a job under its time limit, from :meth:`enter` to :meth:`leave`."""

    def __init__(self, job: Job, limit: float, mode: str):
        self.job = job
        self.limit = limit
        self.mode = mode
        self.deadline = time.monotonic() + limit
        self.exceeded = False
        self.raised_at: float | None = None
        self.thread_id = 0
        self.inside = False
        self.cancelled_before = False  # someone cancelled it before the limit flagged it
        self.lock = threading.Lock()

    def message(self) -> str:
        return f'the job ran longer than its time limit of {self.limit:g} s'

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` watched; then :class:`TimeLimitExceeded` if it went over
        its limit, whatever it returned (so its transaction is rolled back)."""
        self.enter()
        try:
            result = func(*args)
        except TimeLimitExceeded as exc:
            if exc.args:
                raise
            # Raised by the watchdog, which can only give a class: add the message.
            raise self._exceeded().with_traceback(exc.__traceback__) from None
        finally:
            self.leave()
        if self.exceeded:
            raise self._exceeded()
        return result

    def _exceeded(self) -> TimeLimitExceeded:
        exc = TimeLimitExceeded(self.message())
        # The flag was the limit's, not a cancel: a retry policy naming it still applies.
        exc.flagged_by_limit_only = not self.cancelled_before  # type: ignore[attr-defined]
        return exc

    def enter(self) -> None:
        self.thread_id = threading.get_ident()
        with self.lock:
            self.inside = True
        WATCHDOG.watch(self)

    def leave(self) -> None:
        WATCHDOG.forget(self)
        with self.lock:
            self.inside = False
            if self.raised_at is not None:
                _raise_in(self.thread_id, None)  # raised but not yet delivered: dropped

    def expire(self, now: float) -> None:
        """Past the deadline (the watchdog's thread): flag, and raise if so told."""
        if not self.exceeded:
            self.exceeded = True
            self.cancelled_before = self.job.cancel_requested
            self.job.cancel_requested = True
            log.warning('asyncjob %s (%s): %s; %s', self.job.id, self.job.func_name,
                        self.message(), 'stopping it' if self.mode == INTERRUPT
                        else 'asyncjob_cancelled() is true now, it ends failed')
        if self.mode != INTERRUPT:
            return
        with self.lock:
            if self.inside and (self.raised_at is None
                                or now - self.raised_at >= REINJECT_INTERVAL):
                self.raised_at = now
                _raise_in(self.thread_id, TimeLimitExceeded)

    def next_check(self) -> float:
        """When the watchdog must look at this run again (monotonic time)."""
        if not self.exceeded:
            return self.deadline
        if self.mode == INTERRUPT and self.raised_at is not None:
            return self.raised_at + REINJECT_INTERVAL
        return math.inf


class Watchdog:
    """The process's one thread watching the :class:`Bound` runs (started on first use,
    again in a forked child that uses it)."""

    def __init__(self) -> None:
        self._runs: set[Bound] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, run: Bound) -> None:
        with self._changed:
            self._runs.add(run)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name='asyncjob-time-limits')
                self._thread.start()
            self._changed.notify()

    def forget(self, run: Bound) -> None:
        with self._changed:
            self._runs.discard(run)

    def _loop(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [r for r in self._runs if r.next_check() <= now]
                later = [r.next_check() for r in self._runs if r.next_check() > now]
            for run in due:
                try:
                    run.expire(now)
                except Exception:  # the watchdog outlives any run it watches
                    log.exception('asyncjob time limit watchdog failed')
            with self._changed:
                if not due:
                    wait = min(later, default=math.inf) - time.monotonic()
                    self._changed.wait(None if wait == math.inf else max(wait, 0))

    def after_fork(self) -> None:
        """In a forked child: the parent's thread and runs are not the child's."""
        self._runs = set()
        self._changed = threading.Condition()
        self._thread = None


#: The watchdog of this process.
WATCHDOG = Watchdog()
reset_in_child(WATCHDOG, 'after_fork')


def bound(job: Job, mode: str) -> Bound | None:
    """The :class:`Bound` to run ``job`` under, or ``None`` (no limit, or the backend
    enforces it itself)."""
    limit = time_limit_of(job)
    if limit is None or mode == OWN:
        return None
    return Bound(job, limit, mode)
