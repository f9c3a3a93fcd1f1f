"""A job's database work, as TurboGears does it for a request.

Each job runs in its own ``transaction`` (thread-local, like TurboGears' ``tm``), so
the app's zope-registered SQLAlchemy ``DBSession`` joins it on first use. A Ming app's
unit of work is flushed when the job returns and discarded when it raises, as TG's
``MingApplicationWrapper`` does; after every job the app's sessions are closed, as
TG's ``DBSessionRemoverMiddleware`` and ``MingSessionRemoverMiddleware`` do.

Sessions are recognised by their class (SQLAlchemy's ``scoped_session``, Ming's
``ThreadLocalODMSession``), never by a guessed method name: Ming's ``remove()`` deletes
documents.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from typing import Any, Callable, Mapping

import transaction
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import scoped_session

from .forking import reset_in_child
from .locate import thread_conf

log = logging.getLogger('tgext.asyncjob')

#: Configuration keys where TurboGears keeps an application's sessions.
SESSION_KEYS = ('DBSession', 'SQLASession', 'MingSession')


def _thread_local_odm_session() -> Any:
    """Ming's ``ThreadLocalODMSession`` class if Ming is imported, else ``None``
    (an application whose sessions are Ming's has imported it)."""
    odm = sys.modules.get('ming.odm')
    return getattr(odm, 'ThreadLocalODMSession', None)


def _sessions(conf: Mapping[str, Any] | None) -> list[Any]:
    return [conf[k] for k in SESSION_KEYS if conf is not None and conf.get(k) is not None]


def uses_ming(conf: Mapping[str, Any] | None) -> bool:
    """True if the application keeps documents in Ming: TG's ``ming.enabled`` (set
    from ``use_ming``), or one of its sessions is a ``ThreadLocalODMSession``."""
    return _uses_ming(conf, _thread_local_odm_session(), None)


def _uses_ming(conf: Mapping[str, Any] | None, odm_session: Any,
               sessions: list[Any] | None) -> bool:
    # uses_ming() with Ming's session class and the app's sessions, when the caller
    # has them already (after every job: each lookup once per job, not twice).
    if conf is None or odm_session is None:
        return False
    if sessions is None:
        sessions = _sessions(conf)
    return bool(conf.get('ming.enabled', conf.get('use_ming', False))) or any(
        isinstance(s, odm_session) for s in sessions)


class _Statements(threading.local):
    tried = 0  # a class default: a thread that never tried a statement reads 0


_statements = _Statements()


# A job may only be run again after a dropped connection if nothing it did reached the
# database. Counted through the dialect's execute events, which cost a loop over one
# listener per statement: a connection event (after_cursor_execute) would switch every
# engine of the process, requests included, to SQLAlchemy's evented execution path,
# about a fifth more work for each statement.
@event.listens_for(Engine, 'do_execute')
@event.listens_for(Engine, 'do_executemany')
@event.listens_for(Engine, 'do_execute_no_params')
def _statement_tried(*args: Any) -> None:
    _statements.tried += 1


def is_disconnect_before_work(exc: BaseException) -> bool:
    """True if ``exc`` is SQLAlchemy's report of a dead connection (``is_disconnect``:
    the server closed it, e.g. an idle timeout or ``pg_terminate_backend``) and nothing
    of the current try reached the database: the connection failed as it was made, or
    the try's first statement failed. Running the job again on a new connection is then
    safe for its database work. A commit that failed is never such a case: it may have
    been applied."""
    if not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return False
    # A statement's error names it; a connect, commit or rollback error names none.
    return _statements.tried <= (0 if exc.statement is None else 1)


def run_in_transaction(func: Callable[..., Any], args: tuple = (),
                       kwargs: dict[str, Any] | None = None, attempts: int = 1,
                       conf: Mapping[str, Any] | None = None) -> Any:
    """Call ``func(*args, **kwargs)`` in a fresh transaction: commit if it returns,
    abort if it raises (anything, ``SystemExit`` included) and re-raise.

    With ``conf`` (the application's configuration; default: the one this thread
    pushed, as worker threads do) a Ming application's unit of work
    is flushed when ``func`` returns, before the commit (a failed flush fails the job
    and rolls its SQL back), and discarded when it raises.

    Up to ``attempts`` tries when the error is one the ``transaction`` package calls
    retryable (``TransientError``, or a data manager's ``should_retry``: zope.sqlalchemy
    says yes to serialization failures and deadlocks), each in a fresh transaction, as
    TurboGears' ``tm.attempts`` does for requests. A connection found dead before the
    job's first statement (:func:`is_disconnect_before_work`) gets one more try, with
    a new session.
    """
    kwargs = kwargs or {}
    if conf is None:
        # The configuration the worker thread pushed for its application, if any.
        conf = thread_conf()
    ming = uses_ming(conf)
    # TG sets ming.autoflush (default true) when Ming is enabled: honour it as TG does.
    flush_ming = ming and bool(conf.get('ming.autoflush', True))  # type: ignore[union-attr]

    def body() -> Any:
        try:
            result = func(*args, **kwargs)
            if flush_ming:
                _thread_local_odm_session().flush_all()
            return result
        except BaseException:
            if ming:
                _thread_local_odm_session().close_all()  # discard the unit of work
            raise

    # A pooled connection the server dropped while idle fails the first statement
    # that uses it; SQLAlchemy then renews the pool, so one more try gets a new one.
    _statements.tried = 0
    try:
        return _in_transactions(body, attempts)
    except DBAPIError as exc:
        if not is_disconnect_before_work(exc):
            raise
        log.warning('asyncjob: the database connection was closed before the job\'s first '
                    'statement (%s); running it again on a new connection',
                    str(exc).splitlines()[0])
    end_job_sessions(conf)  # the next try opens a new session
    return _in_transactions(body, attempts)


def _in_transactions(body: Callable[[], Any], attempts: int) -> Any:
    manager = transaction.manager
    if attempts <= 1:  # the common case, without the attempts() machinery
        manager.begin()
        try:
            result = body()
            manager.commit()
        except BaseException:
            manager.abort()
            raise
        return result
    for attempt in manager.attempts(int(attempts)):
        with attempt:
            result = body()
    return result


def end_job_sessions(conf: Mapping[str, Any] | None) -> None:
    """Close every session of the application after a job, so the next job on this
    thread starts clean: SQLAlchemy ``scoped_session.remove()``, Ming
    ``ThreadLocalODMSession.close_all()``. Never raises: a failure is logged."""
    odm_session = _thread_local_odm_session()
    sessions = _sessions(conf)
    for session in sessions:
        if isinstance(session, scoped_session):
            _logged(session.remove, 'removing the SQLAlchemy session')
    if odm_session is not None and _uses_ming(conf, odm_session, sessions):
        _logged(odm_session.close_all, 'closing the Ming sessions')


def _logged(call: Callable[[], Any], what: str) -> None:
    try:
        call()
    except Exception:
        log.exception('asyncjob: %s after a job failed', what)


def app_engines(conf: Mapping[str, Any] | None) -> list[Engine]:
    """The SQLAlchemy engines TurboGears made for the application: ``sa_engine`` on its
    globals, and every engine of a master/slaves (``balanced_engines``) setup."""
    if conf is None:
        return []
    found = [getattr(conf.get('tg.app_globals'), 'sa_engine', None)]
    found += list(((conf.get('balanced_engines') or {}).get('all') or {}).values())
    engines: list[Engine] = []
    for engine in found:
        if isinstance(engine, Engine) and engine not in engines:
            engines.append(engine)
    return engines


class _PoolsOfApp:
    """Disposes an application's engine pools in a forked child (gunicorn --preload,
    uWSGI without lazy-apps), so its jobs never use the parent's connections: two
    processes on one socket mix up their statements. ``close=False`` leaves the
    parent's connections open for the parent (SQLAlchemy's documented way)."""

    def __init__(self, conf: Mapping[str, Any]):
        self.conf = conf

    def dispose(self) -> None:
        for engine in app_engines(self.conf):
            engine.dispose(close=False)


# Each application's _PoolsOfApp lives as long as its queue (forking holds it weakly).
_pools: weakref.WeakKeyDictionary[Any, _PoolsOfApp] = weakref.WeakKeyDictionary()


def dispose_pools_in_child(owner: Any, conf: Mapping[str, Any] | None) -> None:
    """In every forked child, while ``owner`` (the app's queue) lives, dispose the
    pools of the application ``conf`` describes (engines looked up at fork time: they
    may not exist yet when the queue starts, e.g. from ``Globals.__init__``)."""
    if conf is None:
        return
    pools = _pools[owner] = _PoolsOfApp(conf)
    reset_in_child(pools, 'dispose')


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
