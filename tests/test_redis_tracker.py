"""The Redis tracker against a real Redis: JSON records, expiry, key namespace, outages."""
import json
from types import SimpleNamespace

import pytest
import redis

from tgext.asyncjob import (asyncjob_get_progress, asyncjob_get_status, asyncjob_perform,
                            asyncjob_set_progress, start_async_worker)
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from jobhelpers import Gate, wait_finished
from services import wait_for

JOB = '0123456789abcdef0123456789abcdef'


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
