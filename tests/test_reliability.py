"""Worker pool, bounded queue, graceful stop, interpreter exit, watchdog, and the two
proofs: 100,000 jobs each run exactly once, and a stop that accounts for every job."""
import collections
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from tg import expose

import tgext.asyncjob
from tgext.asyncjob import QueueFull, QueueStopped, asyncjob_perform

from jobhelpers import Gate, wait_finished
from sampleapp import model
from sampleapp.controllers.root import RootController, db_session
from services import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATES = {}


def unrun_warnings(caplog):
    """{job id: message} of the 'did not run' warnings."""
    out = {}
    for r in caplog.records:
        if r.levelno == logging.WARNING and 'did not run' in r.getMessage():
            out[r.args[0]] = r.getMessage()
    return out


# ------------------------------------------------------------------ worker pool

class PoolController(RootController):
    @expose('json')
    def hold(self, key):
        try:
            return dict(jobid=asyncjob_perform(GATES[key].job))
        except QueueFull as exc:
            import tg
            tg.response.status = 503
            return dict(error=str(exc))

    @expose('json')
    def add(self, name):
        try:
            return dict(jobid=asyncjob_perform(add_row, name))
        except QueueFull as exc:
            import tg
            tg.response.status = 503
            return dict(error=str(exc))


def add_row(name):
    db_session().add(model.Row(name=name))


def names(app):
    return sorted(r['name'] for r in app.get('/rows').json['rows'])


@pytest.mark.parametrize('route', ['argument', 'plug', 'ini'])
def test_workers_n_run_n_jobs_at_once(route, started, make_app, sqlite_db_url):
    if route == 'argument':
        q = started(workers=4)
    else:
        app = make_app(sqlite_db_url, root=PoolController,
                       plug_options={'workers': 4} if route == 'plug' else None,
                       extra_config={'asyncjob.workers': '4'} if route == 'ini' else None)
        q = app.app_globals.asyncjob_queue
    gates = [Gate() for _ in range(4)]
    ids = [q.perform(g.job) for g in gates]
    for g in gates:  # all four inside their job at the same time: four threads
        g.wait_entered()
    for g in gates:
        g.release()
    assert [wait_finished(q, i).result for i in ids] == ['released'] * 4
    assert len(q.backend.threads) == 4


def test_default_is_one_worker_in_fifo_order(started):
    q = started()
    assert q.workers == 1 and len(q.backend.threads) == 1
    gate, order = Gate(), []
    first = q.perform(gate.job)
    gate.wait_entered()
    ids = [q.perform(order.append, (i,)) for i in range(50)]
    assert order == []  # the only thread is held: nothing else started
    gate.release()
    wait_finished(q, ids[-1])
    assert order == list(range(50))
    assert wait_finished(q, first).result == 'released'


def test_a_full_queue_blocks_perform_until_there_is_room(started):
    q = started(workers=1, max_queue=2, put_timeout=30)
    gate, ran = Gate(), []
    q.perform(gate.job)
    gate.wait_entered()
    queued = [q.perform(ran.append, (i,)) for i in range(2)]  # the queue is now full
    outcome = []
    blocked = threading.Thread(target=lambda: outcome.append(q.perform(ran.append, (2,))))
    blocked.start()
    # The caller waits inside put() on the full queue (Queue.not_full's waiters).
    wait_for(lambda: len(q.backend.channel.not_full._waiters) == 1,
             message='perform() did not block on the full queue')
    assert outcome == [] and ran == []
    gate.release()
    blocked.join(30)
    assert len(outcome) == 1, 'perform() never returned once there was room'
    wait_finished(q, outcome[0])
    assert ran == [0, 1, 2]
    assert all(wait_finished(q, i).state.value == 'succeeded' for i in queued)


