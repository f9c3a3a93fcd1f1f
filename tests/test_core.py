"""The 0.3 API outside any web request: perform, progress, running uid, failures."""
import logging
import re
from types import SimpleNamespace

import pytest

import tgext.asyncjob as asyncjob
from tgext.asyncjob import (NotInJobError, asyncjob_get_progress, asyncjob_perform,
                            asyncjob_running_uid, asyncjob_set_progress, start_async_worker)
from tgext.asyncjob.trackers.memory import MemoryProgressTracker

from jobhelpers import Gate, wait_finished
from services import wait_for


def test_perform_returns_a_str_id_at_once_and_runs_the_callable(queue):
    gate = Gate()
    jobid = asyncjob_perform(gate.job)
    assert isinstance(jobid, str)
    gate.wait_entered()
    gate.release()
    assert wait_finished(queue, jobid).result == 'released'


def test_ids_are_128_random_bits_and_unique(queue):
    ids = {asyncjob_perform(int) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r'[0-9a-f]{32}', i) for i in ids)


def test_arguments_reach_the_callable(queue):
    seen = []
    jobid = asyncjob_perform(lambda a, b, retries=None: seen.append((a, b, retries)), 1, 'x',
                             retries=3)
    wait_finished(queue, jobid)
    assert seen == [(1, 'x', 3)]


@pytest.mark.parametrize('bad', [None, 42, 'print', object()])
def test_non_callable_raises_type_error_at_the_call_site(queue, bad):
    with pytest.raises(TypeError, match='callable'):
        asyncjob_perform(bad)


def test_progress_queued_running_finished(queue):
    blocker, gate = Gate(), Gate()

    def job():
        asyncjob_set_progress(40, {'step': 'two'})
        gate.job()

    first = asyncjob_perform(blocker.job)
    blocker.wait_entered()
    second = asyncjob_perform(job)
    assert asyncjob_get_progress(second) == (-1, None)
    blocker.release()
    wait_for(lambda: asyncjob_get_progress(second) == (40, {'step': 'two'}))
    gate.release()
    wait_finished(queue, second)
    assert asyncjob_get_progress(second) is None
    assert asyncjob_get_progress(first) is None


def test_progress_of_a_failed_job_is_none(queue):
    def boom():
        asyncjob_set_progress(10)
        raise ValueError('boom')

    jobid = asyncjob_perform(boom)
    assert wait_finished(queue, jobid).state.value == 'failed'
    assert asyncjob_get_progress(jobid) is None


def test_running_uid_inside_and_outside_a_job(queue):
    seen = []
    jobid = asyncjob_perform(lambda: seen.append(asyncjob_running_uid()))
    wait_finished(queue, jobid)
    assert seen == [jobid]
    assert asyncjob_running_uid() is None


def test_set_progress_outside_a_job_names_the_problem(queue):
    with pytest.raises(NotInJobError, match='outside a job'):
        asyncjob_set_progress(10)


@pytest.mark.parametrize('value', [1.5, '10', None, True])
def test_set_progress_rejects_non_int_values_in_the_job(queue, value):
    errors = []

    def job():
        try:
            asyncjob_set_progress(value)
        except TypeError as exc:
            errors.append(str(exc))

    wait_finished(queue, asyncjob_perform(job))
    assert errors and 'int' in errors[0]


@pytest.mark.parametrize('exc_type', [ValueError, SystemExit, KeyboardInterrupt, GeneratorExit])
def test_worker_survives_any_exception_and_logs_the_id(queue, caplog, exc_type):
    def boom():
        raise exc_type('boom')

    with caplog.at_level(logging.ERROR, logger='tgext.asyncjob'):
        bad = asyncjob_perform(boom)
        good = asyncjob_perform(lambda: 'still alive')
        assert wait_finished(queue, good).result == 'still alive'
    assert wait_finished(queue, bad).state.value == 'failed'
    assert wait_finished(queue, bad).error.type == exc_type.__name__
    assert any(bad in r.getMessage() for r in caplog.records)


def test_jobs_run_in_fifo_order_with_one_worker(queue):
    order = []
    ids = [asyncjob_perform(order.append, i) for i in range(200)]
    wait_finished(queue, ids[-1])
    assert order == list(range(200))


def test_a_job_can_queue_another_job(queue):
    results = []

    def child(x):
        results.append(x)

    def parent():
        return asyncjob_perform(child, 7)

    child_id = wait_finished(queue, asyncjob_perform(parent)).result
    wait_finished(queue, child_id)
    assert results == [7]


def test_perform_without_a_worker_raises_a_clear_error(monkeypatch):
    from tgext.asyncjob import locate
    monkeypatch.setattr(locate, '_last_started', None)
    monkeypatch.setattr(locate, 'current_conf', lambda: None)
    with pytest.raises(asyncjob.NoWorkerError, match='start_async_worker'):
        asyncjob_perform(print)


def test_starting_twice_for_the_same_globals_is_refused():
    g = SimpleNamespace()
    q = start_async_worker(g)
    try:
        with pytest.raises(asyncjob.AlreadyStarted):
            start_async_worker(g)
    finally:
        q.stop(5)
    assert start_async_worker(g).stop(5) == []


def test_custom_tracker_with_the_four_03_methods():
    class MyProgressTracker:
        def __init__(self):
            self.calls, self.status = [], {}

        def track(self, entryid):
            self.calls.append('track')
            self.status[entryid] = (-1, None)

        def remove(self, entryid):
            self.calls.append('remove')
            self.status.pop(entryid, None)

        def set_progress(self, entryid, value, message):
            self.calls.append('set_progress')
            self.status[entryid] = (value, message)

        def get_progress(self, entryid):
            return self.status.get(entryid)

    tracker = MyProgressTracker()
    q = start_async_worker(SimpleNamespace(), progress_tracker=tracker)
    try:
        gate = Gate()

        def job():
            asyncjob_set_progress(5, 'half')
            gate.job()

        jobid = asyncjob_perform(job)
        gate.wait_entered()
        assert asyncjob_get_progress(jobid) == (5, 'half')
        assert asyncjob.asyncjob_get_status(jobid).state.value == 'running'
        gate.release()
        wait_for(lambda: asyncjob_get_progress(jobid) is None)
        status = asyncjob.asyncjob_get_status(jobid)
        assert status.state.value == 'unknown' and 'finished' in status.detail
        assert tracker.calls == ['track', 'set_progress', 'remove']
    finally:
        q.stop(5)


def test_tracker_without_the_methods_is_refused():
    with pytest.raises(TypeError, match='get_progress'):
        start_async_worker(SimpleNamespace(), progress_tracker=object())


def test_memory_tracker_is_the_default(queue):
    assert isinstance(queue.tracker, MemoryProgressTracker)


def test_start_async_worker_in_a_script_needs_no_globals(monkeypatch):
    from tgext.asyncjob import locate, tgwiring
    monkeypatch.setattr(locate, 'current_conf', lambda: None)
    monkeypatch.setattr(tgwiring, 'SCRIPT_GLOBALS', SimpleNamespace())
    q = start_async_worker()
    try:
        assert tgwiring.SCRIPT_GLOBALS.asyncjob_queue is q
        assert wait_finished(q, asyncjob_perform(int, '5')).result == 5
        with pytest.raises(asyncjob.AlreadyStarted):
            start_async_worker()
    finally:
        q.stop(5)


def test_a_non_callable_is_refused_before_anything_is_tracked(queue):
    with pytest.raises(TypeError, match='asyncjob_perform needs a callable'):
        asyncjob_perform('not callable')
    assert queue.recent(5) == []
