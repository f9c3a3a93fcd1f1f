"""The Redis tracker against a real Redis: JSON records, expiry, key namespace, outages."""
import json
import os
import signal
import time
from types import SimpleNamespace

import pytest
import redis

from tgext.asyncjob import (asyncjob_get_progress, asyncjob_get_status, asyncjob_perform,
                            asyncjob_set_progress, start_async_worker)
from tgext.asyncjob.trackers.base import RESULT_BUDGET as BUDGET
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker, check_redis_url

from jobhelpers import Gate, wait_finished
from services import wait_for

JOB = '0123456789abcdef0123456789abcdef'
BIG = 10 * 1024 * 1024


@pytest.fixture
def tracker(redis_url, redis_client):
    return RedisProgressTracker(url=redis_url, timeout=600)


def test_both_import_spellings_give_the_same_classes():
    from tgext.asyncjob.tracker.memory import MemoryProgressTracker as A
    from tgext.asyncjob.tracker.redisdb import RedisProgressTracker as B
    from tgext.asyncjob.trackers.memory import MemoryProgressTracker as C
    assert A is C and B is RedisProgressTracker


def test_03_constructor_arguments_and_defaults(redis_url):
    t = RedisProgressTracker()
    kwargs = t.redis.connection_pool.connection_kwargs
    assert (kwargs['host'], kwargs['port'], kwargs['db'], t.timeout) == ('localhost', 6379, 15, 3600)
    t = RedisProgressTracker(host='127.0.0.1', port=6380, db=3, timeout=60)
    kwargs = t.redis.connection_pool.connection_kwargs
    assert (kwargs['port'], kwargs['db'], t.timeout) == (6380, 3, 60)


def test_an_existing_client_is_used(redis_url, redis_client):
    t = RedisProgressTracker(client=redis_client)
    t.track(JOB)
    assert t.get_progress(JOB) == (-1, None)


def test_progress_round_trips_as_json_tuple_with_non_ascii(tracker):
    tracker.track(JOB)
    assert tracker.get_progress(JOB) == (-1, None)
    tracker.set_progress(JOB, 50, {'msg': 'caffè ☕ 東京', 'n': [1, 2]})
    progress = tracker.get_progress(JOB)
    assert isinstance(progress, tuple)
    assert progress == (50, {'msg': 'caffè ☕ 東京', 'n': [1, 2]})
    tracker.remove(JOB)
    assert tracker.get_progress(JOB) is None


def test_every_write_keeps_the_key_expiring(tracker, redis_client):
    key = f'asyncjob:job:{JOB}'
    tracker.track(JOB)
    assert 0 < redis_client.ttl(key) <= 600
    tracker.set_progress(JOB, 1, None)
    assert 0 < redis_client.ttl(key) <= 600
    tracker.update(JOB, {'state': 'running'})
    assert 0 < redis_client.ttl(key) <= 600
    tracker.finish(JOB, {'state': 'succeeded'})
    assert 0 < redis_client.ttl(key) <= tracker.retention


def test_ids_cannot_reach_keys_outside_the_namespace(tracker, redis_client):
    redis_client.set('secret', json.dumps([1, 'leak']))
    redis_client.hset('asyncjob:job:x', mapping={'state': 'running', 'progress': 1})
    for bad in ['secret', '../secret', 'x', '*', 'asyncjob:job:x', JOB.upper(), JOB + 'a', 42, None]:
        assert tracker.get_progress(bad) is None
        assert tracker.get_record(bad) is None


def test_data_redis_cannot_store_raises_type_error_in_the_job(redis_url, redis_client):
    q = start_async_worker(SimpleNamespace(), RedisProgressTracker(url=redis_url))
    errors = []

    def job():
        for data in [object(), {1j}, b'bytes']:
            try:
                asyncjob_set_progress(1, data)
            except TypeError as exc:
                errors.append(str(exc))
        try:
            asyncjob_set_progress(2, 'x' * 70000)
        except ValueError as exc:
            errors.append(str(exc))

    try:
        wait_finished(q, asyncjob_perform(job))
    finally:
        q.stop(5)
    assert len(errors) == 4
    assert all('JSON' in e for e in errors[:3]) and '65536' in errors[3]


