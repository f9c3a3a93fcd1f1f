"""One table of behaviours, run against every tracker: memory, Redis (a real server), and
a 0.3-style four-method tracker seen through the store interface (``as_store``).

Each test is one row of the table. Where trackers differ by design, the difference is
the capability flag ``supports_status`` (a 0.3 tracker keeps no finished records) or
``supports_listing``, never the tracker's class.
"""
import os
import secrets
import subprocess
import sys
import threading
import time
import tracemalloc
from types import SimpleNamespace

import pytest

from tgext.asyncjob import (JobNotFound, JobState, JobStateError, NotRetryable,
                           OperationUnsupported, asyncjob_perform, asyncjob_set_progress,
                           operations, start_async_worker)
from tgext.asyncjob.queue import JobQueue
from tgext.asyncjob.trackers.base import (RESULT_BUDGET, STATES, JobStore,
                                          LegacyTrackerAdapter, ProgressTracker, as_store,
                                          startup_check)
from tgext.asyncjob.trackers.memory import MemoryProgressTracker
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from jobhelpers import Gate, wait_finished
from services import wait_for
from test_fork import in_fork

BIG = 10 * 1024 * 1024  # 10 MB: far beyond any budget


class FourMethodTracker(object):
    """The custom tracker of docs/trackers.rst (and 0.3): four methods, nothing else."""

    def __init__(self):
        self.status = {}

    def track(self, entryid):
        self.status[entryid] = (-1, None)

    def remove(self, entryid):
        self.status.pop(entryid, None)

    def set_progress(self, entryid, value, message):
        self.status[entryid] = (value, message)

    def get_progress(self, entryid):
        return self.status.get(entryid)


def make_tracker(kind, request, **options):
    if kind == 'memory':
        return MemoryProgressTracker(**options)
    if kind == 'redis':
        request.getfixturevalue('redis_client')  # the test db, flushed
        return RedisProgressTracker(url=request.getfixturevalue('redis_url'), **options)
    return FourMethodTracker()


@pytest.fixture(params=['memory', 'redis', 'four-method'])
def kind(request):
    return request.param


@pytest.fixture
def store(kind, request):
    return as_store(make_tracker(kind, request))


def new_id():
    return secrets.token_hex(16)


def progress_of(store, jobid):
    store.flush()  # buffered writes are part of what was written
    return store.get_progress(jobid)


def record_of(store, jobid):
    store.flush()  # buffered writes are part of what was written
    return store.get_record(jobid)


def test_every_tracker_is_a_job_store(store):
    assert isinstance(store, JobStore)
    assert isinstance(store.supports_status, bool) and isinstance(store.supports_listing, bool)
    assert store.startup_check() is None


def test_track_answers_queued(store):
    jobid = new_id()
    store.track(jobid, {'state': 'queued', 'enqueued_at': 1.0, 'name': 'mod.func'})
    assert progress_of(store, jobid) == (-1, None)
    assert record_of(store, jobid)['state'] == 'queued'


def test_update_says_running_where_the_tracker_keeps_states(store):
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    store.update(jobid, {'state': 'running', 'started_at': 2.0, 'attempt': 1})
    record = record_of(store, jobid)
    if store.supports_status:
        assert (record['state'], record['started_at'], record['attempt']) == ('running', 2.0, 1)
        assert progress_of(store, jobid) == (0, None)
    else:  # 0.3 trackers have no running state: queued until the first progress
        assert record['state'] == 'queued'


def test_progress_round_trips(store):
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    store.update(jobid, {'state': 'running'})
    store.set_progress(jobid, 30, {'step': 'thirty', 'n': [1, 2]})
    assert progress_of(store, jobid) == (30, {'step': 'thirty', 'n': [1, 2]})
    record = record_of(store, jobid)
    assert (record['state'], record['progress'], record['data']) == (
        'running', 30, {'step': 'thirty', 'n': [1, 2]})


@pytest.mark.parametrize('value,error', [(-1, ValueError), (-100, ValueError),
                                         (True, TypeError), (1.5, TypeError),
                                         ('3', TypeError)])
def test_progress_values_are_ints_not_negative(store, value, error):
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    with pytest.raises(error):
        store.set_progress(jobid, value, None)
    assert progress_of(store, jobid) == (-1, None)


