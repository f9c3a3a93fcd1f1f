"""What goes into a job row and comes out of it: JSON, and callables by import path.

A row must never be able to run code in a worker, so nothing is pickled: arguments,
results, progress data and retry policies are JSON (stdlib ``json``), and the callable
is a ``module:qualname`` the worker imports, checked at the call site.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

from ... import importpath
from ...strictjson import dumps
from ...importpath import THREADS_HINT as _HINT, import_callable
from ...retry import Retry


def loads(text: str | None) -> Any:
    """The value stored by :func:`dumps`; ``None`` for a NULL column."""
    return None if text is None else json.loads(text)


def dump_arguments(name: str, args: tuple | list, kwargs: dict[str, Any]) -> tuple[str, str]:
    """The job's arguments as JSON; ``TypeError`` at the call site if they are not
    plain data. A tuple comes back as a list, as JSON has no tuples."""
    try:
        return dumps(list(args)), dumps(kwargs)
    except TypeError as exc:
        raise TypeError(f'the sqlalchemy backend stores job arguments as JSON, and those '
                        f'of {name} are not ({exc}); pass plain data (ids, strings, numbers, '
                        f'lists, dicts with string keys){_HINT}') from None


def callable_path(func: Callable[..., Any]) -> str:
    """``module:qualname`` that a worker process imports ``func`` by (see
    :mod:`tgext.asyncjob.importpath`)."""
    return importpath.callable_path(func, 'sqlalchemy')


def dump_retry(policy: Retry | None) -> str | None:
    """A :class:`Retry` as JSON, its exception types by import path."""
    if policy is None:
        return None
    for value in (policy.backoff, policy.factor, policy.max_backoff):
        if not math.isfinite(value):
            raise ValueError(f'the sqlalchemy backend stores retry policies as JSON: '
                             f'{policy!r} has a non-finite number')
    return dumps({'on': [callable_path(t) for t in policy.on],
                  'max_retries': int(policy.max_retries), 'backoff': policy.backoff,
                  'factor': policy.factor, 'max_backoff': policy.max_backoff,
                  'jitter': policy.jitter})


def load_retry(text: str | None) -> Retry | None:
    """The :class:`Retry` stored by :func:`dump_retry`."""
    data = loads(text)
    if data is None:
        return None
    data['on'] = tuple(import_callable(p) for p in data['on'])
    return Retry(**data)
