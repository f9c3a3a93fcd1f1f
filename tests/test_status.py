"""Job states on both trackers, retention and bounds, immediate mode, hooks, cancel."""
from types import SimpleNamespace

import pytest

from tgext.asyncjob import (JobState, asyncjob_cancel, asyncjob_cancelled, asyncjob_get_progress,
                            asyncjob_get_status, asyncjob_perform, asyncjob_set_progress,
                            asyncjob_wait, start_async_worker)
from tgext.asyncjob.trackers.memory import MemoryProgressTracker
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from jobhelpers import Gate, wait_finished
from services import wait_for


@pytest.fixture(params=['memory', 'redis'])
def tracker(request):
    if request.param == 'memory':
        return MemoryProgressTracker()
    request.getfixturevalue('redis_client')
    return RedisProgressTracker(url=request.getfixturevalue('redis_url'))


@pytest.fixture
def queue(tracker):
    q = start_async_worker(SimpleNamespace(), progress_tracker=tracker)
    yield q
    q.stop(10)


def test_every_state_transition(queue):
    blocker, gate = Gate(), Gate()
    first = asyncjob_perform(blocker.job)
    blocker.wait_entered()

    def work():
        asyncjob_set_progress(30, {'step': 1})
        gate.job()
        return {'done': True}

    jobid = asyncjob_perform(work)
    queued = asyncjob_get_status(jobid)
    assert queued.state is JobState.QUEUED and queued.enqueued_at and queued.started_at is None
    assert queued.name.endswith('work')
    blocker.release()
    wait_for(lambda: asyncjob_get_status(jobid).progress == 30)
    running = asyncjob_get_status(jobid)
    assert running.state is JobState.RUNNING and running.data == {'step': 1}
    assert running.started_at >= running.enqueued_at and running.attempt == 1
    gate.release()
    done = wait_finished(queue, jobid)
    assert done.state is JobState.SUCCEEDED and done.result == {'done': True}
    assert done.finished_at >= done.started_at and done.error is None
    assert wait_finished(queue, first).state is JobState.SUCCEEDED


def test_failed_state_keeps_type_message_and_traceback(queue):
    def broken():
        raise LookupError('no such thing')

    status = wait_finished(queue, asyncjob_perform(broken))
    assert status.state is JobState.FAILED
    assert (status.error.type, status.error.message) == ('LookupError', 'no such thing')
    assert 'in broken' in status.error.traceback
    assert 'traceback' not in status.to_dict()['error']
    assert 'in broken' in status.to_dict(include_traceback=True)['error']['traceback']


def test_unknown_ids_are_not_found(queue):
    for bad in ['0123456789abcdef0123456789abcdef', 'nope', '']:
        assert asyncjob_get_status(bad).state is JobState.NOT_FOUND
        assert asyncjob_get_progress(bad) is None


def test_cancelling_a_queued_job_prevents_it(queue):
    blocker = Gate()
    ran = []
    asyncjob_perform(blocker.job)
    blocker.wait_entered()
    jobid = asyncjob_perform(ran.append, 1)
    assert asyncjob_cancel(jobid) is True
    assert asyncjob_get_status(jobid).state is JobState.CANCELLED
    assert asyncjob_get_progress(jobid) is None
    blocker.release()
    wait_finished(queue, asyncjob_perform(ran.append, 2))
    assert ran == [2]
    assert asyncjob_cancel(jobid) is False


def test_cancelling_a_running_job_is_cooperative(queue):
    gate = Gate()

    def polite():
        gate.job()
        return 'stopped early' if asyncjob_cancelled() else 'ran to the end'

    jobid = asyncjob_perform(polite)
    gate.wait_entered()
    assert asyncjob_cancel(jobid) is True
    gate.release()
    assert wait_finished(queue, jobid).result == 'stopped early'


def test_cancelled_outside_a_job_is_an_error():
    from tgext.asyncjob import NotInJobError
    with pytest.raises(NotInJobError):
        asyncjob_cancelled()


def test_wait_times_out_with_the_current_status(queue):
    gate = Gate()
    jobid = asyncjob_perform(gate.job)
    gate.wait_entered()
    assert asyncjob_wait(jobid, timeout=0.05).state is JobState.RUNNING
    gate.release()
    assert asyncjob_wait(jobid, timeout=30).state is JobState.SUCCEEDED


def test_results_a_tracker_cannot_store_are_kept_as_repr(queue):
    status = wait_finished(queue, asyncjob_perform(lambda: {1, 2}))
    assert status.state is JobState.SUCCEEDED
    assert status.result in ({1, 2}, '{1, 2}')


def test_recent_lists_newest_first(queue):
    ids = [asyncjob_perform(int, i) for i in range(5)]
    wait_finished(queue, ids[-1])
    listed = [s.id for s in queue.recent(10)]
    assert listed[:5] == ids[::-1]