def test_a_queue_full_past_put_timeout_raises_queue_full_and_keeps_no_record(started):
    q = started(workers=1, max_queue=3, put_timeout=0.2)
    gate, ran = Gate(), []
    held = q.perform(gate.job)
    gate.wait_entered()
    accepted = [q.perform(ran.append, (i,)) for i in range(3)]
    with pytest.raises(QueueFull, match='full'):
        q.perform(ran.append, ('refused',))
    # The refused job left no record: only the four accepted ones are known.
    assert sorted(s.id for s in q.recent(100)) == sorted([held] + accepted)
    gate.release()
    for i in accepted:
        wait_finished(q, i)
    assert ran == [0, 1, 2]


def test_ini_keys_bound_the_queue_of_a_tg_app(make_app, sqlite_db_url):
    GATES.clear()
    app = make_app(sqlite_db_url, root=PoolController, extra_config={
        'asyncjob.workers': '2', 'asyncjob.max_queue': '2', 'asyncjob.put_timeout': '0.2'})
    q = app.app_globals.asyncjob_queue
    assert (q.workers, q.max_queue, q.put_timeout) == (2, 2, 0.2)
    GATES.update(a=Gate(), b=Gate())
    held = [app.get('/hold', params={'key': k}).json['jobid'] for k in 'ab']
    GATES['a'].wait_entered()
    GATES['b'].wait_entered()
    accepted = [app.get('/add', params={'name': n}).json['jobid'] for n in ('x', 'y')]
    refused = app.get('/add', params={'name': 'z'}, status=503).json
    assert 'full' in refused['error']
    GATES['a'].release()
    GATES['b'].release()
    for i in held + accepted:
        assert wait_finished(q, i).state.value == 'succeeded'
    assert names(app) == ['x', 'y']


# ----------------------------------------------------------------------- stop

def test_stop_refuses_new_jobs_lets_the_running_one_finish_and_drains_the_queue(started):
    q = started(workers=1)
    gate, ran = Gate(), []
    held = q.perform(gate.job)
    gate.wait_entered()
    ids = [q.perform(ran.append, (i,)) for i in range(200)]
    stopping = []
    stopper = threading.Thread(target=lambda: stopping.append(q.stop(30)))
    stopper.start()
    wait_for(lambda: q.stopped)
    with pytest.raises(QueueStopped):
        q.perform(ran.append, ('late',))
    assert stopper.is_alive()  # still draining: the held job has not finished
    gate.release()
    stopper.join(40)
    assert stopping == [[]]
    assert ran == list(range(200))
    assert wait_finished(q, held).result == 'released'
    assert all(q.get_status(i).state.value == 'succeeded' for i in ids[-5:])


def test_public_stop_and_perform_afterwards(started):
    q = started()
    ran = []
    jobid = asyncjob_perform(ran.append, 1)
    assert tgext.asyncjob.stop(timeout=10) == []
    assert ran == [1] and wait_finished(q, jobid).state.value == 'succeeded'
    with pytest.raises(QueueStopped):
        q.perform(ran.append, (2,))


def test_asyncjob_perform_after_stop_raises_queue_stopped(started):
    started()
    tgext.asyncjob.stop(timeout=10)
    with pytest.raises(QueueStopped):
        asyncjob_perform(print)


def test_asyncjob_perform_in_a_stopped_app_raises_queue_stopped(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, root=PoolController)
    q = app.app_globals.asyncjob_queue
    assert q.stop(10) == []
    with pytest.raises(QueueStopped):
        app.get('/add', params={'name': 'late'})
    assert names(app) == []


def test_stop_reports_what_it_could_not_run(started, caplog):
    q = started(workers=1)
    gate = Gate()
    held = q.perform(gate.job)
    gate.wait_entered()
    ids = [q.perform(print, (i,)) for i in range(20)]
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        unrun = q.stop(0.1)
    gate.release()
    assert unrun == ids  # in queue order
    warned = unrun_warnings(caplog)
    assert set(warned) == set(ids)
    assert all('builtins.print' in m for m in warned.values())
    assert any(held in r.getMessage() and 'still running' in r.getMessage()
               for r in caplog.records)
    for i in ids:
        status = q.get_status(i)
        assert status.state.value == 'cancelled' and 'stopped' in status.detail
    assert wait_finished(q, held).state.value == 'succeeded'


