"""Progress writes, coalesced: a job may call ``asyncjob_set_progress`` 10,000 times
a second; the database sees the latest value of each running job once per
``interval``, all jobs in one short transaction, and the last value always lands
(:meth:`ProgressWriter.take` hands it to the job's completion, :meth:`flush` writes it).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from . import codec

log = logging.getLogger('tgext.asyncjob')


class ProgressWriter:
    """Keeps the latest progress per job and writes it from a thread of its own.

    ``write(updates)`` stores a list of ``{'jobid', 'progress', 'data'}`` (in its own
    transaction); ``interval`` is the longest a value waits before it is written.
    """

    def __init__(self, write: Callable[[list[dict[str, Any]]], None], interval: float = 0.2):
        self._write = write
        self.interval = interval
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def put(self, jobid: str, value: int, data: Any) -> None:
        """Remember ``value``/``data`` as ``jobid``'s progress (``TypeError`` at once
        for data that is not JSON); written within ``interval``."""
        update = {'jobid': jobid, 'progress': value,
                  'data': None if data is None else codec.dumps(data)}
        with self._lock:
            self._pending[jobid] = update
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name='asyncjob-progress')
                self._thread.start()
        self._wake.set()

    def take(self, jobid: str) -> dict[str, Any] | None:
        """Remove and return ``jobid``'s unwritten progress (its completion writes it)."""
        with self._lock:
            return self._pending.pop(jobid, None)

    def flush(self) -> None:
        """Write every pending value now."""
        with self._lock:
            updates, self._pending = list(self._pending.values()), {}
        if updates:
            try:
                self._write(updates)
            except Exception as exc:  # the job goes on; its next value retries
                log.warning('asyncjob: could not write job progress: %s', exc)

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            self.flush()
            # Coalesce: values arriving meanwhile wait for the next write.
            threading.Event().wait(self.interval)

    def stop(self) -> None:
        """Write what is pending and end the thread."""
        self._stopping = True
        self._wake.set()
        self.flush()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread and values are not ours."""
        self._lock = threading.Lock()
        self._pending = {}
        self._wake = threading.Event()
        self._thread = None
