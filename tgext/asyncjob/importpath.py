"""Naming a callable so that another process can import it (rq, sqlalchemy).

A job that runs in a worker process travels as ``module:qualname``; only a callable
that this name finds again can go. Everything else is refused at the call site.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

#: Appended to every refusal: the in-process backend takes any callable.
THREADS_HINT = ('; or run it in the web process with the threads backend '
                '(asyncjob.backend = threads)')


def callable_path(func: Callable[..., Any], backend: str) -> str:
    """``module:qualname`` that a worker process imports ``func`` by.

    ``TypeError`` naming ``backend`` for lambdas, closures, ``__main__`` functions,
    bound methods of instances, partials and other callable objects.
    """
    path, why = _path_or_refusal(func)
    if path is None:
        raise TypeError(f'the {backend} backend cannot queue {func!r}: {why}{THREADS_HINT}')
    return path


def importable_path(func: Callable[..., Any]) -> str | None:
    """:func:`callable_path` of ``func``, or ``None`` when it has none (a lambda...)."""
    # perform() names every callable for its record: no exception raised and caught,
    # and no refusal (with a repr of the callable) built, for one that has no path.
    return _path_or_refusal(func)[0]


def _path_or_refusal(func: Callable[..., Any]) -> tuple[str | None, str]:
    """``(module:qualname, '')`` if importing that name finds ``func`` again, else
    ``(None, why not)``."""
    module = getattr(func, '__module__', None)
    qualname = getattr(func, '__qualname__', None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None, ('worker processes import the callable by name, and it has none; '
                      'queue a module-level function instead')
    if '<lambda>' in qualname or '<locals>' in qualname:
        kind = 'a lambda' if '<lambda>' in qualname else 'a nested function or closure'
        return None, (f'it is {kind}, which cannot be imported by name by a worker '
                      f'process; queue a module-level function instead')
    if module == '__main__':
        return None, ('it is defined in __main__, which cannot be imported by name by a '
                      'worker process; move it to a module')
    target: Any = sys.modules.get(module)
    for part in qualname.split('.'):
        target = getattr(target, part, None)
    if target is not func and not (target is not None and target == func):
        return None, (f'{module}.{qualname} does not name it (a bound method of an '
                      f'instance, or a replaced attribute); queue a module-level function '
                      f'and pass the data it needs')
    return f'{module}:{qualname}', ''


def import_callable(path: str) -> Any:
    """The object named by :func:`callable_path`'s ``module:qualname``."""
    module, _, qualname = path.partition(':')
    target: Any = importlib.import_module(module)
    for part in qualname.split('.'):
        target = getattr(target, part)
    return target
