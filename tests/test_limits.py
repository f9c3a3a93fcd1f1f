"""Concurrency limits and time limits (issue 13, sections 3 and 4), per backend.

Jobs record their own runs in the application's database (``span <key> <start>
<end>`` rows), so "never overlaps" is read from what the jobs saw, in the threads of
a web process and in several worker processes claiming at once.
"""

import threading
import time
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

import tgext.asyncjob as aj
from tgext.asyncjob import (JobOptions, JobQueue, TimeLimitExceeded, UnsupportedOption,
                            asyncjob_cancelled,
                            asyncjob_options, start_async_worker)
from tgext.asyncjob.backends.base import Backend

from sampleapp import model
from sampleapp.controllers.root import RootController, db_session
from services import wait_for
from test_rq import rq_app, rq_redis_url, rq_setup, workers  # noqa: F401 - fixtures
from test_worker_processes import mariadb, pg, status, wait_state  # noqa: F401 - fixtures
from test_sqlalchemy_backend import add_row, mariadb_url, queue_of, sql_app, url  # noqa: F401

WAIT = 60


def span(key, seconds=0.05):
    """Record this run's start and end (a row), in the job's transaction."""
    start = time.time()
    threading.Event().wait(seconds)
    db_session().add(model.Row(name='span %s %.6f %.6f' % (key, start, time.time())))


def flagged_loop(name):
    """Write a row, then loop until asyncjob_cancelled() turns true; return normally."""
    db_session().add(model.Row(name=name))
    db_session().flush()
    wait_for(asyncjob_cancelled, timeout=WAIT, message='the time limit never flagged the job')
    return 'returned'


def spans(rows):
    """``[(start, end)]`` sorted, from ``span`` rows' texts."""
    return sorted((float(a), float(b)) for _, _, a, b in (r.split() for r in rows))


def assert_no_overlap(found):
    assert len(found) >= 2
    for (_, end), (start, _) in zip(found, found[1:]):
        assert end <= start, 'two runs of the key overlapped: %r' % found


class LimitsController(RootController):
    from tg import expose

    @expose('json')
    def keyed(self, key='k', count='8', limit='1'):
        ids = [asyncjob_options(concurrency_key='user:42', concurrency_limit=int(limit))
               .perform(span, '%s-%d' % (key, n)) for n in range(int(count))]
        ids += [aj.asyncjob_perform(span, 'free-%d' % n) for n in range(int(count))]
        return dict(jobids=ids)

    @expose('json')
    def limited(self, name='looped', seconds='0.5'):
        return dict(jobid=asyncjob_options(time_limit=float(seconds)).perform(
            flagged_loop, name))


# ------------------------------------------------------------- at the call site


@pytest.mark.parametrize('options, error', [
    (dict(concurrency_key='k'), TypeError),
    (dict(concurrency_limit=1), TypeError),
    (dict(concurrency_key='', concurrency_limit=1), TypeError),
    (dict(concurrency_key=42, concurrency_limit=1), TypeError),
    (dict(concurrency_key='k', concurrency_limit=0), ValueError),
    (dict(concurrency_key='k', concurrency_limit=1.5), TypeError),
    (dict(concurrency_key='k', concurrency_limit=True), TypeError),
    (dict(concurrency_key='k' * 256, concurrency_limit=1), ValueError),
    (dict(time_limit=0), ValueError),
    (dict(time_limit=-1), ValueError),
    (dict(time_limit=float('nan')), ValueError),
    (dict(time_limit='30'), TypeError),
])
def test_bad_options_raise_at_the_call_site(options, error):
    with pytest.raises(error):
        asyncjob_options(**options)


class _Bare(Backend):
    def enqueue(self, job):
        raise AssertionError('a job asking for what the backend cannot do was handed over')


@pytest.mark.parametrize('options', [dict(concurrency_key='k', concurrency_limit=1),
                                     dict(time_limit=5)])
def test_a_backend_without_the_flag_refuses_at_the_call_site(options):
    q = JobQueue(backend=_Bare)
    with pytest.raises(UnsupportedOption, match='supports_'):
        q.perform(span, ('x',), options=JobOptions(**options))
    q.stop()


def test_a_default_time_limit_needs_a_backend_with_time_limits():
    with pytest.raises(UnsupportedOption, match='time_limit'):
        JobQueue(backend=_Bare, time_limit=5)


def test_rq_refuses_concurrency_limits(rq_redis_url):  # noqa: F811
    q = JobQueue(backend='rq', backend_options=dict(redis_url=rq_redis_url,
                                                    queue_name='asyncjob-limits-refused'))
    try:
        with pytest.raises(UnsupportedOption, match='concurrency_key'):
            q.perform(span, ('x',), options=JobOptions(concurrency_key='k', concurrency_limit=1))
    finally:
        q.stop()


