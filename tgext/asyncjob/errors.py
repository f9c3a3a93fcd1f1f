"""Exceptions raised by tgext.asyncjob at the call site."""
from __future__ import annotations


class AsyncJobError(RuntimeError):
    """Base class of every error tgext.asyncjob raises on purpose."""


class NoWorkerError(AsyncJobError):
    """No job queue is running for the current application or process."""


class NotInJobError(AsyncJobError):
    """A job-only call (like ``asyncjob_set_progress``) was made outside a job."""


class QueueFull(AsyncJobError):
    """The bounded queue stayed full for longer than the enqueue timeout."""


class QueueStopped(AsyncJobError):
    """The queue was stopped: it accepts no more jobs."""


class AlreadyStarted(AsyncJobError):
    """A worker was already started for these application globals."""


class TrackerUnavailable(AsyncJobError):
    """The progress tracker's storage (e.g. Redis) cannot be reached."""


class JobNotFound(AsyncJobError, LookupError):
    """No record of this job: never queued, or its record expired or was deleted."""


class JobStateError(AsyncJobError, ValueError):
    """The job is not in a state the operation applies to (e.g. deleting a running
    job, retrying one that succeeded). ``state`` is the state it is in."""

    def __init__(self, message: str, state: str | None = None) -> None:
        super().__init__(message)
        self.state = state


class NotRetryable(AsyncJobError):
    """A retry cannot rebuild the job's call: its record keeps no importable callable
    or no arguments (arguments that are not JSON, a lambda, an old record...)."""


class OperationUnsupported(AsyncJobError, NotImplementedError):
    """The job store cannot do this (a 0.3-style tracker lists nothing; a custom
    tracker that did not implement the method)."""


class UnsupportedOption(AsyncJobError, ValueError):
    """The queue's backend cannot honour an option given for this job (see the
    capability flags of :class:`~tgext.asyncjob.backends.base.Backend`)."""


class WorkerDied(AsyncJobError):
    """The process running a job ended before the job did (killed, out of memory,
    machine lost). Raised nowhere: it is what a retry policy is asked about for such a
    run (``Retry(on=(WorkerDied,))`` works on every backend) and what the record says."""


class TimeLimitExceeded(BaseException):
    """A job ran past its time limit (``asyncjob_options(time_limit=...)`` or the
    ``asyncjob.time_limit`` setting); what the record of such a job says.

    In worker processes it is raised inside the job's code, and a ``BaseException``
    (as Dramatiq's time limit is), so that ``except Exception`` in a job does not
    swallow it; for the same reason a retry policy retries it only if it names it
    (``Retry(on=(TimeLimitExceeded,))``). See README "Time limits".
    """


class JobFailed(Exception):
    """Raise it in a job to fail it with a message meant for the job's user.

    The message is shown on the status page and JSON even where tracebacks are not
    allowed (``JobError.public`` is True); any other exception's message is hidden
    there, since it may carry SQL, parameters or paths. The job is not retried unless
    its retry policy names ``JobFailed``.
    """
