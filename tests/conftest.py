"""Shared fixtures: real Redis and PostgreSQL, and sample TG applications.

Fixtures:

* ``redis_url`` (session): URL of a reachable Redis, a private one if needed.
* ``redis_client`` (function): ``redis.Redis`` on ``redis_url``, db flushed.
* ``redis_server`` (function): a private, stoppable :class:`RedisServer`.
* ``postgres_url`` (session): the configured PostgreSQL URL, checked.
* ``postgres_db_url`` (function): that URL confined to a fresh schema.
* ``sqlite_db_url`` (function): a SQLite FILE in ``tmp_path``.
* ``db_url`` (function, params ``sqlite``/``postgresql``): one of the two.
* ``make_app`` (function): ``sampleapp.config.make_app``, torn down after.
* ``queue`` (function): a started ``JobQueue`` (memory tracker, one worker) outside any
  application, stopped after.

Unavailable services make tests fail (``pytest.fail``), never skip.
"""

import inspect
import types
import os
import sys
import threading
import uuid

import pytest
import redis
import sqlalchemy
import tg
import transaction
from tg.configuration import milestones

# The tests directory holds the helper modules and the ``sampleapp`` package;
# make it importable whatever pytest import mode is used.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from services import RedisServer, ServiceUnavailable  # noqa: E402
import services  # noqa: E402

# Seconds allowed for ``app_globals.asyncjob_queue.stop()`` at teardown.
QUEUE_STOP_TIMEOUT = 15
# Seconds a schema drop may wait for locks before failing the teardown.
SCHEMA_DROP_LOCK_TIMEOUT = "10s"


# --------------------------------------------------------------------- Redis

@pytest.fixture(scope="session")
def redis_url():
    """URL of a reachable Redis; starts a private redis-server when needed."""
    try:
        url, server = services.resolve_redis()
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def redis_client(redis_url):
    """A ``redis.Redis`` client on ``redis_url`` whose db was just flushed."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def redis_server():
    """A started private :class:`RedisServer`; tests may stop/restart it."""
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        pytest.fail("cannot start a private redis-server: %s" % exc, pytrace=False)
    yield server
    server.stop()


# ---------------------------------------------------------------- Databases

@pytest.fixture(scope="session")
def postgres_url():
    """The configured PostgreSQL URL, verified to accept connections."""
    try:
        return services.postgres_url()
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def postgres_db_url(postgres_url, _apps):
    """``postgres_url`` confined to a new, empty schema dropped after the test.

    The schema is selected through the connection's ``search_path``, so every
    connection made from the URL (app engine, worker, test) sees only it.
    """
    schema = "t_%s" % uuid.uuid4().hex[:16]
    admin = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text('CREATE SCHEMA "%s"' % schema))
    url = sqlalchemy.engine.make_url(postgres_url).update_query_dict(
        {"options": "-csearch_path=%s" % schema}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        # Apps hold connections to the schema: close them first, whatever
        # the fixture teardown order is.
        try:
            _apps.close_all()
        finally:
            with admin.begin() as conn:
                conn.execute(sqlalchemy.text(
                    "SET LOCAL lock_timeout = '%s'" % SCHEMA_DROP_LOCK_TIMEOUT))
                conn.execute(sqlalchemy.text('DROP SCHEMA "%s" CASCADE' % schema))
            admin.dispose()


@pytest.fixture
def sqlite_db_url(tmp_path):
    """URL of a SQLite database FILE (in-memory ones are per-connection)."""
    return "sqlite:///%s" % (tmp_path / "app.sqlite")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    """A clean database URL, once on SQLite (file) and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_db_url")
    return request.getfixturevalue("postgres_db_url")


# --------------------------------------------------------------------- Apps

