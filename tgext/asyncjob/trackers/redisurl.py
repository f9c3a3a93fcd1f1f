"""The check of a Redis URL, apart from the tracker so that settings can use it without
the ``redis`` package (an optional dependency) installed."""
from __future__ import annotations

import urllib.parse


def check_redis_url(url: str) -> str:
    """Return ``url`` if redis-py reads it as written, else raise ``ValueError``.

    redis-py silently uses db 0 for a database that is not a number
    (``redis://host:6379/abc``); that would mix applications' records.
    """
    if not isinstance(url, str):
        raise ValueError(f'a Redis URL must be a string, got {type(url).__name__}: {url!r}')
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f'not a valid Redis URL {url!r}: {exc}') from None
    if parts.scheme not in ('redis', 'rediss', 'unix'):
        raise ValueError(f'a Redis URL starts with redis://, rediss:// or unix://, got {url!r}')
    dbs = urllib.parse.parse_qs(parts.query).get('db', [])
    path_db = '' if parts.scheme == 'unix' else parts.path.strip('/')
    for db in ([path_db] if path_db else []) + dbs:
        if not (db.isascii() and db.isdigit()):
            raise ValueError(f'the database in Redis URL {url!r} must be a number '
                             f'(redis://host:6379/0), got {db!r}')
    return url
