"""The store interface every tracker is used through, its start-up check, and the
adapter for 0.3-style trackers.

The queue talks to every tracker through :class:`JobStore`, the one small interface
behind which all job records live (as Huey keeps all its storage behind one class).
Trackers that keep whole job records subclass :class:`ProgressTracker` and implement
it directly; any other object with the four 0.3 methods is wrapped in
:class:`LegacyTrackerAdapter`. :func:`as_store` decides which, once, when the queue is
built: a tracker that lacks a method fails there, not in a worker thread.

A record is a plain dict with some of: ``state``, ``name``, ``enqueued_at``,
``started_at``, ``finished_at``, ``attempt``, ``eta``, ``progress``, ``data``,
``result``, ``error`` (a dict of ``type``, ``message``, ``traceback``) and ``detail``;
for operating jobs (listing, retrying) also ``func`` (the callable's ``module:qualname``,
when it has one), ``args`` and ``kwargs`` (kept where the store can: the memory tracker
keeps the objects, Redis and SQL keep JSON; absent otherwise), ``retry_of`` and
``retried_as`` (the ids of the job a retry copied, and of its copy).

Rules every store keeps (``tests/test_contract_trackers.py`` checks them all):

* a finished record (``succeeded``, ``failed``, ``cancelled``) is final: ``update``,
  ``set_progress`` and a second ``finish`` leave it as it is;
* results and error texts are kept within a byte budget (:data:`RESULT_BUDGET` by
  default): beyond it they are stored truncated, and the record's ``detail`` says so;
* listing (``supports_listing``): :meth:`JobStore.query` pages through every record
  kept, newest first, filtered by state and callable name, and :meth:`JobStore.counts`
  counts them by state; :meth:`~JobStore.delete_finished` and
  :meth:`~JobStore.purge_finished` remove finished records only, never a live job's.
"""
from __future__ import annotations

import collections
import sys
import threading
from typing import Any, Iterable, Protocol, runtime_checkable

from ..errors import OperationUnsupported

QUEUED_PROGRESS = (-1, None)
#: What the default :meth:`ProgressTracker.query` asks ``recent()`` for: everything.
UNBOUNDED = 2 ** 31 - 1
FINISHED_STATES = frozenset({'succeeded', 'failed', 'cancelled'})

# Bytes of a result, an error message or a traceback a tracker keeps (UTF-8 / JSON
# encoded): 64 KiB, as for progress data. Records are read on every status poll.
RESULT_BUDGET = 65536


def check_progress_value(value: Any) -> None:
    """Progress values are ints >= 0, as in 0.3; ``-1`` is how a queued job reads.

    Raises ``TypeError`` for anything that is not an int (bools included) and
    ``ValueError`` for a negative int, which would read back as "queued".
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f'progress value must be an int, got {type(value).__name__}: {value!r}')
    if value < 0:
        raise ValueError(f'progress value must not be negative (a negative value reads as '
                         f'"queued"), got {value}')


def progress_from_record(record: dict[str, Any] | None) -> tuple[int, Any] | None:
    """The 0.3 answer for a record: ``(-1, None)`` queued, ``(value, data)`` running,
    ``None`` finished or unknown."""
    if record is None:
        return None
    state = record.get('state')
    if state == 'queued':
        return QUEUED_PROGRESS
    if state == 'running':
        return (record.get('progress') or 0, record.get('data'))
    return None


#: The states a store counts (:meth:`JobStore.counts` answers each, 0 included).
STATES = ('queued', 'running', 'succeeded', 'failed', 'cancelled')

#: Fields :meth:`JobStore.annotate` may write on any record, finished or not.
ANNOTATIONS = frozenset({'retry_of', 'retried_as'})


def check_page(state: str | None, name: str | None, offset: int, limit: int) -> None:
    """``ValueError``/``TypeError`` for a listing query no store should run."""
    if state is not None and state not in STATES:
        raise ValueError(f'unknown job state {state!r}: use one of {", ".join(STATES)}')
    if name is not None and not isinstance(name, str):
        raise TypeError(f'name must be a string (the callable\'s dotted name), got {name!r}')
    for what, value, minimum in (('offset', offset, 0), ('limit', limit, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f'{what} must be an int >= {minimum}, got {value!r}')


def check_annotations(fields: dict[str, Any]) -> None:
    """``ValueError`` for fields :meth:`JobStore.annotate` must not write (a state...)."""
    wrong = set(fields) - ANNOTATIONS
    if wrong:
        raise ValueError(f'annotate() writes only {", ".join(sorted(ANNOTATIONS))}, '
                         f'not {", ".join(sorted(wrong))}')


def page_of(items: Iterable[tuple[str, dict[str, Any]]], state: str | None, name: str | None,
            offset: int, limit: int) -> list[tuple[str, dict[str, Any]]]:
    """The page of ``items`` (newest first already) a :meth:`JobStore.query` answers."""
    page: list[tuple[str, dict[str, Any]]] = []
    skipped = 0
    for entryid, record in items:
        if state is not None and record.get('state') != state:
            continue
        if name is not None and record.get('name') != name:
            continue
        if skipped < offset:
            skipped += 1
            continue
        page.append((entryid, record))
        if len(page) >= limit:
            break
    return page


def count_states(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Records per state, every state of :data:`STATES` present."""
    counts = dict.fromkeys(STATES, 0)
    for record in records:
        state = str(record.get('state'))
        counts[state] = counts.get(state, 0) + 1
    return counts


