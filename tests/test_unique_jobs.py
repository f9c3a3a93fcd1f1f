"""Unique jobs (``asyncjob_options(unique_key=...)``, README "Unique jobs") on every
backend, through real TurboGears applications (WebTest): the threads backend with the
memory tracker and with the Redis tracker, the sqlalchemy backend on SQLite,
PostgreSQL and MariaDB; the rq backend runs the shared rows of
tests/test_contract_backends.py. Concurrent identical requests get one job, from
threads of one process and from two processes."""
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy
from tg import expose

import processes
from sampleapp.controllers.root import RootController
from services import wait_for
from test_sqlalchemy_backend import job_rows, mariadb_url, url  # noqa: F401 (fixtures)
from tgext.asyncjob import (JobOptions, JobQueue, JobState, UnsupportedOption,
                            asyncjob_options)
from tgext.asyncjob.backends.sqlalchemy import schema
from tgext.asyncjob.trackers.base import LegacyTrackerAdapter
from uniqueproc import hold

WAIT = 30
CONCURRENT = 50


class UniqueController(RootController):
    @expose('json')
    def export(self, key, gate, unique_for=None):
        """The "Export" button: one job per ``key`` while it is queued or running."""
        options = asyncjob_options(unique_key=key, unique_for=None if unique_for is None
                                   else float(unique_for))
        return dict(jobid=options.perform(hold, gate))


def _key():
    return f'export:{uuid.uuid4().hex}'


def _runs(gate):
    try:
        with open(gate + '.runs') as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


def _concurrently(app, key, gate, count=CONCURRENT):
    barrier = threading.Barrier(count)

    def click(_):
        barrier.wait(WAIT)
        return app.get('/export', params={'key': key, 'gate': gate}).json['jobid']
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(click, range(count)))


@pytest.fixture(params=['memory', 'redis'])
def threads_app(request, make_app, tmp_path):
    config = {'asyncjob.workers': '2'}
    if request.param == 'redis':
        config['asyncjob.tracker'] = request.getfixturevalue('redis_url')
    return make_app(f'sqlite:///{tmp_path / "app.sqlite"}', root=UniqueController,
                    extra_config=config)


def _queue(app):
    return app.app_globals.asyncjob_queue


# ------------------------------------------------------------------ threads

def test_concurrent_identical_requests_get_one_job(threads_app, tmp_path):
    key, gate = _key(), str(tmp_path / 'gate')
    ids = _concurrently(threads_app, key, gate)
    assert len(set(ids)) == 1, set(ids)
    q = _queue(threads_app)
    open(gate, 'w').close()
    assert q.wait(ids[0], WAIT).state is JobState.SUCCEEDED
    assert _runs(gate) == 1
    # Finished: the key is free, the next click queues a new job.
    again = threads_app.get('/export', params={'key': key, 'gate': gate}).json['jobid']
    assert again != ids[0]
    assert q.wait(again, WAIT).state is JobState.SUCCEEDED


def test_a_queued_job_keeps_its_key_and_other_keys_are_independent(threads_app, tmp_path):
    gate = str(tmp_path / 'gate')
    key = _key()
    first = threads_app.get('/export', params={'key': key, 'gate': gate}).json['jobid']
    other = threads_app.get('/export', params={'key': _key(), 'gate': gate}).json['jobid']
    assert other != first
    # Both workers are busy: a third key's job waits queued, and keeps its key.
    waiting_key = _key()
    waiting = threads_app.get('/export', params={'key': waiting_key, 'gate': gate}).json['jobid']
    q = _queue(threads_app)
    assert q.get_status(waiting).state is JobState.QUEUED
    assert threads_app.get('/export', params={'key': waiting_key,
                                              'gate': gate}).json['jobid'] == waiting
    assert threads_app.get('/export', params={'key': key, 'gate': gate}).json['jobid'] == first
    open(gate, 'w').close()
    for jobid in (first, other, waiting):
        assert q.wait(jobid, WAIT).state is JobState.SUCCEEDED
    assert _runs(gate) == 3


