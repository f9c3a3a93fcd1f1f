"""Standard JSON (RFC 8259) for anything a job may leave in its status.

Results kept by the memory tracker and progress data can be any Python object: floats
that are not finite, tuple keys, sets, circular or absurdly deep structures, objects
whose ``repr`` raises. :func:`dumps` always returns valid JSON for them, so a status
page never answers 500 nor a body the browser's ``JSON.parse`` rejects.
"""
from __future__ import annotations

import json
import math
from typing import Any

__all__ = ['dumps', 'jsonable', 'safe_repr']

# Deeper than this is shown as a placeholder: the fallback walks the value recursively
# and must stay far below Python's recursion limit, whatever the caller's stack depth.
MAX_DEPTH = 64
# A repr longer than this is cut: one odd object must not make a megabyte response.
MAX_REPR = 2000


def safe_repr(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_REPR` characters; never raises."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__, or RecursionError inside it
        return f'<unrepresentable {type(value).__qualname__} object>'
    if not isinstance(text, str):  # a __repr__ returning a non-str raises TypeError above
        return f'<unrepresentable {type(value).__qualname__} object>'
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + '...'


def dumps(value: Any) -> str:
    """``value`` as RFC 8259 JSON text (ASCII): never raises, never writes ``NaN``.

    Plain JSON-able values encode as ``json.dumps`` does. Otherwise, recursively:
    non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``; keys that
    are not strings become their JSON spelling or ``repr``; tuples become lists (as
    ``json`` does); any other object (a set...) becomes its ``repr``; a structure met
    again inside itself becomes ``"<circular>"``, one nested too deep ``"<too deep>"``.
    """
    try:
        # The common case, at C speed. ensure_ascii: a lone surrogate in a string comes
        # out escaped rather than breaking the UTF-8 encoding of the response.
        return json.dumps(value, allow_nan=False, default=safe_repr)
    except Exception:  # ValueError (NaN, circular), TypeError (keys), RecursionError...
        pass
    try:
        return json.dumps(jsonable(value), allow_nan=False)
    except Exception:  # cannot happen for jsonable()'s output; never fail the page
        return json.dumps(safe_repr(value))


def jsonable(value: Any, _depth: int = 0, _seen: frozenset[int] = frozenset()) -> Any:
    """A copy of ``value`` made only of dict, list, str, finite numbers, bools and None."""
    if value is None or value is True or value is False:
        return value
    # The base types' own methods: a subclass's __str__ or __float__ may do anything.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else repr(number)
    if _depth >= MAX_DEPTH:
        return '<too deep>'
    if id(value) in _seen:
        return '<circular>'
    seen = _seen | {id(value)}
    try:
        if isinstance(value, dict):
            return {_key(k): jsonable(v, _depth + 1, seen) for k, v in list(value.items())}
        if isinstance(value, (list, tuple)):
            return [jsonable(item, _depth + 1, seen) for item in list(value)]
    except Exception:  # a container subclass whose iteration raises
        pass
    return safe_repr(value)


def _key(key: Any) -> str:
    # json.dumps spells number, bool and None keys as JSON ("1", "1.5", "true", "null"):
    # keep that spelling for them, a repr for any other key (a tuple...).
    plain = jsonable(key) if key is None or isinstance(key, (bool, int, float, str)) else None
    if isinstance(plain, str):
        return plain
    if plain is not None or key is None:
        return json.dumps(plain)
    return safe_repr(key)
