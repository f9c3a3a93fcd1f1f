"""The tracker interface, its capability flags, and the adapter for 0.3-style trackers.

The queue talks to every tracker through the *store* interface below. Trackers that
keep whole job records say so with ``supports_status = True`` and implement it
directly; any other object with the four 0.3 methods is wrapped in
:class:`LegacyTrackerAdapter`, which maps the store calls onto those four.

A record is a plain dict with some of: ``state``, ``name``, ``enqueued_at``,
``started_at``, ``finished_at``, ``attempt``, ``progress``, ``data``, ``result``,
``error`` (a dict of ``type``, ``message``, ``traceback``) and ``detail``.
"""
from __future__ import annotations

from typing import Any, Iterable

QUEUED_PROGRESS = (-1, None)


def check_progress_value(value: Any) -> None:
    """Progress values are ints, as in 0.3; a float or a string is a caller bug."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f'progress value must be an int, got {type(value).__name__}: {value!r}')


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


class ProgressTracker:
    """Base class for trackers that keep job records.

    Capability flags, in the manner of django-tasks' backends:

    * ``supports_status``: keeps records, including finished jobs for ``retention`` s;
    * ``supports_listing``: can list recent jobs (:meth:`recent`).
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
        raise NotImplementedError


class LegacyTrackerAdapter:
    """Presents a four-method 0.3 tracker through the store interface.

    It cannot tell a finished job from an unknown one, so ``get_record`` says
    ``unknown`` for both; it keeps no results, errors or timestamps.
    """

    supports_status = False
    supports_listing = False

    def __init__(self, tracker: Any):
        self.tracker = tracker

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        self.tracker.track(entryid)

    def remove(self, entryid: str) -> None:
        self.tracker.remove(entryid)

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        self.tracker.set_progress(entryid, value, message)

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        return self.tracker.get_progress(entryid)

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """0.3 trackers have no 'running' state: a job shows ``(-1, None)`` until its
        first ``set_progress``."""

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
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

    def recent(self, limit: int = 50) -> Iterable[tuple[str, dict[str, Any]]]:
        raise NotImplementedError(f'{type(self.tracker).__name__} cannot list jobs')


REQUIRED_METHODS = ('track', 'remove', 'set_progress', 'get_progress')


def as_store(tracker: Any) -> Any:
    """The store interface for ``tracker``: itself if it keeps records, else adapted."""
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(tracker, m, None))]
    if missing:
        raise TypeError(f'progress tracker {tracker!r} lacks method(s): {", ".join(missing)}')
    if getattr(tracker, 'supports_status', False):
        return tracker
    return LegacyTrackerAdapter(tracker)
