"""Errors of the ``sqlalchemy`` backend."""
from __future__ import annotations

from ...errors import AsyncJobError, WorkerDied

__all__ = ['JobNotStored', 'LeaseLost', 'WorkerDied']


class JobNotStored(AsyncJobError):
    """``asyncjob_perform`` could not insert the job: the database is unreachable or
    refused the row. Nothing was queued."""


class LeaseLost(AsyncJobError):
    """A worker finished a job that had meanwhile been rescued from it (its heartbeat
    was late): its work is rolled back, the rescued run counts."""
