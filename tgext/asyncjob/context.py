"""Which job, of which queue, the current thread is running (for progress calls)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import Job
    from .queue import JobQueue


class _Running(threading.local):
    # Class defaults: reading them on a thread that never ran a job raises nothing.
    job: Job | None = None
    queue: JobQueue | None = None


_running = _Running()


def running_job() -> Job | None:
    """The job the current thread is running, if any."""
    return _running.job


def running_queue() -> JobQueue | None:
    """The queue whose job the current thread is running, if any."""
    return _running.queue


def enter_job(q: JobQueue, job: Job) -> None:
    """Make ``job`` the current thread's running job (for progress calls)."""
    _running.job = job
    _running.queue = q


def leave_job() -> None:
    """The current thread no longer runs a job."""
    _running.job = None
    _running.queue = None
