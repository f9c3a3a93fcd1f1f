"""Keeps job records in this process's memory: the default, for one-process apps."""
from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

from ..forking import reset_in_child
from .base import (FINISHED_STATES, RESULT_BUDGET, ProgressTracker, approx_size,
                   check_annotations, check_page, check_progress_value, clip_error,
                   clip_text, count_states, note_truncation, page_of)


#: The parts of a finished record its size is counted from; the call's arguments.
_ARGUMENTS = ('args', 'kwargs')
_SIZED_BUT_ARGUMENTS = ('result', 'error', 'data', 'detail')
_SIZED = _SIZED_BUT_ARGUMENTS + _ARGUMENTS


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a result whose repr raises must not fail the job's end
        return f'<{type(value).__name__} object whose repr() failed>'


class MemoryProgressTracker(ProgressTracker):
    """Job records in a dict, bounded three ways: finished jobs are kept ``retention``
    seconds, at most ``max_finished`` of them, and at most about ``max_bytes`` bytes
    of them (results, errors, progress data; oldest dropped first). A result larger
    than ``max_result_bytes`` is kept as its truncated ``repr()``, an error message or
    traceback is truncated to it too, and the record's ``detail`` says so.

    Every access holds one lock, so listing never races a write.
    After ``fork()``, the child keeps the parent's finished records but shows its
    queued and running jobs as ``unknown``: only the parent runs them.
    """

    supports_listing = True

    def __init__(self, retention: float = 3600, max_finished: int = 10000, *,
                 max_bytes: int = 64 * 1024 * 1024, max_result_bytes: int = RESULT_BUDGET):
        self.retention = float(retention)
        self.max_finished = int(max_finished)
        self.max_bytes = int(max_bytes)
        self.max_result_bytes = int(max_result_bytes)
        self._live: dict[str, dict[str, Any]] = {}
        # finished records in finishing order, each with '_expires' and '_bytes'
        self._finished: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._finished_bytes = 0
        self._lock = threading.Lock()
        # unique key -> (holding job id, expiry on time.monotonic() or None)
        self._keys: dict[str, tuple[str, float | None]] = {}
        reset_in_child(self, '_after_fork')

    def _after_fork(self) -> None:
        # A lock held by another thread at fork() would stay held forever in the child.
        self._lock = threading.Lock()
        # The parent's queued and running jobs run in the parent only; the child would
        # otherwise show them "queued" forever. Keep them, as unknown, for a retention.
        parent, now = os.getppid(), time.time()
        for entryid, record in self._live.items():
            record.update(state='unknown', detail=(
                f'queued in process {parent} before this process forked from it: only '
                'that process runs it and knows how it ends'))
            self._keep_finished(entryid, record, now)
        self._live = {}
        self._keys = {}  # their holders are the parent's jobs

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        """Start tracking a queued job. ``record`` is kept as is, not copied."""
        record = record if record is not None else {'state': 'queued'}
        with self._lock:
            self._live[entryid] = record

    def track_unique(self, entryid: str, record: dict[str, Any], key: str,
                     unique_for: float | None) -> str | None:
        """:meth:`track` unless a queued or running job holds ``key`` (for at most
        ``unique_for`` s): then that job's id. One lock makes it atomic, in this
        process only."""
        now = time.monotonic()
        with self._lock:
            held = self._keys.get(key)
            if held is not None and held[0] in self._live and (held[1] is None or held[1] > now):
                return held[0]
            self._keys[key] = (entryid, None if unique_for is None else now + unique_for)
            self._live[entryid] = record
        return None

    def release_unique(self, entryid: str, key: str) -> None:
        """Let ``key`` go if ``entryid`` still holds it (its job has ended)."""
        with self._lock:
            if self._keys.get(key, ('',))[0] == entryid:
                del self._keys[key]

    def remove(self, entryid: str) -> None:
        """Forget a job, live or finished."""
        with self._lock:
            self._live.pop(entryid, None)
            record = self._finished.pop(entryid, None)
            if record is not None:
                self._finished_bytes -= record['_bytes']

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Store progress; any Python object can be the data. Ignored once finished."""
        check_progress_value(value)
        with self._lock:
            if entryid in self._finished:
                return  # finished is final
            record = self._live.get(entryid)
            if record is None:
                # A 0.3 caller may set progress for an id it tracks by hand.
                record = self._live[entryid] = {'state': 'running'}
            record['progress'] = value
            record['data'] = message

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge fields into a live record. Ignored once finished."""
        with self._lock:
            if entryid not in self._finished:
                self._live.setdefault(entryid, {}).update(fields)

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """Move a job to the finished records, within its byte budget, and prune old
        ones. A job already finished keeps its first final state."""
        cut: list[str] = []
        if fields.get('result') is not None or fields.get('error') is not None:
            fields = dict(fields)  # the caller's dict stays as it was
            if fields.get('result') is not None:
                fields['result'] = self._clip(fields['result'], 'result', cut)
            if fields.get('error') is not None:
                fields['error'], error_cut = clip_error(fields['error'], self.max_result_bytes)
                cut += error_cut
        now = time.time()
        with self._lock:
            if entryid in self._finished:
                return
            record = self._live.pop(entryid, None) or {}
            if 'data' in record:
                record['data'] = self._clip(record['data'], 'progress data', cut)
            record.update(fields)
            arguments_size = self._drop_big_arguments(record)
            note_truncation(record, cut, self.max_result_bytes)
            self._keep_finished(entryid, record, now, arguments_size)

    def _drop_big_arguments(self, record: dict[str, Any]) -> int:
        """Drop the call's arguments from ``record`` if they hold more than the result
        budget; return the bytes of those kept (0 if dropped)."""
        # Kept past the job's end for retries and the jobs page, but within the result
        # budget: a job's big input must not be held for the whole retention.
        budget = self.max_result_bytes
        size = 0
        for name in _ARGUMENTS:
            value = record.get(name)
            if value is not None:
                size += approx_size(value, budget)
        if size > budget:
            record.pop('args', None)
            record.pop('kwargs', None)
            return 0
        return size  # counted to the end: within the budget, the walk was not cut short

    def _clip(self, value: Any, what: str, cut: list[str]) -> Any:
        """``value``, or its (truncated) repr() if it holds more than the budget."""
        budget = self.max_result_bytes
        if value is None or approx_size(value, budget) <= budget:
            return value
        text, size = clip_text(_safe_repr(value), budget)
        cut.append(f'{what} kept as its repr()' + (f', truncated from {size} bytes' if size else ''))
        return text

    def _keep_finished(self, entryid: str, record: dict[str, Any], now: float,
                       arguments_size: int | None = None) -> None:
        # Called with the lock held (or in a fresh child). Each part is within its
        # budget by now, so sizing is cheap. ``arguments_size``: the bytes of args and
        # kwargs, when the caller has just counted them (not counted twice per job).
        size = 0
        names: tuple[str, ...] = _SIZED
        if arguments_size is not None:
            size, names = arguments_size, _SIZED_BUT_ARGUMENTS
        for name in names:
            value = record.get(name)
            if value is not None:
                size += approx_size(value, self.max_bytes)
        record['_expires'] = now + self.retention
        record['_bytes'] = size
        self._finished[entryid] = record
        self._finished_bytes += size
        self._prune(now)

    def _prune(self, now: float) -> None:
        finished = self._finished
        while finished:
            oldest = next(iter(finished.values()))
            # The newest record is kept whatever its size, for whoever waits on it.
            if (len(finished) <= self.max_finished and oldest['_expires'] > now
                    and (self._finished_bytes <= self.max_bytes or len(finished) == 1)):
                break
            finished.popitem(last=False)
            self._finished_bytes -= oldest['_bytes']

    @staticmethod
    def _public(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k not in ('_expires', '_bytes')}

    def get_record(self, entryid: str) -> dict[str, Any] | None:
        """A copy of the job's record, or ``None``."""
        with self._lock:
            record = self._live.get(entryid)
            if record is None:
                record = self._finished.get(entryid)
                if record is None or record['_expires'] <= time.time():
                    return None
            return self._public(record)

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        """``(-1, None)`` queued, ``(value, data)`` running, ``None`` otherwise."""
        with self._lock:
            record = self._live.get(entryid)
            if record is None:
                return None
            state = record.get('state', 'queued')
            if state == 'queued':
                return (-1, None)
            if state in FINISHED_STATES:
                return None
            return (record.get('progress') or 0, record.get('data'))

    def recent(self, limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """Newest first, live and finished jobs together."""
        return self._newest_first()[:limit]

    def _newest_first(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            self._prune(time.time())
            items = [(k, self._public(v))
                     for k, v in list(self._live.items()) + list(self._finished.items())]
        items.sort(key=lambda item: item[1].get('enqueued_at') or 0, reverse=True)
        return items

    def query(self, state: str | None = None, name: str | None = None, offset: int = 0,
              limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """A page of every record kept, newest first (a sort of all of them: the memory
        tracker holds at most ``max_finished`` finished ones)."""
        check_page(state, name, offset, limit)
        return page_of(self._newest_first(), state, name, offset, limit)

    def counts(self) -> dict[str, int]:
        """Records kept per state."""
        with self._lock:
            self._prune(time.time())
            return count_states(list(self._live.values()) + list(self._finished.values()))

    def delete_finished(self, entryid: str) -> bool:
        """Forget a finished record; False for a live or unknown job."""
        with self._lock:
            record = self._finished.pop(entryid, None)
            if record is None:
                return False
            self._finished_bytes -= record['_bytes']
            return True

    def purge_finished(self, older_than: float) -> int:
        """Forget the jobs finished more than ``older_than`` seconds ago."""
        cutoff = time.time() - older_than
        with self._lock:
            old = [k for k, v in self._finished.items()
                   if v.get('finished_at') is not None and v['finished_at'] < cutoff]
            for entryid in old:
                self._finished_bytes -= self._finished.pop(entryid)['_bytes']
        return len(old)

    def annotate(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge link fields into a live or finished record."""
        check_annotations(fields)
        with self._lock:
            record = self._live.get(entryid) or self._finished.get(entryid)
            if record is not None:
                record.update(fields)