def test_unique_for_caps_how_long_the_key_is_held(threads_app, tmp_path):
    gate, key = str(tmp_path / 'gate'), _key()
    params = {'key': key, 'gate': gate, 'unique_for': '0.2'}
    first = threads_app.get('/export', params=params).json['jobid']
    # Still running, but the key expired: the next click gets a job of its own.
    second = wait_for(lambda: (lambda j: j != first and j)(
        threads_app.get('/export', params=params).json['jobid']), timeout=WAIT)
    open(gate, 'w').close()
    q = _queue(threads_app)
    assert q.wait(first, WAIT).state is JobState.SUCCEEDED
    assert q.wait(second, WAIT).state is JobState.SUCCEEDED


def test_a_job_refused_by_a_full_queue_lets_its_key_go(started, tmp_path):
    q = started(workers=1, max_queue=1, put_timeout=0)
    gate = str(tmp_path / 'gate')
    running = q.perform(hold, (gate,))
    wait_for(lambda: _runs(gate) == 1, timeout=WAIT)
    q.perform(hold, (gate,))  # fills the queue
    options = JobOptions(unique_key=_key())
    from tgext.asyncjob import QueueFull
    with pytest.raises(QueueFull):
        q.perform(hold, (gate,), options=options)
    open(gate, 'w').close()
    q.wait(running, WAIT)
    wait_for(lambda: q.backend.channel.empty(), timeout=WAIT)
    jobid = q.perform(hold, (gate,), options=options)  # not the refused job's id
    assert q.wait(jobid, WAIT).state is JobState.SUCCEEDED


def test_two_processes_with_the_redis_tracker_get_one_job(make_app, redis_url, tmp_path):
    app = make_app(f'sqlite:///{tmp_path / "app.sqlite"}', root=UniqueController,
                   extra_config={'asyncjob.workers': '2', 'asyncjob.tracker': redis_url})
    _two_processes(app, 'redis', redis_url, tmp_path)