# ----------------------------------------------------------- interpreter exit

EXIT_SCRIPT = textwrap.dedent('''
    import json, logging, os, sys, threading
    from types import SimpleNamespace
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format='%(levelname)s %(name)s %(message)s')
    from tgext.asyncjob import start_async_worker

    RAN = sys.argv[1]
    entered = threading.Event()

    def quick(n):
        with open(RAN, 'a') as f:
            f.write('quick %d\\n' % n)

    def blocker():
        entered.set()
        threading.Event().wait(120)   # outlives the stop timeout: left running

    def later(n):
        with open(RAN, 'a') as f:
            f.write('later %d\\n' % n)

    q = start_async_worker(SimpleNamespace(), workers=1, stop_timeout=1)
    out = {'quick': [q.perform(quick, (i,)) for i in range(5)],
           'blocker': q.perform(blocker)}
    out['later'] = [q.perform(later, (i,)) for i in range(5)]
    assert entered.wait(60), 'blocker never started'
    print(json.dumps(out), flush=True)
    # No stop() here: the interpreter exits and atexit stops the queue.
''')


def test_interpreter_exit_stops_the_queue_and_reports_what_did_not_run(tmp_path):
    ran = tmp_path / 'ran.txt'
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', EXIT_SCRIPT, str(ran)], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout)
    assert sorted(ran.read_text().split('\n')[:-1]) == ['quick %d' % i for i in range(5)]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith('WARNING')]
    for jobid in ids['later']:
        assert any(jobid in w and '__main__.later' in w and 'did not run' in w
                   for w in warnings), proc.stderr
    assert any(ids['blocker'] in w and 'still running' in w for w in warnings), proc.stderr
    assert not any(jobid in proc.stderr for jobid in ids['quick'])


# -------------------------------------------------------------------- watchdog

class WorkerKiller(BaseException):
    """What no job, hook or store can do any more (each is shielded): end a worker
    thread. The test makes the execution path itself raise it, after the claim."""


def kill_on(q, victim):
    """Make ``q``'s worker threads die when they run a job of ``victim``."""
    execute = q.runtime.execute

    def dying_execute(job):
        if job.func is victim:
            q.lifecycle.claim(job)
            raise WorkerKiller('killed for the test')
        execute(job)
    q.runtime.execute = dying_execute


def doomed():
    raise AssertionError('the worker died before running this')


