"""The backend's engines, set up per dialect, and what each dialect can do.

* SQLite: writes begin with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented pysqlite
  recipe), so a claim takes the database's write lock before it reads: two processes
  can never read the same queued row and both take it. A second engine, with the
  driver's default behaviour, serves reads.
* MySQL 8 / MariaDB 10.6+: ``SKIP LOCKED`` is required (checked at start).
* PostgreSQL: ``SKIP LOCKED`` and, with psycopg 3, ``LISTEN/NOTIFY``.

Single statements (an INSERT, a compare-and-set UPDATE) run on an AUTOCOMMIT engine
(:meth:`Engines.writing`): one round trip, no BEGIN and COMMIT around it. Pooled
connections are not pinged before use (a round trip per checkout); a statement that
finds its connection dead invalidates the pool and is tried again
(:func:`retry_disconnect`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from typing import Any, Callable, Iterator, TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

T = TypeVar('T')

#: Seconds a SQLite connection waits for the write lock before ``database is locked``.
SQLITE_BUSY_TIMEOUT = 30


@dataclasses.dataclass
class Engines:
    """``write`` for transactions (claims), ``read`` for record reads, ``auto`` for
    single statements (AUTOCOMMIT). Every read is one statement, so ``read`` is
    ``auto`` too (no BEGIN before it, no ROLLBACK after: one round trip, not three);
    SQLite: ``auto`` is ``write``, ``read`` its own (reads never wait for the write
    lock)."""

    write: Engine
    read: Engine
    auto: Engine
    #: SQLite only: one writing thread per process at a time. SQLite allows one writer
    #: anyway, and threads that wait in its busy handler sleep in steps of up to
    #: 100 ms; waiting here, they go the moment the lock is free.
    write_lock: threading.Lock | None = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[Connection]:
        """A connection whose every statement commits on its own (SQLite: one
        ``BEGIN IMMEDIATE`` transaction around the block)."""
        if self.auto is self.write:
            with self.transaction() as conn:
                yield conn
        else:
            with self.auto.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction for several statements (SQLite: ``BEGIN IMMEDIATE``, one
        writing thread at a time)."""
        if self.write_lock is not None:
            with self.write_lock, self.write.begin() as conn:
                yield conn
        else:
            with self.write.begin() as conn:
                yield conn

    @property
    def dialect(self) -> str:
        """``postgresql``, ``sqlite``, ``mysql`` (MariaDB too), ...; see :func:`make_engines`."""
        return self.write.dialect.name

    def dispose(self, close: bool = True) -> None:
        """Drop pooled connections (``close=False`` in a forked child: the parent's
        sockets are left alone, never used) and, in a child, the parent's lock."""
        if self.write_lock is not None and not close:
            self.write_lock = threading.Lock()
        for engine in {id(e): e for e in (self.write, self.read, self.auto)}.values():
            engine.dispose(close=close)


def make_engines(url: str, **engine_options: Any) -> Engines:
    """Engines on ``url`` for the backend; ``ValueError`` for a database it cannot use."""
    options = dict(engine_options)
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == 'sqlite':
        if parsed.database in (None, '', ':memory:'):
            raise ValueError('the sqlalchemy backend needs a SQLite FILE: an in-memory '
                             'database is private to one connection')
        connect_args = {'timeout': SQLITE_BUSY_TIMEOUT, 'check_same_thread': False}
        write = sqlalchemy.create_engine(url, connect_args=connect_args, **options)
        _begin_immediate(write)
        read = sqlalchemy.create_engine(url, connect_args=connect_args, **options)
        return Engines(write, read, write, threading.Lock())
    if parsed.get_backend_name() in ('mysql', 'mariadb'):
        # InnoDB's default REPEATABLE READ makes the claim's FOR UPDATE lock the gaps
        # of the index range it scans, and concurrent INSERTs of new jobs deadlock
        # with it. READ COMMITTED locks only the rows: what SKIP LOCKED is built for.
        options.setdefault('isolation_level', 'READ COMMITTED')
    engine = sqlalchemy.create_engine(url, **options)
    # No transaction is ever open on these connections: nothing to reset on return.
    auto = sqlalchemy.create_engine(url, **{**options, 'isolation_level': 'AUTOCOMMIT',
                                            'pool_reset_on_return': None})
    return Engines(engine, auto, auto)


def _begin_immediate(engine: Engine) -> None:
    @event.listens_for(engine, 'connect')
    def _no_driver_transactions(dbapi_connection: Any, record: Any) -> None:
        # pysqlite would BEGIN (DEFERRED) by itself before writes; we begin instead.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, 'begin')
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql('BEGIN IMMEDIATE')


def check_skip_locked(engines: Engines) -> None:
    """``RuntimeError`` unless the server can claim with ``SKIP LOCKED`` (MySQL 8+,
    MariaDB 10.6+, PostgreSQL 9.5+); SQLite needs none (claims hold the write lock)."""
    if engines.dialect != 'mysql':
        return
    with engines.read.connect() as conn:
        version = conn.exec_driver_sql('SELECT VERSION()').scalar() or ''
    numbers = tuple(int(n) for n in re.findall(r'\d+', version)[:2])
    needed = (10, 6) if 'mariadb' in version.lower() else (8, 0)
    if numbers < needed:
        raise RuntimeError(f'the sqlalchemy backend needs SKIP LOCKED: MySQL 8.0+ or '
                           f'MariaDB 10.6+, this server is {version}')


def same_database(a: Engine, b: Engine) -> bool:
    """True when both engines reach the same database (compared by URL)."""
    return (a.url.render_as_string(hide_password=False)
            == b.url.render_as_string(hide_password=False))


def retry_disconnect(call: Callable[[], T]) -> T:
    """``call()``, once more if it failed on a connection the server had dropped
    (SQLAlchemy then invalidated the pool: the second try gets a fresh connection)."""
    try:
        return call()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return call()
