"""Faults: Redis going away and coming back, the database killing a job's connection,
transient conflicts retried with ``asyncjob.attempts``, and bad input at the call site."""
import collections
import logging
import threading
from types import SimpleNamespace

import pytest
import sqlalchemy
import transaction
from sqlalchemy import text
from transaction.interfaces import TransientError

from tgext.asyncjob import (TrackerUnavailable, asyncjob_get_progress, asyncjob_get_status,
                            asyncjob_perform, asyncjob_set_progress, start_async_worker,
                            locate)
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from jobhelpers import Gate, wait_finished
from sampleapp import model
from sampleapp.controllers.root import db_session
from services import wait_for
from test_sqlalchemy_backend import mariadb_url  # noqa: F401 (fixture)

JOB = '0123456789abcdef0123456789abcdef'


@pytest.fixture
def isolated(monkeypatch):
    """Outside a request, find queues only through ``start_async_worker``'s default."""
    monkeypatch.setattr(locate, 'current_conf', lambda: None)


class Finished:
    """Hook: counts jobs whose final state was stored (after the tracker write)."""

    def __init__(self):
        self.ids = []

    def on_succeeded(self, job, result):
        self.ids.append(job.id)

    def on_failed(self, job, error):
        self.ids.append(job.id)


def messages(caplog, text_):
    return [r for r in caplog.records if text_ in r.getMessage()]


# --------------------------------------------------------------- Redis outage

def test_redis_outage_jobs_keep_running_and_tracking_resumes(redis_server, isolated, caplog):
    tracker = RedisProgressTracker(url=redis_server.url, socket_timeout=2)
    finished = Finished()
    q = start_async_worker(SimpleNamespace(), tracker, workers=1, hooks=[finished])
    ran = []
    gate = Gate()

    def long_job():
        asyncjob_set_progress(10, 'before')
        gate.job()
        asyncjob_set_progress(20, 'during the outage')  # must not abort the job
        ran.append('long')
        return 'long done'

    def short_job(i):
        asyncjob_set_progress(50, {'i': i})
        ran.append(i)

    try:
        with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
            long_id = asyncjob_perform(long_job)
            gate.wait_entered()
            assert asyncjob_get_progress(long_id) == (10, 'before')

            redis_server.stop()
            with pytest.raises(TrackerUnavailable):
                asyncjob_get_progress(long_id)  # never a silent None
            with pytest.raises(TrackerUnavailable):
                asyncjob_get_status(long_id)
            ids = [asyncjob_perform(short_job, i) for i in range(5)]  # still queued
            assert len(set(ids)) == 5
            gate.release()
            # The deadline also bounds each tracker call: redis-py's default retries
            # with backoff cost ~4 s per call, 20 calls here.
            wait_for(lambda: len(finished.ids) == 6, timeout=20,
                     message=lambda: f'{len(finished.ids)} of 6 jobs finished: {ran}')
            assert ran == ['long', 0, 1, 2, 3, 4]
            assert len(messages(caplog, 'tracker unavailable')) == 1  # once, not per call
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

            redis_server.start()  # same port, empty: no restart of the worker
            gate2 = Gate()

            def after():
                asyncjob_set_progress(30, 'after')
                gate2.job()
                return 'after done'

            after_id = asyncjob_perform(after)
            gate2.wait_entered()
            wait_for(lambda: asyncjob_get_progress(after_id) == (30, 'after'))
            gate2.release()
            status = wait_finished(q, after_id)
            assert status.state.value == 'succeeded' and status.result == 'after done'
            assert messages(caplog, 'reachable again')

            redis_server.stop()  # a second outage is warned about again, once
            more = [asyncjob_perform(short_job, i) for i in (5, 6)]
            wait_for(lambda: len(finished.ids) == 9, timeout=20)
            assert ran[-2:] == [5, 6] and len(set(more)) == 2
            assert len(messages(caplog, 'tracker unavailable')) == 2
    finally:
        q.stop(10)