def _two_processes(app, kind, url, tmp_path):  # noqa: F811
    key, gate = _key(), str(tmp_path / 'gate')
    go, out = str(tmp_path / 'go'), str(tmp_path / 'other.json')
    procs = processes.Processes(tmp_path)
    try:
        other = procs.start('other', ['python', os.path.join(processes.TESTS_DIR, 'uniqueproc.py'),
                                      kind, url, key, str(CONCURRENT // 2), go, gate, out])
        open(go, 'w').close()
        here = _concurrently(app, key, gate, CONCURRENT // 2)
        there = wait_for(lambda: os.path.exists(out) and json.load(open(out)), timeout=WAIT,
                         message=lambda: other.tail())
        assert len(set(here + there)) == 1, (set(here), set(there))
        open(gate, 'w').close()
        assert other.wait_exit() == 0, other.tail()
    finally:
        procs.close()
    return here[0], gate


# -------------------------------------------------------------- sqlalchemy

def _sql_app(make_app, url, **settings):  # noqa: F811
    config = {'asyncjob.backend': 'sqlalchemy', 'asyncjob.workers': '2'}
    config.update({f'asyncjob.backend.{k}': v for k, v in settings.items()})
    return make_app(url, root=UniqueController, extra_config=config)


def _key_rows(url):  # noqa: F811
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sqlalchemy.select(schema.unique_keys))]
    finally:
        engine.dispose()


def test_sql_concurrent_identical_requests_get_one_row(make_app, url, tmp_path):  # noqa: F811
    app = _sql_app(make_app, url, in_process='false')
    key, gate = _key(), str(tmp_path / 'gate')
    ids = _concurrently(app, key, gate)
    assert len(set(ids)) == 1, set(ids)
    assert [r['id'] for r in job_rows(url, unique_key=key)] == [ids[0]]
    assert [(r['unique_key'], r['job_id']) for r in _key_rows(url)] == [(key, ids[0])]
    # Its job ended: the key is stale, and 50 requests racing to take it over get one job.
    assert _queue(app).cancel(ids[0])
    again = _concurrently(app, key, gate)
    assert len(set(again)) == 1 and again[0] != ids[0], set(again)
    assert sorted(r['id'] for r in job_rows(url, unique_key=key)) == sorted([ids[0], again[0]])
    assert [r['job_id'] for r in _key_rows(url)] == [again[0]]


def test_sql_two_processes_get_one_row(make_app, url, tmp_path):  # noqa: F811
    app = _sql_app(make_app, url, in_process='false')
    jobid, gate = _two_processes(app, 'sqlalchemy', url, tmp_path)
    assert [r['id'] for r in job_rows(url)] == [jobid]


def test_sql_the_key_is_free_once_its_job_ended(make_app, url, tmp_path):  # noqa: F811
    app = _sql_app(make_app, url, in_process='false')
    q = _queue(app)
    gate, key = str(tmp_path / 'gate'), _key()
    open(gate, 'w').close()

    def click():
        return app.get('/export', params={'key': key, 'gate': gate}).json['jobid']
    cancelled = click()
    assert click() == cancelled
    assert q.cancel(cancelled)
    ran = click()
    assert ran != cancelled and click() == ran
    q.backend.work(threads=1, burst=True)
    assert q.get_status(ran).state is JobState.SUCCEEDED
    assert click() != ran


def test_sql_a_finished_holder_frees_only_its_own_key(make_app, url, tmp_path):  # noqa: F811
    app = _sql_app(make_app, url, in_process='false')
    q = _queue(app)
    live, other = _key(), _key()
    held = q.perform(hold, ('never',), options=JobOptions(unique_key=live))
    assert q.cancel(q.perform(hold, ('never',), options=JobOptions(unique_key=other)))
    assert q.perform(hold, ('never',), options=JobOptions(unique_key=live)) == held


def test_sql_a_transaction_taking_a_stale_key_makes_a_concurrent_one_wait(url):  # noqa: F811
    """The upsert of the second transaction waits for the first, then sees its job."""
    from tgext.asyncjob.backends.sqlalchemy import uniquekeys
    q = JobQueue(backend='sqlalchemy', backend_options={'url': url, 'in_process': False})
    engines = q.backend.engines
    try:
        stale = q.perform(hold, ('never',), options=JobOptions(unique_key='k'))
        assert q.cancel(stale)
        first = q.backend.engines.write.connect()
        txn = first.begin()
        assert uniquekeys.hold(first, engines.dialect, 'k', 'a' * 32, None, 1.0) is None
        answer = []
        second = threading.Thread(target=lambda: answer.append(_hold_alone(engines, 'b' * 32)))
        second.start()
        if engines.dialect != 'sqlite':  # SQLite: it waits to begin, its reads come after
            wait_for(lambda: _lock_waits(engines), timeout=WAIT,
                     message='the second transaction never waited on the first')
        txn.commit()
        first.close()
        second.join(WAIT)
        assert answer == ['a' * 32]
    finally:
        q.stop(5)
        engines.dispose()


def _lock_waits(engines):
    query = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
             if engines.dialect == 'postgresql' else
             "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'")
    with engines.read.connect() as conn:
        return conn.exec_driver_sql(query).scalar()


def _hold_alone(engines, jobid):
    from tgext.asyncjob.backends.sqlalchemy import uniquekeys
    with engines.writing() as conn:
        return uniquekeys.hold(conn, engines.dialect, 'k', jobid, None, 1.0)


def test_sql_the_key_of_a_job_whose_worker_died_is_free_once_it_is_rescued(url):  # noqa: F811
    import time
    q = JobQueue(backend='sqlalchemy', backend_options={'url': url, 'in_process': False})
    engines = q.backend.engines
    options = JobOptions(unique_key='k')
    try:
        jobid = q.perform(hold, ('never',), options=options)
        long_ago = time.time() - 3600
        with engines.writing() as conn:  # claimed by a worker that died since
            conn.execute(schema.workers.insert().values(
                id='dead:1:x', hostname='dead', pid=1, started_at=long_ago,
                heartbeat_at=long_ago))
            conn.execute(schema.jobs.update().values(
                state='running', worker_id='dead:1:x', attempt=1, started_at=long_ago))
        assert q.perform(hold, ('never',), options=options) == jobid  # running: held
        assert q.backend.rescue() == [jobid]
        status = q.get_status(jobid)
        assert (status.state, status.error.type) == (JobState.FAILED, 'WorkerDied')
        assert q.perform(hold, ('never',), options=options) != jobid
    finally:
        q.stop(5)
        engines.dispose()


def test_sql_deleting_a_finished_job_deletes_the_key_it_held(url):  # noqa: F811
    q = JobQueue(backend='sqlalchemy', backend_options={'url': url, 'in_process': False})
    options = JobOptions(unique_key='k')
    try:
        jobid = q.perform(hold, ('never',), options=options)
        assert q.cancel(jobid) and q.store.delete_finished(jobid)
        assert _key_rows(url) == []  # else a key held by a row gone would look live
        assert q.perform(hold, ('never',), options=options) != jobid
    finally:
        q.stop(5)
        q.backend.engines.dispose()


def test_sql_an_aborted_request_holds_no_key(make_app, url, tmp_path):  # noqa: F811
    import transaction
    app = _sql_app(make_app, url, in_process='false')
    q = _queue(app)
    key, gate = _key(), str(tmp_path / 'gate')
    transaction.begin()
    aborted = q.perform(hold, (gate,), options=JobOptions(unique_key=key))
    transaction.abort()
    assert job_rows(url) == [] and _key_rows(url) == []
    assert q.perform(hold, (gate,), options=JobOptions(unique_key=key)) != aborted


def test_sql_a_key_inside_a_transaction_commits_with_it(make_app, url, tmp_path):  # noqa: F811
    import transaction
    app = _sql_app(make_app, url, in_process='false')
    q = _queue(app)
    key, gate = _key(), str(tmp_path / 'gate')
    with transaction.manager:
        first = q.perform(hold, (gate,), options=JobOptions(unique_key=key))
        # The same transaction sees its own key.
        assert q.perform(hold, (gate,), options=JobOptions(unique_key=key)) == first
    assert [r['id'] for r in job_rows(url)] == [first]


def test_sql_pruning_lets_the_keys_of_pruned_jobs_go(url):  # noqa: F811
    from tgext.asyncjob.backends.sqlalchemy.engine import make_engines
    from tgext.asyncjob.backends.sqlalchemy.pruning import prune
    q = JobQueue(backend='sqlalchemy', backend_options={'url': url, 'in_process': False})
    try:
        jobid = q.perform(hold, ('never',), options=JobOptions(unique_key='k'))
        engines = q.backend.engines
        with engines.writing() as conn:  # a finished job whose key was never let go
            conn.execute(schema.jobs.update().values(state='succeeded', finished_at=1.0))
        assert prune(engines, 'test', 60, 1e10) == 1
        assert _key_rows(url) == []
        assert q.perform(hold, ('never',), options=JobOptions(unique_key='k')) != jobid
    finally:
        q.stop(5)
        q.backend.engines.dispose()


# ------------------------------------------------------------- call site

@pytest.mark.parametrize('options, error', [
    ({'unique_key': ''}, ValueError), ({'unique_key': 42}, TypeError),
    ({'unique_key': 'k' * 256}, ValueError), ({'unique_key': 'k', 'unique_for': 0}, ValueError),
    ({'unique_key': 'k', 'unique_for': -1}, ValueError),
    ({'unique_key': 'k', 'unique_for': '10'}, TypeError), ({'unique_for': 10}, TypeError),
])
def test_bad_unique_options_raise_at_the_call_site(options, error):
    with pytest.raises(error):
        asyncjob_options(**options)


def test_a_tracker_that_cannot_hold_keys_is_refused_at_the_call_site(tmp_path):
    class OldTracker:  # a 0.3 four-method tracker
        def track(self, entryid): pass
        def remove(self, entryid): pass
        def set_progress(self, entryid, value, message): pass
        def get_progress(self, entryid): return None
    q = JobQueue(OldTracker())
    assert isinstance(q.store, LegacyTrackerAdapter)
    try:
        with pytest.raises(UnsupportedOption, match='unique'):
            q.perform(hold, ('never',), options=JobOptions(unique_key='k'))
    finally:
        q.stop(1)
