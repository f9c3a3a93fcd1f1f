"""How to queue one job, kept apart from the job's own arguments."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from . import checks
from .retry import Retry

# -- unique jobs and priorities (issue 13, sections 2 and 5) ---------------------------
#: The priorities accepted: higher runs first; jobs without one have priority 0.
MIN_PRIORITY, MAX_PRIORITY = -100, 100
#: The longest unique key accepted (the ``sqlalchemy`` backend's key column).
MAX_UNIQUE_KEY = 255


def check_priority(priority: Any) -> None:
    """``TypeError`` unless ``priority`` is ``None`` or an int (not a bool),
    ``ValueError`` outside :data:`MIN_PRIORITY` .. :data:`MAX_PRIORITY`."""
    if priority is None:
        return
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f'priority must be an int, got {type(priority).__name__}: {priority!r}')
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f'priority must be between {MIN_PRIORITY} and {MAX_PRIORITY} '
                         f'(higher runs first), got {priority!r}')


def check_unique(unique_key: Any, unique_for: Any) -> None:
    """``unique_key``: a non-empty str of at most :data:`MAX_UNIQUE_KEY` characters;
    ``unique_for``: seconds > 0, and only with a ``unique_key``."""
    if unique_key is None:
        if unique_for is not None:
            raise TypeError('unique_for needs a unique_key: it says how long the key is held')
        return
    if not isinstance(unique_key, str):
        raise TypeError(f'unique_key must be a str, got {type(unique_key).__name__}: '
                        f'{unique_key!r}')
    if not 0 < len(unique_key) <= MAX_UNIQUE_KEY:
        raise ValueError(f'unique_key must have 1 to {MAX_UNIQUE_KEY} characters, got '
                         f'{len(unique_key)}')
    if checks.seconds('unique_for', unique_for, none_ok=True) == 0:
        raise ValueError('unique_for must be more than 0 seconds (or None: the key is held '
                         'until the job ends)')


def check_concurrency(key: Any, limit: Any) -> None:
    """``TypeError``/``ValueError`` unless both are given, a non-empty ``str`` key (at
    most 255 characters, the column's size) and an ``int`` limit >= 1, or neither."""
    if key is None and limit is None:
        return
    if key is None or limit is None:
        raise TypeError('give concurrency_key and concurrency_limit together')
    if not isinstance(key, str) or not key:
        raise TypeError(f'concurrency_key must be a non-empty str, got {key!r}')
    if len(key) > 255:
        raise ValueError(f'concurrency_key must be at most 255 characters, got {len(key)}')
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f'concurrency_limit must be an int, got {type(limit).__name__}: '
                        f'{limit!r}')
    if limit < 1:
        raise ValueError(f'concurrency_limit must be at least 1, got {limit!r}')


def check_time_limit(value: Any) -> float | None:
    """``value`` as a time limit in seconds: ``None`` (no limit) or a finite number
    > 0; ``TypeError``/``ValueError`` otherwise, at the call site."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'time_limit must be a number of seconds, got '
                        f'{type(value).__name__}: {value!r}')
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f'time_limit must be a finite number of seconds > 0, got {value!r}')
    return float(value)
# --------------------------------------------------------------------------------------


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
    # unique jobs and priorities (README "Unique jobs", "Priorities")
    unique_key: str | None = None
    unique_for: float | None = None
    priority: int | None = None
    # concurrency and time limits (README "Concurrency limits", "Time limits")
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    time_limit: float | None = None

    def __post_init__(self) -> None:
        check_unique(self.unique_key, self.unique_for)
        check_priority(self.priority)
        check_concurrency(self.concurrency_key, self.concurrency_limit)
        object.__setattr__(self, 'time_limit', check_time_limit(self.time_limit))

    def perform(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        """:func:`~tgext.asyncjob.asyncjob_perform` with these options; returns the job
        id at once (with a ``unique_key``: the id of the live job holding the key, if
        one does)."""
        from . import current_queue
        return current_queue().perform(callable, args, kwargs, options=self)
