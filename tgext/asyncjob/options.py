"""How to queue one job, kept apart from the job's own arguments."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .retry import Retry


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """How to queue a job, kept apart from the job's own arguments (so that
    ``asyncjob_perform(fn, retries=3)`` still passes ``retries`` to ``fn``).

    A job carries the options it was queued with (``job.options``); a backend reads
    only those its capability flags say it honours, and ``perform`` rejects the rest.
    """

    delay: float | None = None
    at: Any = None
    on_commit: bool | None = None
    retry: Retry | None = None
    # -- issue 13, concurrency and time limits (see concurrency.py, timelimits.py) --
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    time_limit: float | None = None

    def perform(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        """:func:`~tgext.asyncjob.asyncjob_perform` with these options; returns the job
        id at once."""
        from . import current_queue
        return current_queue().perform(callable, args, kwargs, delay=self.delay, at=self.at,
                                       on_commit=self.on_commit, retry=self.retry,
                                       concurrency_key=self.concurrency_key,
                                       concurrency_limit=self.concurrency_limit,
                                       time_limit=self.time_limit)
