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
    what = f'the {backend} backend cannot queue {func!r}'
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f'{what}: worker processes import the callable by name, and it has '
                        f'none; queue a module-level function instead{THREADS_HINT}')
    if '<lambda>' in qualname or '<locals>' in qualname:
        kind = 'a lambda' if '<lambda>' in qualname else 'a nested function or closure'
        raise TypeError(f'{what}: it is {kind}, which cannot be imported by name by a '
                        f'worker process; queue a module-level function instead'
                        f'{THREADS_HINT}')
    if module == '__main__':
        raise TypeError(f'{what}: it is defined in __main__, which cannot be imported by '
                        f'name by a worker process; move it to a module{THREADS_HINT}')
    target: Any = sys.modules.get(module)
    for part in qualname.split('.'):
        target = getattr(target, part, None)
    if target is not func and not (target is not None and target == func):
        raise TypeError(f'{what}: {module}.{qualname} does not name it (a bound method of '
                        f'an instance, or a replaced attribute); queue a module-level '
                        f'function and pass the data it needs{THREADS_HINT}')
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
