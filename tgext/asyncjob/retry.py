"""Retry policies: which errors to retry, how often, and how long to wait between tries."""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, TypeVar

from . import checks
from .errors import JobFailed

F = TypeVar('F', bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Retry:
    """Retry a failed job on ``on`` exception types, at most ``max_retries`` times.
    :class:`~tgext.asyncjob.errors.JobFailed` is retried only if ``on`` names it.

    The n-th retry waits ``min(max_backoff, backoff * factor ** (n - 1))`` seconds,
    reduced by up to half at random when ``jitter`` is on ("equal jitter": retries of
    many jobs that failed together spread out, yet each still waits at least half).
    Each attempt runs in a fresh transaction.
    """

    on: tuple[type[BaseException], ...] = (Exception,)
    max_retries: int = 3
    backoff: float = 1.0
    factor: float = 2.0
    max_backoff: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            raise TypeError(f'Retry(on=...) takes exception types, got {self.on!r}')
        object.__setattr__(self, 'on', on)
        # Checked here, not when a job fails: a bad value then would escape the
        # job's error handling in a worker thread.
        checks.count('Retry max_retries', self.max_retries)
        checks.seconds('Retry backoff', self.backoff)
        checks.number('Retry factor', self.factor, minimum=1)
        checks.seconds('Retry max_backoff', self.max_backoff)
        if not isinstance(self.jitter, bool):
            raise TypeError(f'Retry jitter must be True or False, got {self.jitter!r}')

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """True if ``error`` on attempt number ``attempt`` (1 = first run) is retried."""
        if isinstance(error, JobFailed) and not any(issubclass(t, JobFailed) for t in self.on):
            return False  # a failure meant for the user is final unless named
        return attempt <= self.max_retries and isinstance(error, self.on)

    def bounds(self, retry_number: int) -> tuple[float, float]:
        """The (shortest, longest) wait before retry number ``retry_number`` (1-based)."""
        try:
            grown = self.backoff * self.factor ** (retry_number - 1)
        except OverflowError:  # factor ** n beyond a float: the cap applies anyway
            grown = self.max_backoff
        ceiling = min(self.max_backoff, grown)
        return (ceiling / 2 if self.jitter else ceiling, ceiling)

    def delay(self, retry_number: int) -> float:
        """A wait before retry number ``retry_number``, within :meth:`bounds`."""
        low, high = self.bounds(retry_number)
        return random.uniform(low, high) if high > low else high


def retry(on: Any = (Exception,), max_retries: int = 3, backoff: float = 1.0,
          factor: float = 2.0, max_backoff: float = 300.0, jitter: bool = True) -> Callable[[F], F]:
    """Decorator: every job of this callable retries with this policy, unless the
    call gives its own ``retry=`` through :func:`tgext.asyncjob.asyncjob_options`."""
    policy = Retry(on if isinstance(on, tuple) else (on,), max_retries, backoff, factor,
                   max_backoff, jitter)

    def mark(func: F) -> F:
        func.__asyncjob_retry__ = policy  # type: ignore[attr-defined]
        return func
    return mark


def require_retry(retry: Any) -> None:
    """Raise ``TypeError`` unless ``retry`` is ``None`` or a :class:`Retry`."""
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f'retry must be a tgext.asyncjob.Retry, got {retry!r}')


def policy_for(job_retry: Retry | None, func: Callable[..., Any]) -> Retry | None:
    """The job's own policy, else its callable's, else none."""
    return job_retry if job_retry is not None else getattr(func, '__asyncjob_retry__', None)
