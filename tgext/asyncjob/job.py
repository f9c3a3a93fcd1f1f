"""What a job is while it waits and runs, and what its status says about it."""
from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import threading
import time
from typing import Any, Callable


_IDS_PER_BLOCK = 256
_counter = itertools.count()
_block: tuple[int, bytes] = (-1, b'')
_block_lock = threading.Lock()


def _forget_random_after_fork() -> None:
    # A child must never hand out ids its parent still holds in its buffer.
    global _counter, _block, _block_lock
    _counter, _block, _block_lock = itertools.count(), (-1, b''), threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_random_after_fork)


def new_job_id() -> str:
    """A 128-bit id from the kernel's CSPRNG (``os.urandom``): unguessable, unique
    across processes, carrying no MAC address or clock.

    Random bytes are read 4 KiB at a time, one block per 256 ids; ``next()`` on the
    counter is atomic, so each id's slice of a block belongs to one caller only. A
    caller that finds the block already replaced by a newer one reads its own 16
    bytes instead, and a forked child starts with none of its parent's bytes.
    """
    global _block
    generation, slot = divmod(next(_counter), _IDS_PER_BLOCK)
    block = _block
    if block[0] != generation:
        if block[0] < generation:
            with _block_lock:
                if _block[0] < generation:
                    _block = (generation, os.urandom(16 * _IDS_PER_BLOCK))
                block = _block
        if block[0] != generation:
            return os.urandom(16).hex()
    start = slot * 16
    return block[1][start:start + 16].hex()


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

    @property
    def finished(self) -> bool:
        """True for the states a job never leaves."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclasses.dataclass(frozen=True)
class JobError:
    """Why a job failed: the exception's type, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ''

    def as_record(self) -> dict[str, str]:
        """The dict a tracker stores (and :meth:`JobStatus.from_record` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        import traceback
        return cls(type(exc).__qualname__, str(exc),
                   ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


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

    @property
    def finished(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.state.finished

    def to_dict(self, include_traceback: bool = False) -> dict[str, Any]:
        """A JSON-friendly dict; the traceback only when asked for."""
        out = dataclasses.asdict(self)
        out['state'] = self.state.value
        if self.error is not None and not include_traceback:
            out['error'].pop('traceback')
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
            error=JobError(**error) if error else None,
            name=record.get('name'),
            enqueued_at=record.get('enqueued_at'),
            started_at=record.get('started_at'),
            finished_at=record.get('finished_at'),
            attempt=record.get('attempt', 0),
            detail=record.get('detail', ''),
        )


class Job:
    """A queued call. ``__slots__`` because one is made per enqueue, on the request's path."""

    __slots__ = ('id', 'func', 'args', 'kwargs', 'name', 'enqueued_at', 'eta', 'attempt',
                 'retry', 'cancelled', 'started_at')

    def __init__(self, func: Callable[..., Any], args: tuple, kwargs: dict,
                 jobid: str | None = None, eta: float | None = None, retry: Any = None):
        self.id = jobid or new_job_id()
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.name: str | None = None
        self.enqueued_at = time.time()
        self.eta = eta
        self.attempt = 0
        self.retry = retry
        self.cancelled = False
        self.started_at: float | None = None

    @property
    def func_name(self) -> str:
        """The callable's dotted name, computed only when someone asks."""
        if self.name is None:
            self.name = callable_name(self.func)
        return self.name

    def __repr__(self) -> str:
        return f'<Job {self.id} {self.func_name}>'
