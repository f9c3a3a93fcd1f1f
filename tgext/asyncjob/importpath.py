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
    module = getattr(func, '__module__', None)
    qualname = getattr(func, '__qualname__', None)

    def refused(reason: str) -> TypeError:
        # Built only on refusal: perform() names every callable, and repr() is not free.
        return TypeError(f'the {backend} backend cannot queue {func!r}: {reason}'
                         f'{THREADS_HINT}')

    if not isinstance(module, str) or not isinstance(qualname, str):
        raise refused('worker processes import the callable by name, and it has none; '
                      'queue a module-level function instead')
    if '<lambda>' in qualname or '<locals>' in qualname:
        kind = 'a lambda' if '<lambda>' in qualname else 'a nested function or closure'
        raise refused(f'it is {kind}, which cannot be imported by name by a worker '
                      f'process; queue a module-level function instead')
    if module == '__main__':
        raise refused('it is defined in __main__, which cannot be imported by name by a '
                      'worker process; move it to a module')
    target: Any = sys.modules.get(module)
    for part in qualname.split('.'):
        target = getattr(target, part, None)
    if target is not func and not (target is not None and target == func):
        raise refused(f'{module}.{qualname} does not name it (a bound method of an '
                      f'instance, or a replaced attribute); queue a module-level function '
                      f'and pass the data it needs')
    return f'{module}:{qualname}'


def importable_path(func: Callable[..., Any]) -> str | None:
    """:func:`callable_path` of ``func``, or ``None`` when it has none (a lambda...)."""
    try:
        return callable_path(func, 'this')
    except TypeError:
        return None


def import_callable(path: str) -> Any:
    """The object named by :func:`callable_path`'s ``module:qualname``."""
    module, _, qualname = path.partition(':')
    target: Any = importlib.import_module(module)
    for part in qualname.split('.'):
        target = getattr(target, part)
    return target
