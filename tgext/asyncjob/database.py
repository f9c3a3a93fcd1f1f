"""Running a job inside its own ``transaction`` and SQLAlchemy session.

The job's thread uses ``transaction.manager`` (thread-local, like TurboGears' ``tm``),
so the app's zope-registered ``DBSession`` joins the job's transaction on first use.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import transaction


def run_in_transaction(func: Callable[..., Any], args: tuple = (),
                       kwargs: dict[str, Any] | None = None, attempts: int = 1) -> Any:
    """Call ``func(*args, **kwargs)`` in a fresh transaction: commit if it returns,
    abort if it raises (anything, ``SystemExit`` included) and re-raise.

    Up to ``attempts`` tries when the error is one the ``transaction`` package calls
    retryable (``TransientError``, or a data manager's ``should_retry``: zope.sqlalchemy
    says yes to serialization failures and deadlocks), each in a fresh transaction,
    as TurboGears' ``tm.attempts`` does for requests.
    """
    manager = transaction.manager
    kwargs = kwargs or {}
    if attempts <= 1:  # the common case, without the attempts() machinery
        manager.begin()
        try:
            result = func(*args, **kwargs)
            manager.commit()
        except BaseException:
            manager.abort()
            raise
        return result
    for attempt in manager.attempts(int(attempts)):
        with attempt:
            result = func(*args, **kwargs)
    return result


def remove_session(dbsession: Any) -> None:
    """Give the job's thread a clean session next time (scoped_session or Ming)."""
    if dbsession is None:
        return
    remove = getattr(dbsession, 'remove', None) or getattr(dbsession, 'clear_all', None)
    if remove is not None:
        remove()


def asyncjob_timed_query(query: Any, retries: int = 10, interval: float = 6) -> Any:
    """Wait for ``query`` to find a row, then return it (a job's rows may be written
    by a request that has not committed yet).

    Tries ``query.first()`` at once, then up to ``retries`` more times, ``interval``
    seconds apart; returns the query either way, so ``.first()`` / ``.all()`` follow.
    Nothing the job wrote is rolled back: each try is a new statement, which sees
    newly committed rows under READ COMMITTED (PostgreSQL's default) and SQLite.
    """
    if retries < 0 or interval < 0:
        raise ValueError('retries and interval must not be negative')
    for remaining in range(int(retries), -1, -1):
        if query.first() is not None:
            break
        if remaining:
            time.sleep(interval)
    return query