def test_finish_is_final(store):
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    store.update(jobid, {'state': 'running'})
    store.finish(jobid, {'state': 'succeeded', 'result': {'rows': 3}, 'finished_at': 3.0})
    assert progress_of(store, jobid) is None
    if store.supports_status:
        record = record_of(store, jobid)
        assert (record['state'], record['result']) == ('succeeded', {'rows': 3})
    else:
        assert record_of(store, jobid)['state'] == 'unknown'


def test_a_finished_record_is_never_brought_back_to_life(store):
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    store.update(jobid, {'state': 'running'})
    store.finish(jobid, {'state': 'failed', 'error': {'type': 'E', 'message': 'm',
                                                      'traceback': ''}})
    # A late start, a late progress (a job thread that outlived its record) and a second
    # end: none of them changes a finished job.
    store.update(jobid, {'state': 'running', 'started_at': 9.0})
    store.set_progress(jobid, 50, 'late')
    store.finish(jobid, {'state': 'succeeded', 'result': 'second end'})
    assert progress_of(store, jobid) is None
    record = record_of(store, jobid)
    if store.supports_status:
        assert record['state'] == 'failed' and 'started_at' not in record
        assert record.get('result') is None and record.get('progress') is None
    else:
        assert record['state'] == 'unknown'


def test_a_retry_goes_back_to_queued(store):
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    store.update(jobid, {'state': 'running', 'attempt': 1})
    store.update(jobid, {'state': 'queued', 'attempt': 1, 'detail': 'retrying'})
    assert progress_of(store, jobid) == (-1, None)


def test_a_unique_key_is_held_while_its_job_is_queued_or_running(store):
    if not store.supports_status:  # no states to tell a live holder: no keys
        assert not hasattr(store, 'track_unique')
        return
    key, first, second = f'k-{new_id()}', new_id(), new_id()
    assert store.track_unique(first, {'state': 'queued'}, key, None) is None
    assert store.track_unique(second, {'state': 'queued'}, key, None) == first
    assert record_of(store, second) is None  # refused: nothing written
    store.update(first, {'state': 'running'})
    assert store.track_unique(second, {'state': 'queued'}, key, None) == first
    store.finish(first, {'state': 'failed', 'finished_at': 2.0})
    store.flush()
    # A finished holder lets the key go, released or not.
    assert store.track_unique(second, {'state': 'queued'}, key, None) is None
    assert record_of(store, second)['state'] == 'queued'
    store.release_unique(first, key)  # a late release by the old holder changes nothing
    assert store.track_unique(new_id(), {'state': 'queued'}, key, None) == second
    store.release_unique(second, key)
    store.flush()
    assert store.track_unique(new_id(), {'state': 'queued'}, key, None) is None


def test_a_unique_key_expires_after_unique_for(store):
    if not store.supports_status:
        return
    key, first = f'k-{new_id()}', new_id()
    assert store.track_unique(first, {'state': 'queued'}, key, 0.05) is None
    wait_for(lambda: store.track_unique(new_id(), {'state': 'queued'}, key, 60) is None,
             message='the key never expired')
    assert record_of(store, first)['state'] == 'queued'  # the job itself lives on


def test_get_record_of_an_unknown_id(store):
    record = store.get_record(new_id())
    if store.supports_status:
        assert record is None
    else:
        assert record['state'] == 'unknown'


def test_remove_forgets_live_and_finished_jobs(store):
    live, done = new_id(), new_id()
    for jobid in (live, done):
        store.track(jobid, {'state': 'queued'})
    store.finish(done, {'state': 'succeeded'})
    store.flush()
    for jobid in (live, done):
        store.remove(jobid)
        assert progress_of(store, jobid) is None
        record = store.get_record(jobid)
        assert record is None or record['state'] == 'unknown'


def test_recent_lists_newest_first_where_supported(store):
    if not store.supports_listing:
        with pytest.raises(NotImplementedError):
            store.recent()
        return
    ids = [new_id() for _ in range(3)]
    for n, jobid in enumerate(ids):
        store.track(jobid, {'state': 'queued', 'enqueued_at': time.time() + n})
    store.finish(ids[0], {'state': 'succeeded'})
    store.flush()
    listed = store.recent(10)
    assert [i for i, _ in listed] == ids[::-1]
    assert listed[-1][1]['state'] == 'succeeded'
    assert [i for i, _ in store.recent(2)] == ids[:0:-1]