def test_jobs_through_the_redis_tracker(redis_url, redis_client):
    q = start_async_worker(SimpleNamespace(), RedisProgressTracker(url=redis_url))
    gate = Gate()

    def job():
        asyncjob_set_progress(70, 'almost')
        gate.job()
        return {'rows': 3}

    try:
        jobid = asyncjob_perform(job)
        gate.wait_entered()
        wait_for(lambda: asyncjob_get_progress(jobid) == (70, 'almost'))
        gate.release()
        status = wait_finished(q, jobid)
        assert asyncjob_get_progress(jobid) is None
        assert status.result == {'rows': 3} and status.state.value == 'succeeded'
        assert asyncjob_get_status(jobid).started_at >= status.enqueued_at
    finally:
        q.stop(5)


def test_unreachable_redis_raises_tracker_unavailable_on_read():
    from tgext.asyncjob import TrackerUnavailable
    from services import free_port
    t = RedisProgressTracker(port=free_port(), socket_timeout=0.5)
    with pytest.raises(TrackerUnavailable):
        t.get_progress(JOB)


def test_redis_py_itself_is_real(redis_client):
    assert isinstance(redis_client, redis.Redis) and redis_client.ping()


# -- issue 10 case 14: a hung Redis costs one bounded attempt --------------------------

