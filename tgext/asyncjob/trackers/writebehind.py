"""Write-behind for a tracker's worker-side writes: batched, one round trip per batch.

A job's start and end are written by the worker; nobody waits on those writes, so
they are queued here and sent together by one thread. With a backlog, many jobs'
writes share a round trip; an idle queue still sends each within ``linger`` seconds.
Writes keep their order, so a job's end never lands before its start.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..forking import reset_in_child

log = logging.getLogger('tgext.asyncjob')


class WriteBehind:
    """Collects writes and hands each batch to ``send(batch)`` from a daemon thread."""

    def __init__(self, send: Callable[[list[Any]], None], linger: float = 0.002):
        self.send = send
        self.linger = linger
        self._reset()
        # The child has no flusher thread, and the parent sends its own writes.
        reset_in_child(self, '_reset')

    def _reset(self) -> None:
        self._pending: list[Any] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._sending = False

    def add(self, write: Any) -> None:
        """Queue one write; the flusher thread sends it shortly."""
        with self._cond:
            self._pending.append(write)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name='asyncjob-tracker-writer')
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._pending:
                    cond.wait()
                cond.wait(self.linger)  # let a few more writes join this batch
                batch, self._pending = self._pending, []
                self._sending = True
            try:
                self._send(batch)
            finally:
                with cond:
                    self._sending = False
                    cond.notify_all()

    def _send(self, batch: list[Any]) -> None:
        try:
            self.send(batch)
        except Exception as exc:
            # The outage itself is reported once by the queue, whose next writes are
            # made synchronously by the tracker; this only says what it cost.
            log.info('asyncjob tracker: %d buffered write(s) dropped: %s', len(batch), exc)

    def flush(self, timeout: float = 10.0) -> None:
        """Send everything queued so far, and wait for a batch in flight."""
        with self._cond:
            batch, self._pending = self._pending, []
            self._cond.wait_for(lambda: not self._sending, timeout)
        if batch:
            self._send(batch)