def test_the_time_limit_setting_is_checked_and_applies_to_every_job():
    with pytest.raises(ValueError, match='asyncjob.time_limit'):
        start_async_worker(SimpleNamespace(), time_limit=0)
    q = start_async_worker(SimpleNamespace(), time_limit=0.3, workers=1)
    try:
        def loop():
            wait_for(asyncjob_cancelled, timeout=WAIT, message='never flagged')
        status = q.wait(q.perform(loop), WAIT)
        assert (status.state.value, status.error.type) == ('failed', 'TimeLimitExceeded')
        assert q.wait(q.perform(lambda: 'quick'), WAIT).result == 'quick'
    finally:
        q.stop()


# ------------------------------------------------------------- threads backend


def test_threads_concurrency_limit_1_never_overlaps(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, root=LimitsController,
                   extra_config={'asyncjob.workers': '4'})
    ids = app.get('/keyed', params={'count': '8'}).json['jobids']
    for jobid in ids:
        assert aj.asyncjob_wait(jobid, WAIT).state.value == 'succeeded'
    rows = [r.name for r in db_session().query(model.Row)]
    assert_no_overlap(spans(r for r in rows if r.startswith('span k-')))
    assert len([r for r in rows if r.startswith('span free-')]) == 8


def test_threads_concurrency_limit_2_runs_two_at_a_time(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, root=LimitsController,
                   extra_config={'asyncjob.workers': '4'})
    ids = app.get('/keyed', params={'count': '6', 'limit': '2'}).json['jobids']
    for jobid in ids:
        assert aj.asyncjob_wait(jobid, WAIT).state.value == 'succeeded'
    found = spans(r.name for r in db_session().query(model.Row) if r.name.startswith('span k-'))
    for i, (start, _) in enumerate(found):  # at most 2 running at any start
        assert sum(1 for s, e in found[:i] if e > start) <= 1, found


@pytest.fixture
def queue3():
    q = start_async_worker(SimpleNamespace(), workers=3)
    yield q
    q.stop(WAIT)


def test_threads_a_waiting_job_holds_no_thread_and_a_cancelled_one_is_skipped(queue3):
    queue = queue3
    gate, started = threading.Event(), threading.Event()

    def first():
        started.set()
        gate.wait(WAIT)
    keyed = dict(concurrency_key='c', concurrency_limit=1)
    a = queue.perform(first, options=JobOptions(**keyed))
    started.wait(WAIT)
    b = queue.perform(lambda: 'b', options=JobOptions(**keyed))
    c = queue.perform(lambda: 'c', options=JobOptions(**keyed))
    wait_for(lambda: queue.backend.slots.waiting() == 2, timeout=WAIT,
             message='the jobs over the limit were not set aside')
    # Both set aside, no thread held: an unkeyed job runs on a free thread meanwhile.
    assert queue.wait(queue.perform(lambda: 'free'), WAIT).result == 'free'
    assert queue.cancel(b)
    gate.set()
    assert queue.wait(c, WAIT).result == 'c'
    assert queue.get_status(a).state.value == 'succeeded'
    assert queue.get_status(b).state.value == 'cancelled'


def test_threads_a_failed_job_releases_its_slot(queue):
    keyed = dict(concurrency_key='f', concurrency_limit=1)

    def boom():
        raise RuntimeError('boom')
    a = queue.perform(boom, options=JobOptions(**keyed))
    b = queue.perform(lambda: 'after', options=JobOptions(**keyed))
    assert queue.wait(b, WAIT).result == 'after'
    assert queue.get_status(a).state.value == 'failed'


def test_threads_time_limit_flags_the_job_and_fails_it(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, root=LimitsController)
    jobid = app.get('/limited', params={'name': 'looped', 'seconds': '0.3'}).json['jobid']
    status = aj.asyncjob_wait(jobid, WAIT)
    assert status.state.value == 'failed'
    assert status.error.type == 'TimeLimitExceeded'
    assert 'time limit of 0.3 s' in status.error.message
    assert db_session().query(model.Row).filter_by(name='looped').count() == 0  # rolled back


def test_a_retry_policy_naming_time_limit_exceeded_retries_it(queue):
    def overrun():
        wait_for(asyncjob_cancelled, timeout=WAIT, message='never flagged')
    status = queue.wait(queue.perform(overrun, options=JobOptions(time_limit=0.2, retry=aj.Retry(
        on=(TimeLimitExceeded,), max_retries=1, backoff=0))), WAIT)
    assert (status.state.value, status.attempt) == ('failed', 2)
    assert status.error.type == 'TimeLimitExceeded'


def test_a_default_retry_policy_does_not_retry_a_time_limit(queue):
    def overrun():
        wait_for(asyncjob_cancelled, timeout=WAIT, message='never flagged')
    status = queue.wait(queue.perform(overrun, options=JobOptions(
        time_limit=0.2, retry=aj.Retry(max_retries=3, backoff=0))), WAIT)
    assert (status.state.value, status.attempt) == ('failed', 1)