def test_a_hung_redis_stalls_perform_for_one_attempt_only(redis_server):
    """SIGSTOP the server: TCP still connects, nothing answers. docs/trackers.rst promises one
    attempt bounded by ``socket_timeout``; retrying after the timeout doubled it."""
    socket_timeout = 3.0
    tracker = RedisProgressTracker(url=redis_server.url, socket_timeout=socket_timeout)
    q = start_async_worker(SimpleNamespace(), tracker)
    try:
        wait_finished(q, asyncjob_perform(int, '1'))  # a live connection in the pool
        os.kill(redis_server._process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            asyncjob_perform(int, '2')  # the tracker outage is logged, not raised
            took = time.monotonic() - started
        finally:
            os.kill(redis_server._process.pid, signal.SIGCONT)
    finally:
        q.stop(30)
    # The bound plus generous slack, and still below two attempts (2 * socket_timeout).
    assert took < socket_timeout + 2.0, f'perform took {took:.1f} s'


def test_startup_check_of_a_hung_redis_answers_within_its_timeout(redis_server):
    tracker = RedisProgressTracker(url=redis_server.url)  # socket_timeout 5 s
    os.kill(redis_server._process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        problem = tracker.startup_check(timeout=0.5)
        took = time.monotonic() - started
    finally:
        os.kill(redis_server._process.pid, signal.SIGCONT)
    assert 'did not answer PING' in problem and 'Timeout' in problem
    assert took < 0.5 + 2.0, f'startup_check took {took:.1f} s'


# -- issue 10 case 18: one job's writes reach Redis in order ------------------------------

def test_a_jobs_progress_never_reaches_redis_before_its_start(redis_url, redis_client):
    """With a write-behind that holds writes back (a long linger), the job's "running"
    write waits in the buffer; its progress, sent at once, used to overtake it (seen:
    progress 30 with started_at None). Progress is now sent behind what waits."""
    tracker = RedisProgressTracker(url=redis_url, write_behind=30)
    q = start_async_worker(SimpleNamespace(), tracker)
    gate = Gate()

    def job():
        asyncjob_set_progress(30, 'thirty')
        gate.job()

    try:
        jobid = asyncjob_perform(job)
        gate.wait_entered()
        stored = {k.decode(): v.decode()
                  for k, v in redis_client.hgetall(f'asyncjob:job:{jobid}').items()}
        assert stored['progress'] == '30'
        assert stored['state'] == 'running' and float(stored['started_at']) > 0
        assert stored['attempt'] == '1'
    finally:
        gate.release()
        q.stop(5)  # waits for the job, then sends what the long linger holds back
    assert q.get_status(jobid).state.value == 'succeeded'


def test_a_late_start_never_lands_after_the_end(tracker, redis_client):
    """Whatever the order writes arrive in, from this process or another, a finished
    record is final in Redis itself (the write is a script that checks the state)."""
    tracker.track(JOB)
    other_process = RedisProgressTracker(client=redis_client)
    tracker.finish(JOB, {'state': 'succeeded', 'finished_at': 5.0})
    tracker.flush()
    other_process.update(JOB, {'state': 'running', 'started_at': 4.0})
    other_process.set_progress(JOB, 10, None)
    other_process.flush()
    assert redis_client.hget(f'asyncjob:job:{JOB}', 'state') == b'succeeded'
    assert redis_client.hget(f'asyncjob:job:{JOB}', 'started_at') is None


# -- issue 10 case 10: byte budgets in Redis ---------------------------------------------

def test_ten_megabyte_results_and_messages_are_stored_truncated(redis_url, redis_client):
    q = start_async_worker(SimpleNamespace(), RedisProgressTracker(url=redis_url))

    def fail():
        raise ValueError('m' * BIG)

    try:
        done = wait_finished(q, asyncjob_perform(lambda: 'r' * BIG))
        failed = wait_finished(q, asyncjob_perform(fail))
    finally:
        q.stop(5)
    for jobid in (done.id, failed.id):
        key = f'asyncjob:job:{jobid}'
        assert sum(redis_client.hstrlen(key, f) for f in redis_client.hkeys(key)) < 4 * BUDGET
    assert done.result.startswith('r' * 1000) and 'truncated' in done.result
    assert len(done.result.encode()) < BUDGET + 200 and 'budget' in done.detail
    assert failed.error.type == 'ValueError' and 'truncated' in failed.error.message
    assert len(failed.error.message.encode()) < BUDGET + 200


# -- issue 11 section 3: the URL setting and a start-up check ------------------------------

@pytest.mark.parametrize('url', ['redis://127.0.0.1:6379/abc', 'redis://127.0.0.1:6379/1x',
                                 'redis://127.0.0.1:6379/0?db=two', 'redis://h:port/0',
                                 'redis://127.0.0.1:6379/²', 'http://127.0.0.1:6379/0',
                                 '127.0.0.1:6379'])
def test_a_redis_url_redis_py_would_misread_is_refused(url):
    with pytest.raises(ValueError, match='Redis URL'):
        RedisProgressTracker(url=url)
    with pytest.raises(ValueError, match='Redis URL'):
        check_redis_url(url)


@pytest.mark.parametrize('url,db', [('redis://127.0.0.1:6379/3', 3), ('redis://127.0.0.1', 0),
                                    ('redis://127.0.0.1:6379/', 0),
                                    ('redis://127.0.0.1:6379?db=4', 4),
                                    ('rediss://user:pw@127.0.0.1:6380/5', 5)])
def test_valid_redis_urls_are_read_as_written(url, db):
    assert RedisProgressTracker(url=url).redis.connection_pool.connection_kwargs.get('db', 0) == db


def test_the_ini_setting_rejects_a_bad_database():
    from tgext.asyncjob.settings import coercion
    with pytest.raises(ValueError, match='abc'):
        coercion()['asyncjob.tracker']('redis://127.0.0.1:6379/abc')


def test_startup_check_answers_none_when_redis_answers(tracker):
    assert tracker.startup_check() is None


def test_startup_check_says_why_when_redis_is_unreachable_and_never_raises():
    from services import free_port
    port = free_port()
    problem = RedisProgressTracker(port=port).startup_check(timeout=0.5)
    assert isinstance(problem, str) and str(port) in problem
