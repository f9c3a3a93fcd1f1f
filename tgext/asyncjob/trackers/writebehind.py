"""Write-behind for a tracker's writes: one ordered queue, sent in batches.

A job's start and end are written by the worker; nobody waits on those writes, so
they wait here and are sent together by one thread. With a backlog, many jobs'
writes share a round trip; an idle queue still sends each within ``linger`` seconds.

Order is structural: every write of a job after its first goes through this one
FIFO, and batches are taken and sent under one lock, so no batch overtakes an
earlier one. A write the caller must see done (progress, removal) is sent with
:meth:`WriteBehind.send`, *behind* whatever waits: a job's progress can never reach
the server before its "running", nor its "running" after its end.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..forking import reset_in_child

log = logging.getLogger('tgext.asyncjob')


class WriteBehind:
    """Collects writes and hands each batch, in order, to ``send(batch)``."""

    def __init__(self, send: Callable[[list[Any]], None], linger: float = 0.002):
        self.send_batch = send
        self.linger = linger
        self._reset()
        # The child has no flusher thread, and the parent sends its own writes.
        reset_in_child(self, '_reset')

    def _reset(self) -> None:
        self._pending: list[Any] = []
        self._cond = threading.Condition()
        # Held while a batch is taken and sent: batches leave in the order taken.
        self._sending = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, write: Any) -> None:
        """Queue one write; the flusher thread sends it shortly."""
        with self._cond:
            self._pending.append(write)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name='asyncjob-tracker-writer')
                self._thread.start()
            self._cond.notify()

    def _take(self) -> list[Any]:
        with self._cond:
            batch, self._pending = self._pending, []
        return batch

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._pending:
                    cond.wait()
                cond.wait(self.linger)  # let a few more writes join this batch
            with self._sending:
                batch = self._take()
                if batch:
                    self._send_logged(batch)

    def _send_logged(self, batch: list[Any]) -> None:
        try:
            self.send_batch(batch)
        except Exception as exc:
            # The outage itself is reported once by the queue, whose next writes are
            # made synchronously by the tracker; this only says what it cost.
            log.info('asyncjob tracker: %d buffered write(s) dropped: %s', len(batch), exc)

    def send(self, write: Any) -> None:
        """Send everything queued, then ``write``, now and in this thread; errors are
        the caller's (the whole batch is lost with them)."""
        with self._sending:
            self.send_batch(self._take() + [write])

    def flush(self, timeout: float = 10.0) -> None:
        """Send everything queued so far, after a batch in flight (waiting for that at
        most ``timeout`` s); errors are logged, not raised."""
        if not self._sending.acquire(timeout=timeout):
            return
        try:
            batch = self._take()
            if batch:
                self._send_logged(batch)
        finally:
            self._sending.release()