# -- byte budgets --------------------------------------------------------------------

def clip_text(text: str, budget: int) -> tuple[str, int | None]:
    """``text`` cut to at most ``budget`` UTF-8 bytes plus a visible note, and the
    size it had; ``(text, None)`` when it fits."""
    raw = text.encode('utf-8', 'replace')
    if len(raw) <= budget:
        return text, None
    kept = raw[:budget].decode('utf-8', 'ignore')  # never half a character
    # ASCII only: one non-ASCII character would double an ASCII text's size in memory.
    return f'{kept}... [truncated: {len(raw)} bytes, over the {budget}-byte budget]', len(raw)


def clip_error(error: Any, budget: int) -> tuple[Any, list[str]]:
    """An error record with its ``message`` and ``traceback`` within ``budget``, and
    the names of the texts that were cut."""
    if not isinstance(error, dict):
        return error, []
    clipped, cut = dict(error), []
    for name in ('message', 'traceback'):
        text = clipped.get(name)
        if isinstance(text, str):
            clipped[name], size = clip_text(text, budget)
            if size is not None:
                cut.append(f'error {name} truncated from {size} bytes')
    return clipped, cut


def note_truncation(fields: dict[str, Any], cut: list[str], budget: int) -> None:
    """Say in ``fields['detail']`` which values were stored truncated, and why."""
    if cut:
        note = f'over the tracker\'s {budget}-byte budget: {", ".join(cut)}'
        fields['detail'] = f'{fields["detail"]}; {note}' if fields.get('detail') else note


_SCALARS = (str, int, float, bool)
_CONTAINERS = (tuple, list, dict)


def approx_size(obj: Any, limit: int) -> int:
    """Roughly the bytes ``obj`` holds (``sys.getsizeof`` over its containers and
    attributes), counted until past ``limit``: cost bounded by ``limit``, not ``obj``."""
    if obj is None or type(obj) in _SCALARS or (type(obj) in _CONTAINERS and not obj):
        return sys.getsizeof(obj)  # the common cases (no arguments...), without the walk
    total, seen, todo = 0, set(), [obj]
    while todo and total <= limit:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        try:
            total += sys.getsizeof(item)
            if isinstance(item, dict):
                todo.extend(item.keys())
                todo.extend(item.values())
            elif isinstance(item, (list, tuple, set, frozenset)):
                todo.extend(item)
            elif not isinstance(item, (str, bytes, bytearray, int, float)):
                attributes = getattr(item, '__dict__', None)
                if isinstance(attributes, dict):
                    todo.append(attributes)
        except Exception:
            total += 64  # a hostile object: count something, never fail the job's end
    return total


# -- the interface -------------------------------------------------------------------

