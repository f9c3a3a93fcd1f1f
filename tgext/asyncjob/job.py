"""What a job is while it waits and runs, and what its status says about it."""
from __future__ import annotations

import dataclasses
import enum
import re
import secrets
import threading
import time
from typing import Any, Callable


def new_job_id() -> str:
    """A 128-bit id from the operating system's CSPRNG: unguessable (ids are the only
    key to a job's status pages), unique across processes, carrying no MAC or clock."""
    return secrets.token_hex(16)


_JOB_ID = re.compile(r'[0-9a-f]{32}')


def is_job_id(value: Any) -> bool:
    """True for a string :func:`new_job_id` could have made: anything else is refused
    before it reaches a page, a Redis key or another system's jobs."""
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def callable_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable, for logs and status pages."""
    module = getattr(func, '__module__', None) or ''
    name = getattr(func, '__qualname__', None) or getattr(func, '__name__', None) or repr(func)
    return f'{module}.{name}' if module else name


class JobState(str, enum.Enum):
    """Where a job is in its life. ``UNKNOWN`` is what a 0.3-style tracker can say of a
    job that is no longer queued or running: finished, or never existed."""

    QUEUED = 'queued'
    RUNNING = 'running'
    SUCCEEDED = 'succeeded'
    FAILED = 'failed'
    CANCELLED = 'cancelled'
    NOT_FOUND = 'not_found'
    UNKNOWN = 'unknown'

    #: True for the states a job never leaves.
    finished: bool

    def __init__(self, value: str) -> None:
        # A plain attribute of each member, not a property: read on every hand-off and
        # status poll, and a property comparing members costs several times more.
        self.finished = value in ('succeeded', 'failed', 'cancelled')


def safe_str(value: Any) -> str:
    """``str(value)``, or a placeholder naming its type if that raises: recording how a
    job ended must survive any object the job hands back."""
    try:
        return str(value)
    except BaseException:  # noqa: B036 - a hostile __str__ may raise anything
        return f'<{type(value).__qualname__} object: str() failed>'


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a placeholder naming its type if that raises."""
    try:
        return repr(value)
    except BaseException:  # noqa: B036
        return f'<{type(value).__qualname__} object: repr() failed>'


@dataclasses.dataclass(frozen=True)
class JobError:
    """Why a job failed: the exception's type, message and formatted traceback.

    ``public`` is True when the message was written for the job's user (the job raised
    :class:`~tgext.asyncjob.errors.JobFailed`): pages may show it. Other messages may
    carry SQL, parameters or paths, and are shown only where tracebacks are allowed.
    """

    type: str
    message: str
    traceback: str = ''
    public: bool = False

    def as_record(self) -> dict[str, Any]:
        """The dict a tracker stores (and :meth:`JobStatus.from_record` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> JobError:
        """The error :meth:`as_record` stored (keys it does not know are ignored: a
        record written by another version must not break a status page)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        """The error of ``exc``, even if its ``__str__`` raises."""
        import traceback

        from .errors import JobFailed
        try:
            formatted = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:  # noqa: B036 - never lose the error to a broken formatter
            formatted = ''
        return cls(type(exc).__qualname__, safe_str(exc), formatted,
                   public=isinstance(exc, JobFailed))


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """Everything known of one job. Fields a tracker cannot answer are ``None``."""

    id: str
    state: JobState
    progress: int | None = None
    data: Any = None
    result: Any = None
    error: JobError | None = None
    name: str | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    detail: str = ''
    #: the callable's import path (``module:qualname``), if it has one
    func: str | None = None
    #: the call's arguments, where the store keeps them (see ``trackers.base``); pages
    #: show them only where allowed (``webaccess.arguments_allowed()``)
    args: tuple | list | None = None
    kwargs: dict[str, Any] | None = None
    #: the job a manual retry (``asyncjob_retry``) copied, and the copy made of this one
    retry_of: str | None = None
    retried_as: str | None = None

    @property
    def finished(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.state.finished

    def to_dict(self, include_traceback: bool = False,
                include_arguments: bool = False) -> dict[str, Any]:
        """A JSON-friendly dict; the traceback and the arguments only when asked for."""
        # Arguments kept by the memory tracker may be any objects: never copied unasked.
        out = dataclasses.asdict(dataclasses.replace(self, args=None, kwargs=None))
        out['state'] = self.state.value
        if self.error is not None and not include_traceback:
            out['error'].pop('traceback')
        if include_arguments:
            out['args'] = list(self.args) if self.args is not None else None
            out['kwargs'] = dict(self.kwargs) if self.kwargs is not None else None
        else:
            del out['args'], out['kwargs']
        return out

    @classmethod
    def from_record(cls, jobid: str, record: dict[str, Any]) -> JobStatus:
        """Build a status from a tracker's stored record (see ``trackers.base``)."""
        error = record.get('error')
        return cls(
            id=jobid,
            state=JobState(record.get('state', 'queued')),
            progress=record.get('progress'),
            data=record.get('data'),
            result=record.get('result'),
            error=JobError.from_record(error) if error else None,
            name=record.get('name'),
            enqueued_at=record.get('enqueued_at'),
            started_at=record.get('started_at'),
            finished_at=record.get('finished_at'),
            attempt=record.get('attempt', 0),
            detail=record.get('detail', ''),
            func=record.get('func'),
            args=record.get('args'),
            kwargs=record.get('kwargs'),
            retry_of=record.get('retry_of'),
            retried_as=record.get('retried_as'),
        )


class Job:
    """A queued call and where it is in its life.

    ``state`` is changed only by :class:`~tgext.asyncjob.lifecycle.Lifecycle`, under
    ``lock``. ``cancel_requested`` is set when someone cancels the job while it runs
    (``asyncjob_cancelled()`` reads it). ``meta`` is JSON-safe data that travels with
    the job on every backend (trace context, ...). ``options`` are the
    :class:`~tgext.asyncjob.options.JobOptions` it was queued with.
    """

    __slots__ = ('id', 'func', 'args', 'kwargs', 'name', 'enqueued_at', 'eta', 'attempt',
                 'retry', 'state', 'cancel_requested', 'started_at', 'meta', 'options',
                 'lock')

    def __init__(self, func: Callable[..., Any], args: tuple, kwargs: dict,
                 jobid: str | None = None, eta: float | None = None, retry: Any = None,
                 options: Any = None, meta: dict[str, Any] | None = None):
        self.id = jobid or new_job_id()
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.name: str | None = None
        self.enqueued_at = time.time()
        self.eta = eta
        self.attempt = 0
        self.retry = retry
        self.state = JobState.QUEUED
        self.cancel_requested = False
        self.started_at: float | None = None
        self.meta: dict[str, Any] = meta if meta is not None else {}
        self.options = options
        # Reentrant: a hook told of a change (under the lock) may cancel its own job.
        self.lock = threading.RLock()

    @property
    def func_name(self) -> str:
        """The callable's dotted name, computed only when someone asks."""
        if self.name is None:
            self.name = callable_name(self.func)
        return self.name

    @property
    def cancelled(self) -> bool:
        """0.3-era name of :attr:`cancel_requested` (read-only)."""
        return self.cancel_requested

    def __repr__(self) -> str:
        return f'<Job {self.id} {self.func_name} {self.state.value}>'