# ------------------------------------------------------------- sqlalchemy


def test_sqlalchemy_a_rescued_job_frees_its_slot(make_app, url):  # noqa: F811
    from tgext.asyncjob.backends.sqlalchemy import claims
    app = sql_app(make_app, url, in_process='false', lease_timeout='0.5')
    q = queue_of(app)
    backend = q.backend
    keyed = dict(concurrency_key='rescued', concurrency_limit=1)
    a = q.perform(add_row, ('a',), options=JobOptions(**keyed))
    b = q.perform(add_row, ('b',), options=JobOptions(**keyed))
    taken = claims.claim(backend.engines, 'a-worker-that-dies', ['default'], time.time(), 5)
    assert [r['id'] for r in taken] == [a]
    assert backend._claim(['default'], 5) == []  # b waits for a's slot
    wait_for(lambda: backend.rescue() == [a], timeout=WAIT, message='a was never rescued')
    assert q.get_status(a).error.type == 'WorkerDied'
    assert [r['id'] for r in backend._claim(['default'], 5)] == [b]


def test_sqlalchemy_keys_in_order_and_other_jobs_are_not_held_up(make_app, url):  # noqa: F811
    app = sql_app(make_app, url, in_process='false')
    q = queue_of(app)
    backend = q.backend
    keyed = dict(concurrency_key='ordered', concurrency_limit=2)
    ids = [q.perform(add_row, ('k%d' % n,), options=JobOptions(**keyed)) for n in range(4)]
    free = q.perform(add_row, ('free',))
    first = [r['id'] for r in backend._claim(['default'], 10)]
    assert first == ids[:2] + [free]  # two of the key, in order, and the unkeyed one
    assert backend._claim(['default'], 10) == []


# ------------------------------------------------------------- sqlalchemy, processes


def _span_rows(app):
    with app.engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT job_key FROM job_runs WHERE job_key LIKE 'span %'")).scalars())


@pytest.mark.parametrize('db', ['pg', 'mariadb'])
def test_sqlalchemy_two_workers_never_overlap_a_key_of_limit_1(db, request):
    app = request.getfixturevalue(db)
    web = app.web(**{'asyncjob.backend.in_process': 'false'})
    for _ in range(2):  # both claiming, woken at once, as the jobs come
        app.worker('--threads', '3', **{'asyncjob.backend.poll_interval': '0.2'})
    keyed, free = [], []
    for n in range(10):
        keyed.append(status_id(web, job='span', key='k-%d' % n, concurrency_key='user:42',
                               concurrency_limit='1'))
        if n < 6:  # long enough that one worker's free threads cannot take them all
            free.append(status_id(web, job='span', key='free-%d' % n, seconds='0.5'))
    for jobid in keyed + free:
        wait_state(web, jobid, 'succeeded', timeout=WAIT)
    rows = _span_rows(app)
    assert_no_overlap(spans(r for r in rows if r.startswith('span k-')))
    assert len(app.pids()) == 2  # both workers ran jobs


def status_id(web, **params):
    from processes import get_json
    return get_json(web.url, 'queue', **params)['jobid']


def test_sqlalchemy_worker_process_stops_a_python_loop(pg):  # noqa: F811
    web = pg.web(**{'asyncjob.backend.in_process': 'false'})
    jobid = status_id(web, job='spin', key='spun', time_limit='1')
    after = status_id(web, job='count', key='after')
    pg.worker('--threads', '1')
    got = wait_state(web, jobid, 'failed', timeout=WAIT)
    assert got['error']['type'] == 'TimeLimitExceeded'
    wait_state(web, after, 'succeeded', timeout=WAIT)  # the same thread goes on
    assert pg.runs() == {'after': 1}  # the looping job's row was rolled back


# ------------------------------------------------------------- rq


def test_rq_worker_stops_a_python_loop(rq_app, rq_setup, workers):  # noqa: F811
    app = rq_app()
    jobid = app.get('/queue', params={'job': 'spin', 'name': 'spun',
                                      'time_limit': '1'}).json['jobid']
    workers()
    status = wait_for(lambda: (lambda s: s if s.finished else None)(
        aj.asyncjob_get_status(jobid)), timeout=WAIT, message=lambda: workers.logs())
    assert status.state.value == 'failed', workers.logs()
    assert status.error.type == 'TimeLimitExceeded'
    engine = sa.create_engine(rq_setup['db_url'], poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM rows WHERE name = 'spun'")).scalar() == 0
    engine.dispose()


def test_time_limit_exceeded_is_exported_and_not_an_exception():
    assert aj.TimeLimitExceeded is TimeLimitExceeded
    assert not issubclass(TimeLimitExceeded, Exception)