def test_tracker_calls_fail_fast_when_redis_refuses(redis_server):
    """The tracker's client retries once, without backoff (redis-py 8's default is
    ten retries with backoff). Counted through the retry policy, not a clock."""
    tracker = RedisProgressTracker(url=redis_server.url)
    retry = tracker.redis.connection_pool.connection_kwargs['retry']
    assert retry.get_retries() == 1
    redis_server.stop()
    with pytest.raises(TrackerUnavailable):
        tracker.get_progress(JOB)
    redis_server.start()
    tracker.track(JOB)  # the connection Redis closed is replaced by the one retry
    assert tracker.get_progress(JOB) == (-1, None)


# -------------------------------------------------------- the database fails

PIDS = []
CONNECTIONS = []  # the DBAPI connections of jobs, for the test to kill
CALLS = collections.Counter()


def add(name):
    db_session().add(model.Row(name=name))


def killed_midway(gate):
    session = db_session()
    PIDS.append(session.execute(text('SELECT pg_backend_pid()')).scalar())
    session.add(model.Row(name='before the kill'))
    session.flush()
    gate.job()
    session.add(model.Row(name='after the kill'))
    session.flush()  # the connection is gone


def names(app):
    return sorted(r['name'] for r in app.get('/rows').json['rows'])


def terminate_backends(postgres_url, pids):
    """``pg_terminate_backend`` each of ``pids`` (what an idle timeout, a failover or an
    operator does), and wait until the server lists none of them."""
    admin = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as conn:
            for pid in pids:
                assert conn.execute(text('SELECT pg_terminate_backend(:p)'), {'p': pid}).scalar()

        def backends_gone():
            with admin.connect() as conn:  # a new snapshot of pg_stat_activity
                return not conn.execute(text(
                    'SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)'),
                    {'p': list(pids)}).scalar()

        wait_for(backends_gone, message='backends still alive')
    finally:
        admin.dispose()


def test_database_connection_killed_mid_job_fails_that_job_only(make_app, postgres_db_url,
                                                               postgres_url, caplog):
    PIDS.clear()
    app = make_app(postgres_db_url, extra_config={'asyncjob.attempts': '3'})
    q = app.app_globals.asyncjob_queue
    thread = q.backend.threads[0]
    gate = Gate()
    with caplog.at_level(logging.ERROR, logger='tgext.asyncjob'):
        victim = q.perform(killed_midway, (gate,))
        gate.wait_entered()
        terminate_backends(postgres_url, PIDS[:1])
        gate.release()
        status = wait_finished(q, victim)
    assert status.state.value == 'failed'
    assert 'OperationalError' in status.error.type + status.error.message
    assert len(PIDS) == 1  # a lost connection is not a conflict: not retried
    assert any(victim in r.getMessage() for r in caplog.records)
    later = [q.perform(add, (f'later {i}',)) for i in range(3)]
    assert [wait_finished(q, i).state.value for i in later] == ['succeeded'] * 3
    assert names(app) == ['later 0', 'later 1', 'later 2']  # the victim's rows rolled back
    assert q.backend.threads[0] is thread and thread.is_alive()


def pooled_backend(barrier):
    """Hold a pooled connection until every worker holds one: the pool fills up."""
    pid = db_session().execute(text('SELECT pg_backend_pid()')).scalar()
    barrier.wait(30)
    return pid


def test_jobs_survive_the_server_dropping_idle_pooled_connections(make_app, postgres_db_url,
                                                                  postgres_url, caplog):
    app = make_app(postgres_db_url, extra_config={'asyncjob.workers': '4'})
    q = app.app_globals.asyncjob_queue
    barrier = threading.Barrier(4)
    held = [q.perform(pooled_backend, (barrier,)) for _ in range(4)]
    pids = {wait_finished(q, i).result for i in held}
    assert len(pids) == 4  # four idle connections now wait in the pool
    terminate_backends(postgres_url, pids)  # what a server's idle timeout does
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        innocent = [q.perform(add, (f'row {i:02}',)) for i in range(20)]
        states = [wait_finished(q, i).state.value for i in innocent]
    assert states == ['succeeded'] * 20
    assert names(app) == [f'row {i:02}' for i in range(20)]
    assert any('closed before the job' in r.getMessage() for r in caplog.records)


