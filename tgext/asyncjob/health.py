"""Is this deployment able to run jobs now? The answer of ``python -m tgext.asyncjob
jobs health`` (a container's health check): the tracker answers, and, for backends
with worker processes, at least one worker is alive.

* ``sqlalchemy``: a worker is alive while its ``asyncjob_workers`` row has a heartbeat
  younger than ``lease_timeout`` (the same rule that rescues a dead worker's jobs);
* ``rq``: a worker is registered for the backend's RQ queue (RQ forgets a stopped
  worker at once, a killed one when its heartbeat key expires);
* ``threads``: the workers are the web process's own threads, which another process
  cannot see: only the tracker is checked, and the answer says so.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .errors import TrackerUnavailable
from .trackers.base import startup_check


@dataclasses.dataclass(frozen=True)
class Health:
    """The outcome of :func:`check`. ``reason`` is one line, for the exit message."""

    ok: bool
    reason: str
    backend: str
    tracker: str
    workers: list[str] | None = None  #: ``None``: not looked for (threads backend)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return dataclasses.asdict(self)


def check(queue: Any, backend: str, timeout: float = 2.0, min_workers: int = 1) -> Health:
    """Check ``queue``'s tracker (one try within ``timeout`` s) and its live workers
    (at least ``min_workers``); ``backend`` is its short name, for the messages."""
    tracker = type(queue.store).__name__

    def answer(ok: bool, reason: str, workers: list[str] | None = None) -> Health:
        return Health(ok, reason, backend, tracker, workers)

    problem = startup_check(queue.store, timeout)
    if problem:
        return answer(False, f'the tracker is unreachable: {problem}')
    try:
        workers = queue.backend.live_workers()
    except TrackerUnavailable as exc:
        return answer(False, f'the {backend} backend cannot be reached: {exc}')
    if workers is None:
        return answer(True, f'{tracker} answers; the {backend} backend runs jobs in the web '
                      "process's own threads, which this process cannot see: only the "
                      'tracker was checked')
    if len(workers) < min_workers:
        found = 'no worker is alive' if not workers else f'only {len(workers)} worker(s) alive'
        return answer(False, f'{found} for the {backend} backend (need {min_workers}): '
                      'start python -m tgext.asyncjob worker', workers)
    return answer(True, f'{tracker} answers; {len(workers)} {backend} worker(s) alive',
                  workers)
