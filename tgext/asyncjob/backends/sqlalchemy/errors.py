"""Errors of the ``sqlalchemy`` backend."""
from __future__ import annotations

from ...errors import AsyncJobError


class JobNotStored(AsyncJobError):
    """``asyncjob_perform`` could not insert the job: the database is unreachable or
    refused the row. Nothing was queued."""


class WorkerDied(AsyncJobError):
    """The worker process running the job stopped heartbeating (killed, out of
    memory, machine lost): raised nowhere, it is what retry policies are asked about
    and what a rescued job's error says."""


class LeaseLost(AsyncJobError):
    """A worker finished a job that had meanwhile been rescued from it (its heartbeat
    was late): its work is rolled back, the rescued run counts."""