def _kill_postgresql(url, dbapi_connection):
    terminate_backends(url, [dbapi_connection.info.backend_pid])


def _kill_mariadb(url, dbapi_connection):
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'KILL CONNECTION {dbapi_connection.thread_id()}')
    finally:
        admin.dispose()


def flush_then_wait(name, gate):
    """The job's one statement goes through; then it waits (while the test kills its
    connection) and returns: the commit fails, and the job cannot know its outcome."""
    session = db_session()
    session.add(model.Row(name=name))
    session.flush()
    CONNECTIONS.append(session.connection().connection.dbapi_connection)
    gate.job()


@pytest.mark.parametrize('database', ['postgresql', 'mariadb'])
def test_a_connection_lost_at_commit_is_not_run_again(make_app, request, database):
    # A commit's error names no statement: then one statement tried (which went
    # through) must not read as "nothing reached the database".
    CONNECTIONS.clear()
    url = request.getfixturevalue({'postgresql': 'postgres_db_url',
                                   'mariadb': 'mariadb_url'}[database])
    kill = {'postgresql': _kill_postgresql, 'mariadb': _kill_mariadb}[database]
    app = make_app(url)
    q = app.app_globals.asyncjob_queue
    gate = Gate()
    jobid = q.perform(flush_then_wait, ('lost at commit', gate))
    gate.wait_entered()
    kill(url, CONNECTIONS[0])
    gate.release()
    status = wait_finished(q, jobid)
    assert status.state.value == 'failed' and 'OperationalError' in status.error.type
    assert len(CONNECTIONS) == 1  # run once
    assert names(app) == []


def test_no_connection_events_slow_down_the_applications_statements(make_app, sqlite_db_url):
    # A connection event listener (anywhere on Engine) sends every statement of every
    # engine, the requests' included, through SQLAlchemy's evented execution path;
    # the library counts statements with the dialect's execute events instead.
    app = make_app(sqlite_db_url)
    engine = app.app_globals.sa_engine
    with engine.connect() as conn:
        conn.execute(text('SELECT 1'))
        assert not conn._has_events and not engine._has_events  # SQLAlchemy's own switch


def bump(name, barrier):
    """Read the counter, meet the other job, then both update it: a write conflict."""
    CALLS[name] += 1
    session = db_session()
    session.connection(execution_options={'isolation_level': 'REPEATABLE READ'})
    row = session.query(model.Row).filter_by(name='counter').one()  # snapshot taken
    if CALLS[name] == 1:
        barrier.wait(30)
    row.value += 1
    session.flush()
    return CALLS[name]


@pytest.mark.parametrize('attempts', [None, '3'])
def test_serialization_failures_are_retried_with_attempts(make_app, postgres_db_url, attempts):
    CALLS.clear()
    extra = {'asyncjob.workers': '2'}
    if attempts:
        extra['asyncjob.attempts'] = attempts
    app = make_app(postgres_db_url, extra_config=extra)
    q = app.app_globals.asyncjob_queue
    with transaction.manager:
        app.dbsession.add(model.Row(name='counter', value=0))
    barrier = threading.Barrier(2)
    ids = [q.perform(bump, (name, barrier)) for name in ('a', 'b')]
    states = sorted(wait_finished(q, i).state.value for i in ids)
    value = app.get('/rows').json['rows'][0]['value']
    if attempts:
        # One job won; the other hit "could not serialize" and ran again, fresh.
        assert states == ['succeeded', 'succeeded'] and value == 2
        assert sorted(CALLS.values()) == [1, 2]
    else:
        failed = [q.get_status(i) for i in ids if q.get_status(i).state.value == 'failed']
        assert states == ['failed', 'succeeded'] and value == 1
        assert sorted(CALLS.values()) == [1, 1]
        assert 'serialize' in failed[0].error.message


SEEN = []


