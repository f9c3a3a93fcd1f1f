"""Enqueue bound to the request's transaction, delayed jobs, and retries."""
import time
from types import SimpleNamespace

import pytest
import transaction
from tg import expose

from tgext.asyncjob import (Retry, asyncjob_cancel, asyncjob_get_progress, asyncjob_get_status,
                            asyncjob_options, asyncjob_perform, retry, start_async_worker)

from jobhelpers import wait_finished
from sampleapp import model
from sampleapp.controllers.root import RootController, db_session
from services import wait_for

FOUND = []


def read_row(row_id):
    row = db_session().query(model.Row).filter_by(id=row_id).first()
    FOUND.append(row is not None)


class CommitController(RootController):
    @expose('json')
    def create(self, fail=''):
        row = model.Row(name='fresh')
        db_session().add(row)
        db_session().flush()
        jobid = asyncjob_options(on_commit=True).perform(read_row, row.id)
        if fail:
            raise RuntimeError('the request failed after queueing')
        return dict(jobid=jobid, progress=asyncjob_get_progress(jobid))

    @expose('json')
    def create_by_setting(self):
        row = model.Row(name='fresh')
        db_session().add(row)
        db_session().flush()
        return dict(jobid=asyncjob_perform(read_row, row.id))


def test_a_job_queued_on_commit_always_sees_the_requests_rows(make_app, db_url):
    FOUND.clear()
    app = make_app(db_url, root=CommitController)
    q = app.app_globals.asyncjob_queue
    for _ in range(200):
        answer = app.get('/create').json
        assert answer['progress'] == [-1, None]
        wait_finished(q, answer['jobid'])
    assert FOUND == [True] * 200


def test_the_setting_makes_every_job_wait_for_the_commit(make_app, sqlite_db_url):
    FOUND.clear()
    app = make_app(sqlite_db_url, root=CommitController,
                   extra_config={'asyncjob.enqueue_on_commit': 'true'})
    q = app.app_globals.asyncjob_queue
    for _ in range(20):
        wait_finished(q, app.get('/create_by_setting').json['jobid'])
    assert FOUND == [True] * 20


def test_a_request_that_fails_after_queueing_cancels_the_job(make_app, db_url):
    FOUND.clear()
    app = make_app(db_url, root=CommitController)
    q = app.app_globals.asyncjob_queue
    with pytest.raises(RuntimeError):
        app.get('/create', params={'fail': '1'})
    [status] = q.recent(1)
    assert status.state.value == 'cancelled' and 'aborted' in status.detail
    wait_finished(q, q.perform(lambda: None))
    assert FOUND == [] and q.get_progress(status.id) is None


def test_outside_a_transaction_on_commit_queues_at_once():
    q = start_async_worker(SimpleNamespace())
    try:
        transaction.abort()
        assert wait_finished(q, asyncjob_options(on_commit=True).perform(lambda: 'now')).result == 'now'
        with transaction.manager:
            jobid = asyncjob_options(on_commit=True).perform(lambda: 'later')
            assert q.wait(jobid, 0.2).state.value == 'queued'
        assert wait_finished(q, jobid).result == 'later'
    finally:
        q.stop(5)


def test_options_never_collide_with_the_jobs_keyword_arguments():
    q = start_async_worker(SimpleNamespace())
    try:
        got = wait_finished(q, asyncjob_perform(lambda **kw: kw, retries=3, delay=1,
                                                on_commit=True, at=2)).result
        assert got == {'retries': 3, 'delay': 1, 'on_commit': True, 'at': 2}
    finally:
        q.stop(5)


def test_delayed_jobs_wait_as_queued_and_never_start_early(queue):
    starts = {}
    ids = {}
    for delay in (0.05, 0.2, 0.4):
        ids[delay] = asyncjob_options(delay=delay).perform(
            lambda d=delay: starts.setdefault(d, time.time()))
        assert asyncjob_get_progress(ids[delay]) == (-1, None)
    for delay, jobid in ids.items():
        status = wait_finished(queue, jobid)
        assert starts[delay] >= status.enqueued_at + delay
        assert asyncjob_get_status(jobid).started_at >= status.enqueued_at + delay