def test_results_and_error_texts_are_kept_within_the_byte_budget(store):
    if not store.supports_status:
        return  # a 0.3 tracker keeps neither results nor errors
    jobid, failed = new_id(), new_id()
    for i in (jobid, failed):
        store.track(i, {'state': 'queued'})
    store.finish(jobid, {'state': 'succeeded', 'result': 'r' * BIG})
    store.finish(failed, {'state': 'failed', 'error': {
        'type': 'ValueError', 'message': 'm' * BIG, 'traceback': 't' * BIG}})
    result = record_of(store, jobid)
    assert result['state'] == 'succeeded'
    assert RESULT_BUDGET <= len(result['result'].encode()) < RESULT_BUDGET + 200
    assert 'truncated' in result['result'] and 'budget' in result['detail']
    error = record_of(store, failed)['error']
    for text in (error['message'], error['traceback']):
        assert RESULT_BUDGET <= len(text.encode()) < RESULT_BUDGET + 200
    assert 'error message' in record_of(store, failed)['detail']


def test_small_results_are_kept_as_they_are(store):
    if not store.supports_status:
        return
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    store.finish(jobid, {'state': 'succeeded', 'result': ['é' * 1000, 42]})
    record = record_of(store, jobid)
    assert record['result'] == ['é' * 1000, 42] and not record.get('detail')


def test_finished_records_expire_after_the_retention(kind, request):
    if kind == 'four-method':
        return  # keeps no finished records at all
    # Redis expiry has a resolution of one second.
    store = as_store(make_tracker(kind, request, retention=1))
    jobid = new_id()
    store.track(jobid, {'state': 'queued'})
    store.finish(jobid, {'state': 'succeeded'})
    store.flush()
    assert store.get_record(jobid)['state'] == 'succeeded'
    wait_for(lambda: store.get_record(jobid) is None, timeout=10,
             message='the finished record outlived its retention')


def test_a_job_through_the_queue(kind, request):
    """The same behaviours as seen through a real queue and worker thread."""
    q = start_async_worker(SimpleNamespace(), make_tracker(kind, request))
    gate = Gate()

    def job():
        asyncjob_set_progress(40, 'forty')
        gate.job()
        return 'done'

    try:
        jobid = asyncjob_perform(job)
        gate.wait_entered()
        assert q.get_progress(jobid) == (40, 'forty')
        gate.release()
        if q.store.supports_status:
            status = wait_finished(q, jobid)
            assert (status.state.value, status.result) == ('succeeded', 'done')
        else:
            wait_for(lambda: q.get_progress(jobid) is None, message='job never ended')
        assert q.get_progress(jobid) is None
    finally:
        q.stop(5)


# -- the interface is checked when the queue is built -------------------------------------

class Partial(ProgressTracker):
    """Promises records (supports_status, the default) but forgets most methods."""

    def __init__(self):
        self.status = {}

    def track(self, entryid, record=None):
        self.status[entryid] = record

    def remove(self, entryid):
        self.status.pop(entryid, None)

    def set_progress(self, entryid, value, message):
        pass


def test_a_tracker_subclass_that_forgets_methods_fails_when_the_queue_is_built():
    with pytest.raises(TypeError) as info:
        JobQueue(Partial())
    message = str(info.value)
    assert 'Partial' in message and 'update, finish, get_record' in message
    assert 'supports_status = False' in message  # and how to be a 0.3 tracker instead


def test_a_listing_tracker_must_implement_recent():
    class Complete(Partial):
        supports_listing = True

        def update(self, entryid, fields):
            pass

        def finish(self, entryid, fields):
            pass

        def get_record(self, entryid):
            return None

    with pytest.raises(TypeError, match='recent'):
        as_store(Complete())
    Complete.supports_listing = False
    assert as_store(Complete()).supports_status


def test_a_subclass_without_supports_status_is_adapted_as_a_03_tracker():
    class Old(Partial):
        supports_status = False

        def get_progress(self, entryid):
            return (-1, None) if entryid in self.status else None

    store = as_store(Old())
    assert isinstance(store, LegacyTrackerAdapter) and not store.supports_status


def test_an_object_without_the_four_methods_is_refused():
    class Three(FourMethodTracker):
        get_progress = None

    with pytest.raises(TypeError, match='get_progress'):
        as_store(Three())


