"""Keeps job records in this process's memory: the default, for one-process apps."""
from __future__ import annotations

import collections
import threading
import time
from typing import Any

from ..forking import reset_in_child
from .base import ProgressTracker, check_progress_value


class MemoryProgressTracker(ProgressTracker):
    """Job records in a dict. Finished jobs are kept ``retention`` seconds, and at most
    ``max_finished`` of them, so memory stays bounded however many jobs run."""

    supports_listing = True

    def __init__(self, retention: float = 3600, max_finished: int = 10000):
        self.retention = float(retention)
        self.max_finished = int(max_finished)
        self._live: dict[str, dict[str, Any]] = {}
        self._finished: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        # A lock held by another thread at fork() would stay held forever in the child.
        reset_in_child(self, '_reset_lock')

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        """Start tracking a queued job. ``record`` is kept as is, not copied."""
        self._live[entryid] = record if record is not None else {'state': 'queued'}

    def remove(self, entryid: str) -> None:
        """Forget a job, live or finished."""
        with self._lock:
            self._live.pop(entryid, None)
            self._finished.pop(entryid, None)

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Store progress; any Python object can be the data."""
        check_progress_value(value)
        with self._lock:
            record = self._live.get(entryid)
            if record is None:
                # A 0.3 caller may set progress for an id it tracks by hand.
                record = self._live[entryid] = {'state': 'running'}
            record['progress'] = value
            record['data'] = message

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge fields into a live record."""
        with self._lock:
            self._live.setdefault(entryid, {}).update(fields)

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """Move a job to the finished records and prune old ones."""
        now = time.time()
        with self._lock:
            record = self._live.pop(entryid, None) or {}
            record.update(fields)
            record['_expires'] = now + self.retention
            self._finished[entryid] = record
            self._prune(now)

    def _prune(self, now: float) -> None:
        finished = self._finished
        while finished and (len(finished) > self.max_finished
                            or next(iter(finished.values()))['_expires'] <= now):
            finished.popitem(last=False)

    def get_record(self, entryid: str) -> dict[str, Any] | None:
        """A copy of the job's record, or ``None``."""
        with self._lock:
            record = self._live.get(entryid)
            if record is None:
                record = self._finished.get(entryid)
                if record is None or record['_expires'] <= time.time():
                    return None
            return {k: v for k, v in record.items() if k != '_expires'}

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        """``(-1, None)`` queued, ``(value, data)`` running, ``None`` otherwise."""
        record = self._live.get(entryid)
        if record is None:
            return None
        if record.get('state', 'queued') == 'queued':
            return (-1, None)
        return (record.get('progress') or 0, record.get('data'))

    def recent(self, limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """Newest first, live and finished jobs together."""
        with self._lock:
            self._prune(time.time())
            items = [(k, dict(v)) for k, v in list(self._live.items()) + list(self._finished.items())]
        items.sort(key=lambda item: item[1].get('enqueued_at') or 0, reverse=True)
        for _, record in items:
            record.pop('_expires', None)
        return items[:limit]
