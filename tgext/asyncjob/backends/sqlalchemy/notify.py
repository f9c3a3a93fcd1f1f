"""Waking the claim loop: at once for jobs queued in this process (at their commit),
through PostgreSQL ``LISTEN/NOTIFY`` for jobs queued elsewhere, else by polling.

The INSERT of a job on PostgreSQL also runs ``pg_notify('asyncjob', queue)`` (see
:func:`.rows.insert_statement`), which PostgreSQL delivers when the transaction
commits: a worker learns of the job within a millisecond of it becoming visible.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.engine import Engine

from .rows import CHANNEL

log = logging.getLogger('tgext.asyncjob')


class Listener:
    """A thread holding a psycopg 3 connection that LISTENs on ``asyncjob`` and sets
    ``wake`` for every notification (and after each reconnection, in case jobs were
    queued while it was away)."""

    def __init__(self, engine: Engine, wake: threading.Event, reconnect_delay: float = 1.0):
        self.engine = engine
        self.wake = wake
        self.reconnect_delay = reconnect_delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    @staticmethod
    def available(engine: Engine) -> bool:
        """PostgreSQL through psycopg 3 (other drivers: workers poll)."""
        return engine.dialect.name == 'postgresql' and engine.dialect.driver == 'psycopg'

    def start(self) -> None:
        """Start listening (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name='asyncjob-listen')
            self._thread.start()

    def _connect(self) -> Any:
        import psycopg
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        conn = psycopg.connect(*args, **{**kwargs, 'autocommit': True})
        conn.execute(f'LISTEN {CHANNEL}')
        return conn

    def _loop(self) -> None:
        failed = False
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:
                if not failed:
                    log.warning('asyncjob: cannot LISTEN for new jobs (polling meanwhile): %s',
                                exc)
                failed = True
                self._stop.wait(self.reconnect_delay)
                continue
            if failed:
                log.warning('asyncjob: listening for new jobs again')
            failed = False
            self.connected.set()
            self.wake.set()
            try:
                with conn:
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.wake.set()
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning('asyncjob: lost the LISTEN connection: %s', exc)
                    failed = True
            self.connected.clear()

    def stop(self) -> None:
        """Stop listening; the thread ends within half a second."""
        self._stop.set()

    def after_fork(self) -> None:
        """In a forked child: the parent's thread and socket are not ours."""
        self._thread = None
        self.connected = threading.Event()