# -- the memory tracker: one lock, bytes, fork --------------------------------------------

HAMMER = """
import gc, secrets, sys, threading, time
from tgext.asyncjob.trackers.memory import MemoryProgressTracker

tracker = MemoryProgressTracker()
for _ in range(3000):
    tracker.track(secrets.token_hex(16), {'state': 'queued'})
reader, errors, calls = threading.current_thread(), [], [0]

def yield_gil(phase, info):
    # In the reader only, now and then: long enough for a writer to take the GIL.
    if threading.current_thread() is reader:
        calls[0] += 1
        if calls[0] % 20 == 0:
            time.sleep(0.0001)

def writer():
    try:
        for _ in range(3000):
            tracker.track(secrets.token_hex(16), {'state': 'queued', 'enqueued_at': 1.0})
    except Exception as exc:
        errors.append(exc)

threads = [threading.Thread(target=writer) for _ in range(2)]
gc.set_threshold(1)
gc.callbacks.append(yield_gil)
for t in threads:
    t.start()
try:
    rounds = 0
    while rounds < 3 or any(t.is_alive() for t in threads):
        tracker.recent(5)
        rounds += 1
except Exception as exc:
    errors.append(exc)
gc.callbacks.remove(yield_gil)
for t in threads:
    t.join()
print(repr(errors))
sys.exit(1 if errors else 0)
"""


