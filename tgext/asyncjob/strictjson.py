"""JSON that comes back as it went in, or ``TypeError``: for values another process
will use again (a job's arguments in a row or a Redis record), where
:mod:`.jsonsafe`'s best effort for display would silently change them."""
from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """Strict JSON: ``TypeError`` for anything that would not come back as it went
    in (non-string keys, which ``json`` turns into strings; sets; objects) or that
    other readers reject (NaN, infinities). Tuples are written as lists."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(',', ':'),
                          default=_refuse)
    except ValueError as exc:  # NaN / inf, circular data
        raise TypeError(str(exc)) from None
    _check_keys(value)
    return text


def _refuse(value: Any) -> Any:
    raise TypeError(f'{type(value).__name__} is not JSON: {value!r:.80}')


def _check_keys(value: Any) -> None:
    # json.dumps writes {1: 2} as {"1": 2}: the job would get other arguments.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f'dict key {key!r} is not a string: JSON keys are strings')
            _check_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_keys(item)
