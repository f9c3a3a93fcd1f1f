"""One thread per worker process for its periodic duties: the heartbeat, handing
cancel requests to running jobs, rescuing dead workers' jobs, pruning old ones.

Each duty runs every ``interval`` seconds; a failing duty (database down) is logged
once per outage and tried again next time; the others go on.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger('tgext.asyncjob')


class Duty:
    """``func`` to run every ``interval`` seconds (first at start)."""

    def __init__(self, name: str, interval: float, func: Callable[[], object]):
        self.name = name
        self.interval = interval
        self.func = func
        self.due = 0.0
        self.failing = False

    def run(self, now: float) -> None:
        self.due = now + self.interval
        try:
            self.func()
        except Exception as exc:
            if not self.failing:
                log.warning('asyncjob: %s failed, trying again every %.3g s: %s',
                            self.name, self.interval, exc)
            self.failing = True
        else:
            if self.failing:
                log.warning('asyncjob: %s works again', self.name)
            self.failing = False


class Monitor:
    """Runs its :class:`Duty` list in a daemon thread until :meth:`stop`."""

    def __init__(self, duties: list[Duty]):
        self.duties = duties
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name='asyncjob-monitor')
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for duty in self.duties:
                if duty.due <= now:
                    duty.run(now)
            next_due = min(d.due for d in self.duties)
            self._stop.wait(max(next_due - time.time(), 0.01))

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (after the duty it is running, if any)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