def test_memory_tracker_track_and_recent_from_threads_never_race():
    """Issue 10 case 16: track() wrote without the lock recent() iterates under.

    recent() copies the records while track() adds some from other threads. To make
    the thread switch happen *inside* that copy (where the race hid, once in a million
    calls), there are more records than CPython keeps spare pairs for, so copying
    allocates, every allocation runs the garbage collector (threshold 1), and a
    collector callback yields the GIL to the writers. In a fresh interpreter, whose
    collector state the test runner does not share.
    """
    done = subprocess.run([sys.executable, '-c', HAMMER], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_memory_tracker_is_bounded_in_bytes_not_only_by_count():
    """Issue 10 case 10: 500 results of 1 MB held 479 MB for an hour."""
    tracker = MemoryProgressTracker()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(500):
            jobid = new_id()
            tracker.track(jobid, {'state': 'queued'})
            tracker.finish(jobid, {'state': 'succeeded', 'result': 'r' * 1024 * 1024})
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Each result is kept within its 64 KiB budget: about 33 MB for the 500 of them.
    assert held < 40 * 1024 * 1024, f'{held} bytes held'
    assert tracker.get_record(jobid)['state'] == 'succeeded'


def test_memory_tracker_drops_the_oldest_finished_records_past_max_bytes():
    tracker = MemoryProgressTracker(max_bytes=10 * 1024 * 1024, max_result_bytes=2 * 1024 * 1024)
    ids = [new_id() for _ in range(30)]
    for jobid in ids:
        tracker.track(jobid, {'state': 'queued'})
        tracker.finish(jobid, {'state': 'succeeded', 'result': 'x' * 1024 * 1024})
    kept = [jobid for jobid in ids if tracker.get_record(jobid) is not None]
    assert 5 <= len(kept) <= 10 and kept == ids[-len(kept):]
    assert tracker.get_record(ids[-1])['result'] == 'x' * 1024 * 1024  # under its budget


def test_memory_tracker_keeps_the_newest_record_whatever_its_size():
    tracker = MemoryProgressTracker(max_bytes=1024)
    jobid = new_id()
    tracker.track(jobid, {'state': 'queued'})
    tracker.finish(jobid, {'state': 'succeeded', 'result': 'x' * 10000})
    assert tracker.get_record(jobid)['state'] == 'succeeded'  # a waiter sees the end


def test_memory_tracker_results_whose_repr_raises_are_kept_within_budget():
    class Hostile:
        def __init__(self):
            self.payload = 'x' * (2 * RESULT_BUDGET)

        def __repr__(self):
            raise RuntimeError('no repr')

    tracker = MemoryProgressTracker()
    jobid = new_id()
    tracker.track(jobid, {'state': 'queued'})
    tracker.finish(jobid, {'state': 'succeeded', 'result': Hostile()})
    record = tracker.get_record(jobid)
    assert 'Hostile' in record['result'] and 'repr()' in record['detail']


def test_memory_tracker_sizes_results_and_arguments_whose_truth_value_raises():
    # Sizing takes a shortcut for empty containers: it must never ask an arbitrary
    # object (a numpy array...) for its truth value, which may raise.
    class Ambiguous:
        def __bool__(self):
            raise ValueError('the truth value is ambiguous')

    tracker = MemoryProgressTracker()
    jobid = new_id()
    tracker.track(jobid, {'state': 'queued', 'args': (Ambiguous(),), 'kwargs': {}})
    tracker.finish(jobid, {'state': 'succeeded', 'result': Ambiguous()})
    record = tracker.get_record(jobid)
    assert record['state'] == 'succeeded' and isinstance(record['result'], Ambiguous)


# Forking a process whose threads run is what gunicorn --preload does (Python 3.12+ warns).
@pytest.mark.filterwarnings('ignore:This process .* is multi-threaded:DeprecationWarning')
def test_memory_tracker_in_a_forked_child_shows_the_parents_live_jobs_as_unknown():
    """Issue 10 case 4: the child's copy of the records said "queued" forever for jobs
    that only the parent runs."""
    tracker = MemoryProgressTracker()
    queued, running, done = new_id(), new_id(), new_id()
    for jobid in (queued, running, done):
        tracker.track(jobid, {'state': 'queued', 'enqueued_at': time.time()})
    tracker.update(running, {'state': 'running'})
    tracker.finish(done, {'state': 'succeeded', 'result': 7})
    def child():
        report = {name: tracker.get_record(jobid) for name, jobid in
                  [('queued', queued), ('running', running), ('done', done)]}
        report['progress'] = [tracker.get_progress(queued), tracker.get_progress(running)]
        report['listed'] = sorted(r['state'] for _, r in tracker.recent())
        tracker.set_progress(running, 5, None)  # the child cannot revive it either
        report['after'] = tracker.get_record(running)['state']
        return report

    _, report = in_fork(child)
    assert report['queued']['state'] == report['running']['state'] == 'unknown'
    assert f'process {os.getpid()}' in report['queued']['detail']
    assert report['done'] == {'state': 'succeeded', 'enqueued_at': report['done']['enqueued_at'],
                              'result': 7}
    assert report['progress'] == [None, None]
    assert report['listed'] == ['succeeded', 'unknown', 'unknown']
    assert report['after'] == 'unknown'
    # The parent's own records are untouched.
    assert tracker.get_record(queued)['state'] == 'queued'
    assert tracker.get_progress(running) == (0, None)


def test_startup_check_of_any_store_never_raises(store):
    class Raising(FourMethodTracker):
        def startup_check(self, timeout):
            raise RuntimeError('boom')

    assert startup_check(store) is None
    assert startup_check(FourMethodTracker()) is None  # cannot be asked: nothing to say
    assert 'boom' in startup_check(Raising())


# -- listing, counting and removing records (issue 14) ------------------------------------

def _fill(store, specs, now=None):
    """Track one record per (state, name), enqueued one second apart, oldest first;
    finished ones end ``ended`` seconds ago. Returns their ids, oldest first."""
    now = time.time() if now is None else now
    ids = []
    for n, (state, name, *ended) in enumerate(specs):
        jobid = new_id()
        store.track(jobid, {'state': 'queued', 'name': name,
                            'enqueued_at': now - 3000 + n})
        if state == 'running':
            store.update(jobid, {'state': 'running', 'started_at': now})
        elif state != 'queued':
            store.update(jobid, {'state': 'running', 'started_at': now})
            store.finish(jobid, {'state': state, 'finished_at': now - (ended[0] if ended else 0)})
        ids.append(jobid)
    store.flush()
    return ids


SPECS = [('succeeded', 'a.f'), ('failed', 'b.g'), ('queued', 'a.f'), ('running', 'b.g'),
         ('cancelled', 'a.f'), ('succeeded', 'b.g'), ('failed', 'a.f')]


def test_query_pages_newest_first_filtered_by_state_and_name(store):
    if not store.supports_listing:
        with pytest.raises(OperationUnsupported):
            store.query()
        with pytest.raises(NotImplementedError):  # OperationUnsupported is one
            store.counts()
        return
    ids = _fill(store, SPECS)
    newest = ids[::-1]
    assert [i for i, _ in store.query()] == newest
    assert [i for i, _ in store.query(offset=2, limit=3)] == newest[2:5]
    assert store.query(offset=7) == []
    assert [i for i, _ in store.query(state='failed')] == [ids[6], ids[1]]
    assert [i for i, _ in store.query(name='a.f')] == [ids[6], ids[4], ids[2], ids[0]]
    assert [i for i, _ in store.query(name='a.f', offset=1, limit=2)] == [ids[4], ids[2]]
    assert [i for i, _ in store.query(state='succeeded', name='b.g')] == [ids[5]]
    assert store.query(state='running', name='a.f') == []
    assert {r['state'] for _, r in store.query(state='running')} == {'running'}
    assert store.counts() == {'queued': 1, 'running': 1, 'succeeded': 2, 'failed': 2,
                              'cancelled': 1}


@pytest.mark.parametrize('bad', [dict(state='done'), dict(offset=-1), dict(limit=0),
                                 dict(limit=True), dict(name=3)])
def test_query_refuses_bad_arguments(store, bad):
    if not store.supports_listing:
        return
    with pytest.raises((ValueError, TypeError)):
        store.query(**bad)


def test_query_pages_beyond_the_latest_500(store):
    if not store.supports_listing:
        return
    ids = _fill(store, [('succeeded' if n % 3 else 'failed', f'm.f{n % 2}')
                        for n in range(620)])
    newest = ids[::-1]
    assert [i for i, _ in store.query(offset=590, limit=50)] == newest[590:]
    failed = [i for i in newest if ids.index(i) % 3 == 0]
    assert [i for i, _ in store.query(state='failed', offset=200, limit=50)] == failed[200:]
    f1 = [i for i in newest if ids.index(i) % 2 == 1]
    assert [i for i, _ in store.query(name='m.f1', offset=290, limit=50)] == f1[290:]
    assert store.counts()['failed'] == len(failed)


def test_delete_finished_removes_only_finished_records(store):
    if not store.supports_status:
        with pytest.raises(OperationUnsupported):
            store.delete_finished(new_id())
        return
    done, live = _fill(store, [('failed', 'a.f'), ('running', 'a.f')])
    assert store.delete_finished(live) is False
    assert record_of(store, live)['state'] == 'running'
    assert store.delete_finished(new_id()) is False
    assert store.delete_finished(done) is True
    assert store.get_record(done) is None
    if store.supports_listing:
        assert [i for i, _ in store.query()] == [live]
        assert store.counts()['failed'] == 0


def test_purge_finished_removes_records_finished_before_the_cutoff(store):
    if not store.supports_listing:
        with pytest.raises(OperationUnsupported):
            store.purge_finished(60)
        return
    # Within the default retention (an hour): ended 2000 and 1500 s ago, and 10 s ago.
    old, old2, recent, live = _fill(store, [('succeeded', 'a.f', 2000), ('failed', 'a.f', 1500),
                                            ('cancelled', 'a.f', 10), ('queued', 'a.f')])
    assert store.purge_finished(1000) == 2
    assert store.get_record(old) is None and store.get_record(old2) is None
    assert [i for i, _ in store.query()] == [live, recent]
    assert store.counts() == dict(dict.fromkeys(STATES, 0), queued=1, cancelled=1)
    assert store.purge_finished(0) == 1
    assert [i for i, _ in store.query()] == [live]


def test_annotate_writes_links_on_finished_records_only_links(store):
    if not store.supports_status:
        with pytest.raises(OperationUnsupported):
            store.annotate(new_id(), {'retried_as': new_id()})
        return
    done, other = _fill(store, [('failed', 'a.f'), ('queued', 'a.f')])
    store.annotate(done, {'retried_as': other})
    store.annotate(other, {'retry_of': done})
    store.annotate(new_id(), {'retry_of': done})  # unknown: nothing happens
    assert (record_of(store, done)['retried_as'], record_of(store, done)['state']) == (
        other, 'failed')
    assert record_of(store, other)['retry_of'] == done
    with pytest.raises(ValueError, match='state'):
        store.annotate(done, {'state': 'queued'})
    assert record_of(store, done)['state'] == 'failed'


# The same operations through a queue: every store, the sqlalchemy backend's included.

def twice(value):
    return value * 2


def refuse(value, *, why='no'):
    raise ValueError(f'{value}: {why}')


@pytest.fixture(params=['memory', 'redis', 'four-method', 'sqlite', 'postgresql'])
def ops_queue(request):
    if request.param in ('sqlite', 'postgresql'):
        url = request.getfixturevalue(f'{request.param}_db_url'.replace('postgresql',
                                                                        'postgres'))
        q = JobQueue(backend='sqlalchemy', backend_options={'url': url}, workers=2)
        q.backend.start()
        yield q
        q.stop(10)
        q.backend.engines.dispose()
        return
    q = request.getfixturevalue('started')(make_tracker(request.param, request), workers=2)
    yield q


def test_operations_through_the_queue(ops_queue):
    q = ops_queue
    good = q.perform(twice, (21,))
    bad = q.perform(refuse, ('x',), {'why': 'because'})
    for jobid in (good, bad):
        wait_for(lambda: q.get_status(jobid).finished or not q.store.supports_status,
                 message='job never ended')
    if not q.store.supports_status:
        for call in (lambda: operations.list_jobs(q), lambda: operations.count_jobs(q),
                     lambda: operations.retry_job(q, bad), lambda: operations.delete_job(q, bad),
                     lambda: operations.purge_jobs(q, 0)):
            with pytest.raises(OperationUnsupported, match='FourMethodTracker'):
                call()
        return
    listed = operations.list_jobs(q)
    assert [s.id for s in listed] == [bad, good]
    assert [s.id for s in operations.list_jobs(q, JobState.FAILED)] == [bad]
    name = f'{__name__}.twice'
    assert [s.id for s in operations.list_jobs(q, name=name)] == [good]
    assert operations.count_jobs(q) == dict(dict.fromkeys(STATES, 0), succeeded=1, failed=1)
    failed = q.get_status(bad)
    assert (failed.func, list(failed.args), failed.kwargs) == (
        f'{__name__}:refuse', ['x'], {'why': 'because'})

    again = operations.retry_job(q, bad)
    status = wait_finished(q, again)
    assert (status.state, status.error.message, status.retry_of) == (
        JobState.FAILED, 'x: because', bad)
    assert q.get_status(bad).retried_as == again
    with pytest.raises(JobStateError, match='retried already'):
        operations.retry_job(q, bad)
    with pytest.raises(JobStateError, match='succeeded'):
        operations.retry_job(q, good)
    with pytest.raises(JobNotFound):
        operations.retry_job(q, new_id())

    later = q.perform(twice, (1,), delay=3600)
    with pytest.raises(JobStateError, match='queued'):
        operations.delete_job(q, later)
    operations.delete_job(q, good)
    assert q.get_status(good).state is JobState.NOT_FOUND
    with pytest.raises(JobNotFound):
        operations.delete_job(q, good)

    assert operations.purge_jobs(q, 3600) == 0
    assert operations.purge_jobs(q, 0) == 2
    assert [s.id for s in operations.list_jobs(q)] == [later]
    with pytest.raises(ValueError):
        operations.purge_jobs(q, -1)


def test_a_retry_needs_an_importable_callable(kind, request, started):
    if kind == 'four-method':
        return
    q = started(make_tracker(kind, request))
    jobid = q.perform(lambda: 1 / 0)
    wait_finished(q, jobid)
    with pytest.raises(NotRetryable, match='import path'):
        operations.retry_job(q, jobid)


def test_the_redis_tracker_keeps_only_json_arguments(request, started):
    q = started(make_tracker('redis', request))
    jobid = q.perform(refuse, (object(),))
    wait_finished(q, jobid)
    assert q.get_status(jobid).args is None
    with pytest.raises(NotRetryable, match='no arguments'):
        operations.retry_job(q, jobid)


def test_listing_through_the_queue_pages_beyond_the_latest_500(ops_queue):
    q = ops_queue
    if not q.store.supports_listing:
        return
    ids = [q.perform(twice, (n,), delay=3600) for n in range(530)]  # all stay queued
    page = operations.list_jobs(q, 'queued', offset=500, limit=50)
    # Newest first; ids queued within one clock tick may tie on enqueue time.
    assert {s.id for s in page} == set(ids[:30])
    assert operations.count_jobs(q)['queued'] == 530