class _AppTracker(object):
    """Apps built during one test, and their teardown."""

    def __init__(self):
        self.apps = []
        self.built = False

    def add(self, app):
        self.apps.append(app)

    def close_all(self):
        """Stop queues, release sessions and engines of every app (idempotent).

        Errors are collected so every app is cleaned up; the first is raised.
        """
        errors = []
        while self.apps:
            app = self.apps.pop()
            for step in (_stop_queue, _release_database):
                try:
                    step(app)
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def reset_tg(self):
        """Forget process-wide TurboGears state so the next app starts afresh.

        Milestones are process-wide and reached once, and ``tg.hooks`` keeps
        every hook ever registered (tgext.pluggable registers its pluggers
        there).  TG's own test-suite resets milestones between tests; hooks
        are cleared too so one test's hooks never fire for the next app.
        Only done once a build was attempted: a build reaches renderers_ready,
        which resolves every pending controller exposition, so a reset then
        loses nothing (a reset before any build would drop the expositions
        of controllers defined at import time).
        """
        if not self.built:
            return
        self.built = False
        tg.hooks._clear()
        milestones._reset_all()


def _stop_queue(app):
    """Call ``app_globals.asyncjob_queue.stop()`` if present, with a deadline."""
    queue = getattr(app.app_globals, "asyncjob_queue", None)
    stop = getattr(queue, "stop", None)
    if not callable(stop):
        return
    kwargs = {}
    try:
        if "timeout" in inspect.signature(stop).parameters:
            kwargs["timeout"] = QUEUE_STOP_TIMEOUT
    except (TypeError, ValueError):
        pass

    # Run in a thread so a stop() that hangs fails the test instead of
    # hanging the whole session.
    outcome = []

    def run():
        try:
            stop(**kwargs)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="asyncjob-test-stop", daemon=True)
    thread.start()
    thread.join(QUEUE_STOP_TIMEOUT + 5)
    if thread.is_alive():
        raise AssertionError(
            "asyncjob_queue.stop() did not return within %ss" % (QUEUE_STOP_TIMEOUT + 5))
    if outcome:
        raise outcome[0]


def _release_database(app):
    """Drop the test thread's session/transaction and close the app's engine."""
    transaction.abort()
    app.dbsession.remove()
    if getattr(app.app_globals, "sa_engine", None) is not None:
        app.engine.dispose()


@pytest.fixture
def _apps():
    """Tracker shared by ``make_app`` and the database fixtures."""
    tracker = _AppTracker()
    try:
        yield tracker
    finally:
        try:
            tracker.close_all()
        finally:
            tracker.reset_tg()


@pytest.fixture
def make_app(_apps):
    """Factory with the signature of ``sampleapp.config.make_app``.

    ``make_app(db_url, *, enable='plug', plug_options=None, globals_class=None,
    root=None, extra_config=None, dbsession=None)`` -> ``SampleTestApp``.
    Every app it built is torn down after the test: job queue stopped
    (``app_globals.asyncjob_queue.stop``, with a deadline), session removed,
    engine disposed, then TG milestones and hooks reset.
    """
    from sampleapp.config import make_app as build

    def factory(db_url, **kwargs):
        # Set before building: a build failing halfway has already touched
        # process-wide TG state that must be reset.
        _apps.built = True
        app = build(db_url, **kwargs)
        _apps.add(app)
        return app

    yield factory
    _apps.close_all()


@pytest.fixture
def queue():
    """A running queue with the memory tracker and one worker, outside any application."""
    from types import SimpleNamespace

    from tgext.asyncjob import start_async_worker
    q = start_async_worker(SimpleNamespace())
    yield q
    q.stop(10)


@pytest.fixture
def started(monkeypatch):
    """``started(tracker=None, **options)`` starts a queue on fresh globals, found only
    through ``start_async_worker``'s default (an application built by an earlier test
    stays the process configuration otherwise); all stopped after."""
    from tgext.asyncjob import locate, start_async_worker
    monkeypatch.setattr(locate, 'current_conf', lambda: None)
    queues = []

    def start(tracker=None, **options):
        q = start_async_worker(types.SimpleNamespace(), tracker, **options)
        queues.append(q)
        return q

    yield start
    for q in queues:
        if not q.stopped:
            q.stop(10)
