"""One fork hook for the objects that must reset themselves in a forked child.

``os.register_at_fork`` cannot unregister, so registering a bound method per object
would keep every object ever made alive. Objects are held weakly here instead.
"""
from __future__ import annotations

import os
import weakref
from typing import Any

_resets: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def reset_in_child(obj: Any, method_name: str) -> None:
    """Call ``obj.<method_name>()`` in every forked child, while ``obj`` lives."""
    _resets[obj] = method_name


def _after_fork_in_child() -> None:
    for obj, method_name in list(_resets.items()):
        getattr(obj, method_name)()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)