def test_memory_retention_expires_finished_jobs():
    tracker = MemoryProgressTracker(retention=0.2)
    q = start_async_worker(SimpleNamespace(), progress_tracker=tracker)
    try:
        jobid = q.perform(int)
        assert wait_finished(q, jobid).state is JobState.SUCCEEDED
        wait_for(lambda: q.get_status(jobid).state is JobState.NOT_FOUND, timeout=5)
    finally:
        q.stop(5)


def test_memory_tracker_is_bounded_by_count():
    tracker = MemoryProgressTracker(max_finished=50)
    q = start_async_worker(SimpleNamespace(), progress_tracker=tracker)
    try:
        ids = [q.perform(int) for _ in range(500)]
        wait_finished(q, ids[-1])
        assert len(tracker._finished) == 50
        assert q.get_status(ids[0]).state is JobState.NOT_FOUND
        assert q.get_status(ids[-1]).state is JobState.SUCCEEDED
    finally:
        q.stop(5)


def test_redis_retention_sets_the_finished_keys_lifetime(redis_url, redis_client):
    tracker = RedisProgressTracker(url=redis_url, timeout=600, retention=1)
    q = start_async_worker(SimpleNamespace(), progress_tracker=tracker)
    try:
        jobid = q.perform(int)
        wait_finished(q, jobid)
        assert 0 < redis_client.ttl(f'asyncjob:job:{jobid}') <= 1
        wait_for(lambda: q.get_status(jobid).state is JobState.NOT_FOUND, timeout=5)
        wait_finished(q, q.perform(int))  # each finish prunes the index past retention
        assert jobid.encode() not in redis_client.zrange('asyncjob:recent', 0, -1)
    finally:
        q.stop(5)


class Recorder:
    def __init__(self):
        self.events = []

    def on_enqueued(self, job):
        self.events.append(('enqueued', job.id))

    def on_started(self, job):
        self.events.append(('started', job.id))

    def on_progress(self, job, value, data):
        self.events.append(('progress', value))

    def on_succeeded(self, job, result):
        self.events.append(('succeeded', result))

    def on_failed(self, job, error):
        self.events.append(('failed', error.type))

    def on_cancelled(self, job):
        self.events.append(('cancelled', job.id))


class Broken:
    def on_started(self, job):
        raise RuntimeError('a broken hook')

    def on_succeeded(self, job, result):
        raise RuntimeError('a broken hook')


def test_hooks_see_every_event_and_a_failing_hook_breaks_nothing(caplog):
    recorder = Recorder()
    q = start_async_worker(SimpleNamespace(), hooks=[Broken(), recorder])
    try:
        def job():
            asyncjob_set_progress(5)
            return 'ok'

        good = q.perform(job)
        wait_finished(q, good)
        bad = q.perform(int, ('x',))
        wait_finished(q, bad)
        delayed = q.perform(int, delay=3600)
        q.cancel(delayed)
    finally:
        q.stop(5)
    assert recorder.events == [('enqueued', good), ('started', good), ('progress', 5),
                               ('succeeded', 'ok'), ('enqueued', bad), ('started', bad),
                               ('failed', 'ValueError'), ('enqueued', delayed),
                               ('cancelled', delayed)]
    assert q.get_status(good).state is JobState.SUCCEEDED
    assert sum('hook' in r.getMessage() and 'failed' in r.getMessage()
               for r in caplog.records) >= 2


def test_a_hook_needs_at_least_one_hook_method():
    with pytest.raises(TypeError, match='on_enqueued'):
        start_async_worker(SimpleNamespace(), hooks=[object()])


def test_immediate_mode_runs_in_the_call_with_the_same_semantics(make_app, db_url):
    from sampleapp import model
    from sampleapp.controllers.root import db_session
    app = make_app(db_url, extra_config={'asyncjob.immediate': 'true'})
    q = app.app_globals.asyncjob_queue
    seen = {}

    def job():
        import threading
        seen['thread'] = threading.current_thread().name
        asyncjob_set_progress(50)
        db_session().add(model.Row(name='immediate'))
        return 'done'

    jobid = q.perform(job)
    assert q.get_status(jobid).state is JobState.SUCCEEDED  # no waiting: it already ran
    assert q.get_progress(jobid) is None and seen['thread'] == 'asyncjob-immediate'
    assert [r['name'] for r in app.get('/rows').json['rows']] == ['immediate']

    def failing():
        db_session().add(model.Row(name='rolled back'))
        db_session().flush()
        raise ValueError('no')

    assert q.get_status(q.perform(failing)).state is JobState.FAILED
    assert [r['name'] for r in app.get('/rows').json['rows']] == ['immediate']
