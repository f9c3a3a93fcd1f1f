"""Checks for numbers given at the call site, construction or start-up.

A NaN compares false with everything, so ``delay < 0`` lets it through; an infinite
or astronomical number of seconds overflows the clock functions of ``threading``
later, in a thread nobody watches. These checks reject both where the value is given.
"""
from __future__ import annotations

import math
from typing import Any

#: The longest delay, backoff or timeout accepted, in seconds (about 100 years). Far
#: below ``threading.TIMEOUT_MAX``, far above any real schedule.
MAX_SECONDS = 100 * 365.25 * 86400


def seconds(name: str, value: Any, *, none_ok: bool = False) -> float | None:
    """``value`` as a float number of seconds in [0, :data:`MAX_SECONDS`].

    ``None`` passes when ``none_ok``; ``TypeError`` for a non-number (bools included),
    ``ValueError`` for NaN, infinities, negatives and absurdly large values.
    """
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number of seconds, got {type(value).__name__}: '
                        f'{value!r}')
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise ValueError(f'{name} must be a finite number of seconds between 0 and '
                         f'{MAX_SECONDS:.0f}, got {value!r}')
    return float(value)


def count(name: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``; ``TypeError`` for anything not an int
    (``1.5``, ``'3'``, ``True``), ``ValueError`` below the minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {type(value).__name__}: {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be at least {minimum}, got {value!r}')
    return value


def number(name: str, value: Any, *, minimum: float) -> float:
    """``value`` as a finite float >= ``minimum`` (e.g. a backoff factor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number, got {type(value).__name__}: {value!r}')
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f'{name} must be a finite number >= {minimum}, got {value!r}')
    return float(value)