@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_a_dead_worker_thread_is_replaced_and_its_job_failed(started, caplog):
    q = started(workers=1)
    kill_on(q, doomed)
    pool = q.backend
    pool.watch_interval = 0.05
    before = pool.threads[0]
    ran = []
    with caplog.at_level(logging.ERROR, logger='tgext.asyncjob'):
        victim = q.perform(doomed)
        after = q.perform(ran.append, ('after',))
        status = wait_finished(q, victim)
        assert wait_finished(q, after).state.value == 'succeeded'
    assert not before.is_alive()
    # The replacement is started before it is stored in the list: wait for the store.
    wait_for(lambda: pool.threads[0] is not before, message='the thread was not replaced')
    assert pool.threads[0].is_alive()
    assert status.state.value == 'failed' and status.error.type == 'WorkerDied'
    assert ran == ['after']
    assert any(victim in r.getMessage() and 'died' in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_check_threads_replaces_each_dead_thread_once(started):
    q = started(workers=3)
    kill_on(q, doomed)
    pool = q.backend
    pool._watch.set()  # no watchdog thread: the test calls check_threads itself
    pool._watchdog.join(10)
    victims = [q.perform(doomed) for _ in range(3)]
    wait_for(lambda: not any(t.is_alive() for t in pool.threads),
             message='the three threads should have died')
    assert pool.check_threads() == 3
    assert pool.check_threads() == 0
    for v in victims:
        assert wait_finished(q, v).error.type == 'WorkerDied'
    assert wait_finished(q, q.perform(int)).state.value == 'succeeded'


# ---------------------------------------------------------------------- proofs

def test_100000_jobs_over_8_workers_each_run_exactly_once(started):
    q = started(workers=8)
    n = 100_000
    ran = []
    record = ran.append  # list.append is atomic: a job run twice shows twice
    t0 = time.monotonic()
    ids = [asyncjob_perform(record, i) for i in range(n)]
    queued = time.monotonic() - t0
    wait_for(lambda: len(ran) >= n, timeout=120, interval=0.05,
             message=lambda: f'{len(ran)} of {n} jobs ran')
    assert q.stop(30) == []  # nothing was left over
    elapsed = time.monotonic() - t0
    counts = collections.Counter(ran)
    assert len(ran) == n and len(counts) == n and set(counts.values()) == {1}
    assert set(counts) == set(range(n))
    assert len(set(ids)) == n
    # The newest records are all 'succeeded' (the memory tracker keeps the last 10,000).
    assert {q.get_status(i).state.value for i in ids[-100:]} == {'succeeded'}
    print(f'\n100k jobs over 8 workers: queued in {queued:.2f} s, all run in {elapsed:.2f} s')


def _slow(n):
    sum(range(20000))  # some work, so that a short stop leaves jobs behind


def test_1000_queued_then_a_short_stop_every_id_is_run_or_reported(started, caplog):
    q = started(workers=2)
    n = 1000
    ran = []
    hold, brake = Gate(), Gate()

    def job(i):
        if i == 500:
            brake.job()  # still running at the deadline: left to finish
        _slow(i)
        ran.append(ids[i])

    ids = []
    q.perform(hold.job)  # one worker held: the other drains alone
    hold.wait_entered()
    for i in range(n):
        ids.append(q.perform(job, (i,)))
    # Job 500 is running before the deadline starts, so it is the one left to finish
    # whatever the machine's load (the drain races the dropping of the rest otherwise).
    brake.wait_entered()
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        unrun = q.stop(0.5)
    hold.release()
    brake.release()
    # Jobs left running at the deadline finish; nothing else starts.
    wait_for(lambda: len(ran) + len(unrun) >= n, message=lambda: (
        f'{len(ran)} ran + {len(unrun)} reported != {n}'))
    # The threads still running at the deadline take their stop sentinel once done.
    wait_for(q.backend.channel.empty, message='jobs or sentinels left in the channel')
    assert len(unrun) == len(set(unrun))
    assert set(ran).isdisjoint(unrun)
    assert set(ran) | set(unrun) == set(ids) and len(ran) + len(unrun) == n
    assert set(ids[501:]) <= set(unrun) and ids[500] in ran
    warned = unrun_warnings(caplog)
    assert set(warned) == set(unrun)
    assert all('test_reliability' in m and '.job' in m for m in warned.values())
    assert {q.get_status(i).state.value for i in unrun} == {'cancelled'}
    print(f'\nstop(0.5) with 1000 queued, one of two workers held: {len(ran)} ran, '
          f'{len(unrun)} reported')


def test_1000_queued_then_stop_with_both_workers_draining(started, caplog):
    q = started(workers=2)
    n = 1000
    ran = []
    ids = []

    def job(i):
        _slow(i)
        ran.append(ids[i])

    gate = Gate()
    q.perform(gate.job)
    gate.wait_entered()
    ids.extend(q.perform(job, (i,)) for i in range(n))
    result = []
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        stopper = threading.Thread(target=lambda: result.append(q.stop(0.05)))
        stopper.start()
        gate.release()
        stopper.join(30)
    unrun = result[0]
    wait_for(lambda: len(ran) + len(unrun) >= n, message=lambda: (
        f'{len(ran)} ran + {len(unrun)} reported != {n}'))
    assert set(ran).isdisjoint(unrun) and len(ran) + len(unrun) == n
    assert set(ran) | set(unrun) == set(ids)
    assert set(unrun_warnings(caplog)) == set(unrun)
    print(f'\nstop(0.05) with 1000 queued, two workers: {len(ran)} ran, {len(unrun)} reported')