def test_at_takes_a_datetime(queue):
    import datetime
    when = datetime.datetime.now() + datetime.timedelta(seconds=0.1)
    status = wait_finished(queue, asyncjob_options(at=when).perform(time.time))
    assert status.result >= when.timestamp()


def test_a_delayed_job_can_be_cancelled(queue):
    ran = []
    jobid = asyncjob_options(delay=0.3).perform(ran.append, 1)
    assert asyncjob_cancel(jobid) is True
    assert asyncjob_get_status(jobid).state.value == 'cancelled'
    later = asyncjob_options(delay=0.4).perform(ran.append, 2)
    wait_finished(queue, later)
    assert ran == [2]


def test_stop_reports_delayed_jobs_that_never_ran(caplog):
    q = start_async_worker(SimpleNamespace())
    jobid = q.perform(print, delay=3600)
    assert q.stop(5) == [jobid]
    assert q.get_status(jobid).state.value == 'cancelled'
    assert any(jobid in r.getMessage() and 'print' in r.getMessage() for r in caplog.records)


def test_bad_options_are_refused_at_the_call_site():
    with pytest.raises(TypeError):
        asyncjob_options(retry=3)
    with pytest.raises(TypeError):
        asyncjob_options(delay=1, at=2)
    with pytest.raises(TypeError):
        Retry(on='ValueError')
    with pytest.raises(ValueError):
        Retry(max_retries=-1)


class Recorder:
    def __init__(self):
        self.delays, self.errors = [], []

    def on_retrying(self, job, error, delay):
        self.delays.append(delay)
        self.errors.append(error.message)


def test_retries_back_off_within_bounds_and_each_attempt_is_a_fresh_transaction(
        make_app, db_url):
    recorder = Recorder()
    app = make_app(db_url, plug_options={'hooks': [recorder]})
    q = app.app_globals.asyncjob_queue
    attempts = []
    policy = Retry(on=(LookupError,), max_retries=4, backoff=0.01, factor=3, max_backoff=0.2)

    def flaky():
        attempts.append(transaction.get())
        db_session().add(model.Row(name=f'attempt {len(attempts)}'))
        db_session().flush()
        if len(attempts) < 4:
            raise KeyError(f'attempt {len(attempts)}')
        return len(attempts)

    status = wait_finished(q, asyncjob_options(retry=policy).perform(flaky))
    assert status.state.value == 'succeeded' and status.result == 4 and status.attempt == 4
    assert len(set(map(id, attempts))) == 4
    for n, delay in enumerate(recorder.delays, start=1):
        low, high = policy.bounds(n)
        assert low <= delay <= high
    assert policy.bounds(3) == (0.045, 0.09) and policy.bounds(5) == (0.1, 0.2)
    assert recorder.errors == ["'attempt 1'", "'attempt 2'", "'attempt 3'"]
    assert [r['name'] for r in app.get('/rows').json['rows']] == ['attempt 4']


def test_exhausted_retries_fail_with_the_last_error(queue):
    calls = []

    @retry(on=ValueError, max_retries=2, backoff=0.001)
    def always_fails():
        calls.append(1)
        raise ValueError(f'failure {len(calls)}')

    status = wait_finished(queue, asyncjob_perform(always_fails))
    assert status.state.value == 'failed' and status.attempt == 3
    assert status.error.message == 'failure 3' and len(calls) == 3


def test_errors_not_named_are_not_retried(queue):
    calls = []

    @retry(on=ValueError, max_retries=5, backoff=0.001)
    def wrong_error():
        calls.append(1)
        raise TypeError('no retry')

    assert wait_finished(queue, asyncjob_perform(wrong_error)).state.value == 'failed'
    assert calls == [1]


def test_status_shows_the_attempt_and_last_error_while_waiting_to_retry(queue):
    @retry(on=ValueError, max_retries=1, backoff=3600, jitter=False)
    def fails_once():
        raise ValueError('first try')

    jobid = asyncjob_perform(fails_once)
    wait_for(lambda: asyncjob_get_status(jobid).error is not None)
    status = asyncjob_get_status(jobid)
    assert status.state.value == 'queued' and status.attempt == 1
    assert status.error.message == 'first try' and 'retrying' in status.detail
    assert asyncjob_cancel(jobid)