def flaky(fail_times):
    """Writes a row on each attempt, then raises TransientError ``fail_times`` times."""
    txn = transaction.get()
    SEEN.append(txn)
    n = len(SEEN)
    db_session().add(model.Row(name=f'attempt {n}'))
    db_session().flush()
    if n <= fail_times:
        raise TransientError(f'conflict on attempt {n}')
    return n


@pytest.mark.parametrize('attempts, fail_times, calls, state', [
    (None, 1, 1, 'failed'),        # default: 1 attempt, no retry
    ('3', 2, 3, 'succeeded'),
    ('2', 5, 2, 'failed'),
])
def test_transient_errors_are_retried_in_fresh_transactions(make_app, sqlite_db_url, attempts,
                                                            fail_times, calls, state):
    SEEN.clear()
    extra = {'asyncjob.attempts': attempts} if attempts else None
    app = make_app(sqlite_db_url, extra_config=extra)
    q = app.app_globals.asyncjob_queue
    assert q.attempts == int(attempts or 1)
    status = wait_finished(q, q.perform(flaky, (fail_times,)))
    assert status.state.value == state
    assert len(SEEN) == calls
    assert len({id(t) for t in SEEN}) == calls  # a fresh transaction each attempt
    if state == 'succeeded':
        assert status.result == calls
        assert names(app) == [f'attempt {calls}']  # the failed attempts were rolled back
    else:
        assert status.error.type == 'TransientError'
        assert names(app) == []


# ------------------------------------------------------------------ bad input

def test_a_non_callable_leaves_no_record(isolated):
    q = start_async_worker(SimpleNamespace())
    try:
        with pytest.raises(TypeError):
            asyncjob_perform('not callable')
        assert q.recent() == []
    finally:
        q.stop(5)


def test_rejected_progress_leaves_the_last_good_one(redis_server, isolated):
    q = start_async_worker(SimpleNamespace(), RedisProgressTracker(url=redis_server.url))
    gate, errors = Gate(), []

    def job():
        asyncjob_set_progress(10, 'good')
        for value, data in [(11, 'x' * 65537), (12, {1, 2}), ('13', 'str value')]:
            try:
                asyncjob_set_progress(value, data)
            except (TypeError, ValueError) as exc:
                errors.append(type(exc).__name__)
        gate.job()
        return 'finished anyway'

    try:
        jobid = asyncjob_perform(job)
        gate.wait_entered()
        assert asyncjob_get_progress(jobid) == (10, 'good')
        gate.release()
        assert wait_finished(q, jobid).result == 'finished anyway'
        assert errors == ['ValueError', 'TypeError', 'TypeError']
    finally:
        q.stop(5)


def _commands(client):
    stats = client.info('commandstats')
    return {k: v['calls'] for k, v in stats.items() if k not in ('cmdstat_info',)}


def test_ids_not_ours_answer_none_without_reading_redis(redis_server, isolated):
    import redis
    client = redis.Redis.from_url(redis_server.url)
    client.set('secret', 'leak')
    client.hset('other:job:' + JOB, mapping={'state': 'running', 'progress': 5})
    q = start_async_worker(SimpleNamespace(), RedisProgressTracker(url=redis_server.url))
    try:
        bad = ['secret', '../secret', '*', 'asyncjob:job:x', JOB.upper(), JOB + '0', '',
               'x' * 10000, 42, None, b'0123456789abcdef0123456789abcdef']
        before = _commands(client)
        for jobid in bad:
            assert asyncjob_get_progress(jobid) is None
            assert asyncjob_get_status(jobid).state.value == 'not_found'
        assert _commands(client) == before  # not a single command for those ids
        assert asyncjob_get_progress(JOB) is None  # ours in shape, unknown: one read
        assert _commands(client) != before
    finally:
        q.stop(5)
        client.close()


@pytest.mark.parametrize('jobid', ['secret', '', 42, None, ('a',), JOB])
def test_ids_not_ours_answer_none_with_the_memory_tracker(isolated, jobid):
    q = start_async_worker(SimpleNamespace())
    try:
        assert asyncjob_get_progress(jobid) is None
        assert asyncjob_get_status(jobid).state.value == 'not_found'
    finally:
        q.stop(5)