@runtime_checkable
class JobStore(Protocol):
    """Where job records live: what the queue, the workers and the web pages call.

    Writes never raise for a finished record: they leave it alone. Reads answer
    ``None`` for unknown ids. Outages raise
    :class:`~tgext.asyncjob.errors.TrackerUnavailable`.
    """

    #: keeps whole records, including finished jobs for a retention period
    supports_status: bool
    #: can list recent jobs (:meth:`recent`)
    supports_listing: bool

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        """Start tracking a queued job (its first write)."""

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into a live record; a finished record is left alone."""

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """Record the final state; a record already finished is left alone."""

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Store a running job's progress; a finished record is left alone."""

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        """The 0.3 answer: ``(-1, None)``, ``(value, data)`` or ``None``."""

    def get_record(self, entryid: str) -> dict[str, Any] | None:
        """The job's record (a copy), or ``None`` if unknown or expired."""

    def remove(self, entryid: str) -> None:
        """Forget a job entirely."""

    def recent(self, limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """The most recently queued jobs, newest first (``supports_listing``)."""

    def query(self, state: str | None = None, name: str | None = None, offset: int = 0,
              limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """Records newest first (by enqueue time), only those in ``state`` and of the
        callable ``name`` when given, skipping ``offset`` of them (``supports_listing``)."""

    def counts(self) -> dict[str, int]:
        """How many records are kept in each state (every state of :data:`STATES`)."""

    def delete_finished(self, entryid: str) -> bool:
        """Remove a finished record; False (nothing done) if it is live or unknown."""

    def purge_finished(self, older_than: float) -> int:
        """Remove the records of jobs finished more than ``older_than`` seconds ago;
        return how many."""

    def annotate(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge :data:`ANNOTATIONS` fields into a record, finished or not (a no-op
        for an unknown id)."""

    def flush(self) -> None:
        """Send writes still buffered (a no-op for stores that buffer nothing)."""

    def startup_check(self, timeout: float = 1.0) -> str | None:
        """``None`` if the storage answers now, else why not: one short try, never raises."""


# Methods a ProgressTracker subclass must write itself (the others have defaults).
_OWN_METHODS = ('track', 'remove', 'set_progress', 'update', 'finish', 'get_record')


class ProgressTracker:
    """Base class for trackers that keep job records (see :class:`JobStore`).

    Capability flags, in the manner of django-tasks' backends:

    * ``supports_status``: keeps records, including finished jobs for ``retention`` s;
    * ``supports_listing``: can list recent jobs (:meth:`recent`; required then).

    A subclass must implement ``track``, ``remove``, ``set_progress``, ``update``,
    ``finish`` and ``get_record``: :func:`as_store` refuses it at start-up otherwise.
    """

    supports_status = True
    supports_listing = False

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        """Start tracking a queued job; ``get_progress`` answers ``(-1, None)``."""
        raise NotImplementedError

    def remove(self, entryid: str) -> None:
        """Forget a job entirely."""
        raise NotImplementedError

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Store a running job's progress; raise ``TypeError`` for data it cannot store."""
        raise NotImplementedError

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        """The 0.3 answer: ``(-1, None)``, ``(value, data)`` or ``None``."""
        return progress_from_record(self.get_record(entryid))

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into a live job's record (e.g. it started running)."""
        raise NotImplementedError

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """Record a job's final state; kept for the retention period."""
        raise NotImplementedError

    def get_record(self, entryid: str) -> dict[str, Any] | None:
        """The job's record, or ``None`` if unknown or expired."""
        raise NotImplementedError

    def recent(self, limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """The most recently queued jobs, newest first (``supports_listing``)."""
        raise OperationUnsupported(f'{type(self).__name__} cannot list jobs')

    # Defaults for trackers written before these methods: built on recent(), which
    # pages through no more than it returns; the built-in trackers override them all.

    def query(self, state: str | None = None, name: str | None = None, offset: int = 0,
              limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """A page of :meth:`recent` (by default: within what ``recent`` returns)."""
        check_page(state, name, offset, limit)
        if not self.supports_listing:
            raise OperationUnsupported(f'{type(self).__name__} cannot list jobs')
        return page_of(self.recent(UNBOUNDED), state, name, offset, limit)

    def counts(self) -> dict[str, int]:
        """Counted over :meth:`recent` (by default)."""
        if not self.supports_listing:
            raise OperationUnsupported(f'{type(self).__name__} cannot count jobs')
        return count_states(record for _, record in self.recent(UNBOUNDED))

    def delete_finished(self, entryid: str) -> bool:
        """:meth:`remove` if :meth:`get_record` says finished (by default)."""
        record = self.get_record(entryid)
        if record is None or record.get('state') not in FINISHED_STATES:
            return False
        self.remove(entryid)
        return True

    def purge_finished(self, older_than: float) -> int:
        """Not by default: a tracker that cannot list cannot find old records."""
        raise OperationUnsupported(f'{type(self).__name__} cannot purge finished jobs')

    def annotate(self, entryid: str, fields: dict[str, Any]) -> None:
        """Not by default: retries then record no links."""
        raise OperationUnsupported(f'{type(self).__name__} cannot annotate job records')

    def flush(self) -> None:
        """Nothing is buffered by default."""

    def startup_check(self, timeout: float = 1.0) -> str | None:
        """Nothing to reach by default."""
        return None


class LegacyTrackerAdapter:
    """Presents a four-method 0.3 tracker through the store interface.

    It cannot tell a finished job from an unknown one, so ``get_record`` says
    ``unknown`` for both; it keeps no results, errors or timestamps. It remembers the
    last ``remember`` finished ids so that progress set after the end (a job thread
    that outlived its record) does not bring the job back as running.
    """

    supports_status = False
    supports_listing = False

    def __init__(self, tracker: Any, remember: int = 10000):
        self.tracker = tracker
        self._remember = remember
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _is_finished(self, entryid: str) -> bool:
        with self._lock:
            return entryid in self._finished

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        self.tracker.track(entryid)

    def remove(self, entryid: str) -> None:
        self.tracker.remove(entryid)

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        check_progress_value(value)
        if not self._is_finished(entryid):
            self.tracker.set_progress(entryid, value, message)

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        return self.tracker.get_progress(entryid)

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """0.3 trackers have no 'running' state: a job shows ``(-1, None)`` until its
        first ``set_progress``."""

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self._finished[entryid] = None
            while len(self._finished) > self._remember:
                self._finished.popitem(last=False)
        self.tracker.remove(entryid)

    def get_record(self, entryid: str) -> dict[str, Any] | None:
        progress = self.tracker.get_progress(entryid)
        if progress is None:
            return {'state': 'unknown',
                    'detail': 'this tracker keeps no finished jobs: finished, or never queued'}
        if tuple(progress) == QUEUED_PROGRESS:
            return {'state': 'queued',
                    'detail': 'queued, or running without progress yet (0.3 tracker)'}
        return {'state': 'running', 'progress': progress[0], 'data': progress[1]}

    def recent(self, limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        raise OperationUnsupported(f'{type(self.tracker).__name__} cannot list jobs')

    def query(self, state: str | None = None, name: str | None = None, offset: int = 0,
              limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        raise OperationUnsupported(f'{type(self.tracker).__name__} cannot list jobs')

    def counts(self) -> dict[str, int]:
        raise OperationUnsupported(f'{type(self.tracker).__name__} cannot count jobs')

    def delete_finished(self, entryid: str) -> bool:
        raise OperationUnsupported(f'{type(self.tracker).__name__} keeps no finished jobs '
                                   'to delete')

    def purge_finished(self, older_than: float) -> int:
        raise OperationUnsupported(f'{type(self.tracker).__name__} keeps no finished jobs '
                                   'to purge')

    def annotate(self, entryid: str, fields: dict[str, Any]) -> None:
        raise OperationUnsupported(f'{type(self.tracker).__name__} keeps no job records')

    def flush(self) -> None:
        flush = getattr(self.tracker, 'flush', None)
        if callable(flush):
            flush()

    def startup_check(self, timeout: float = 1.0) -> str | None:
        return None


def startup_check(store: Any, timeout: float = 1.0) -> str | None:
    """``store.startup_check(timeout)`` for any store, including ones written before that
    method (a backend's own store, a duck-typed tracker): ``None`` if it answers or
    cannot be asked, else why not. Never raises: its answer is a start-up warning."""
    check = getattr(store, 'startup_check', None)
    if not callable(check):
        return None
    try:
        answer = check(timeout)
    except Exception as exc:
        return f'{type(store).__name__}.startup_check() failed: {exc!r}'
    return str(answer) if answer else None


REQUIRED_METHODS = ('track', 'remove', 'set_progress', 'get_progress')


def _not_overridden(tracker: ProgressTracker, names: Iterable[str]) -> list[str]:
    cls = type(tracker)
    return [name for name in names if getattr(cls, name, None) is getattr(ProgressTracker, name)]


def as_store(tracker: Any) -> JobStore:
    """The store interface for ``tracker``: itself if it keeps records, else adapted.

    Called when the queue is built. Raises ``TypeError`` naming what is missing: a
    method of the four 0.3 ones, or, for a :class:`ProgressTracker` subclass (which
    promises whole records), a method of the store interface it did not write.
    """
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(tracker, m, None))]
    if missing:
        raise TypeError(f'progress tracker {tracker!r} lacks method(s): {", ".join(missing)}')
    if isinstance(tracker, ProgressTracker) and tracker.supports_status:
        names = _OWN_METHODS + (('recent',) if tracker.supports_listing else ())
        missing = _not_overridden(tracker, names)
        if missing:
            raise TypeError(
                f'{type(tracker).__name__} subclasses ProgressTracker with supports_status = '
                f'True but does not implement {", ".join(missing)} (see '
                'tgext.asyncjob.trackers.base.JobStore); implement them, or set '
                'supports_status = False to be used as a four-method 0.3 tracker')
        return tracker
    if getattr(tracker, 'supports_status', False) and not isinstance(tracker, ProgressTracker):
        # A record-keeping tracker written without the base class: check it all.
        missing = [m for m in _OWN_METHODS if not callable(getattr(tracker, m, None))]
        if missing:
            raise TypeError(f'progress tracker {tracker!r} says supports_status but lacks '
                            f'method(s): {", ".join(missing)}')
        return tracker  # type: ignore[no-any-return]
    return LegacyTrackerAdapter(tracker)
