"""Fork safety: a queue started before fork() runs jobs in every child, with fresh
threads and a fresh queue; jobs queued in the parent before the fork stay the parent's.
Proved with a plain os.fork() and with a real gunicorn --preload serving a TG app."""
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from types import SimpleNamespace

import pytest
import sqlalchemy

from tgext.asyncjob import locate, start_async_worker

from jobhelpers import Gate, wait_finished
from services import free_port, wait_for

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def mark(path, tag):
    with open(path, 'a') as f:
        f.write(f'{tag} {os.getpid()} {threading.current_thread().name}\n')


def in_fork(child):
    """Fork; run ``child()`` in the child and return ``(pid, what it returned)`` (JSON)
    once the child exited. A traceback of the child fails the test here."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(child()).encode())
            code = 0
        except BaseException:
            os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, timeout=60,
             message='the forked child did not exit')
    with os.fdopen(read_fd) as f:
        output = f.read()
    try:
        return pid, json.loads(output)
    except ValueError:
        pytest.fail(f'the forked child failed:\n{output}')


def read_marks(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f.read().splitlines()]


# Forking a process whose worker threads run is the very case under test (Python 3.12+
# warns about it in general).
@pytest.mark.filterwarnings('ignore:This process .* is multi-threaded:DeprecationWarning')
def test_plain_fork_child_runs_its_own_jobs_and_not_the_parents(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, 'current_conf', lambda: None)
    marks = str(tmp_path / 'marks')
    q = start_async_worker(SimpleNamespace(), workers=1)
    gate = Gate()
    try:
        held = q.perform(gate.job)
        gate.wait_entered()
        parents = q.perform(mark, (marks, 'parent-job'))  # queued behind the held job

        def child():
            child_job = q.perform(mark, (marks, 'child-job'))
            status = q.wait(child_job, 30)
            return {'state': status.state.value,
                    'threads': [t.is_alive() for t in q.backend.threads],
                    'parent_job': q.get_status(parents).state.value}

        pid, report = in_fork(child)
        assert report['state'] == 'succeeded'
        assert report['threads'] == [True]
        # In the child the parent's job never runs: its copy of the memory tracker shows
        # the parent's queued job as 'unknown' (not 'queued' forever, issue 10 case 4).
        assert report['parent_job'] == 'unknown'
        child_marks = [m for m in read_marks(marks) if m[0] == 'child-job']
        assert child_marks == [['child-job', str(pid), 'asyncjob-worker-0']]
        # With one FIFO thread the parent's job would have run before the child's
        # had the child inherited it: it did not run there, and only now runs here.
        assert not [m for m in read_marks(marks) if m[0] == 'parent-job']
        gate.release()
        assert wait_finished(q, parents).state.value == 'succeeded'
        assert wait_finished(q, held).result == 'released'
        assert [m[:2] for m in read_marks(marks) if m[0] == 'parent-job'] == [
            ['parent-job', str(os.getpid())]]
    finally:
        gate.release()
        q.stop(10)


# Issue 10 case 4, the queue's side (engines: tgapps; the memory tracker: trackers).
@pytest.mark.filterwarnings('ignore:This process .* is multi-threaded:DeprecationWarning')
def test_a_forked_child_holds_none_of_the_parents_jobs(started):
    q = started()
    gate = Gate()
    running = q.perform(gate.job)
    gate.wait_entered()
    queued = q.perform(print, ('parent',))
    delayed = q.perform(print, ('parent',), delay=60)

    def child():
        report = {'cancel_parent': q.cancel(queued), 'cancel_delayed': q.cancel(delayed)}
        report['child'] = q.wait(q.perform(len, ('abc',)), 30).result
        report['unrun'] = q.stop(5)
        return report

    _, report = in_fork(child)
    assert report == {'cancel_parent': False, 'cancel_delayed': False, 'child': 3,
                      'unrun': []}
    gate.release()
    assert wait_finished(q, running).state.value == 'succeeded'
    assert wait_finished(q, queued).state.value == 'succeeded'
    assert q.cancel(delayed) is True



@pytest.mark.filterwarnings('ignore:This process .* is multi-threaded:DeprecationWarning')
def test_a_forked_child_exiting_does_not_interrupt_the_parents_running_job(
        started, redis_url, redis_client):
    from tgext.asyncjob import queue as queue_module
    from tgext.asyncjob.trackers.redisdb import RedisProgressTracker
    q = started(RedisProgressTracker(url=redis_url), stop_timeout=0.1)
    gate = Gate()
    running = q.perform(gate.job)
    gate.wait_entered()

    def child():
        queue_module._stop_at_exit()  # what the child's interpreter exit runs
        return q.get_status(running).state.value

    _, state_in_child = in_fork(child)
    assert state_in_child == 'running'
    assert q.get_status(running).state.value == 'running'
    gate.release()
    assert wait_finished(q, running).state.value == 'succeeded'


# ------------------------------------------------------------------- gunicorn

def _get(port, path, timeout=10):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path, headers={'Connection': 'close'})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _up(port):
    try:
        return _get(port, '/rows', timeout=2)[0] == 200
    except OSError:
        return False


@pytest.fixture
def gunicorn(tmp_path):
    """A gunicorn --preload master with 2 sync workers serving tests/forkapp.py."""
    db_path = tmp_path / 'fork.sqlite'
    flag = tmp_path / 'release-master'
    log = open(tmp_path / 'gunicorn.log', 'w+')
    env = dict(os.environ, ASYNCJOB_FORK_DB_URL=f'sqlite:///{db_path}',
               ASYNCJOB_FORK_FLAG=str(flag),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = port = None
    for _ in range(3):  # the free port may be taken before gunicorn binds it
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, '-m', 'gunicorn', '--preload', '--workers', '2',
             '--worker-class', 'sync', '--bind', f'127.0.0.1:{port}', '--chdir', TESTS,
             '--graceful-timeout', '10', '--log-level', 'info', 'forkapp:application'],
            cwd=TESTS, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: proc.poll() is not None or _up(port), timeout=60, interval=0.1,
                     message='gunicorn did not answer')
        except AssertionError:
            _stop(proc)
            raise
        if proc.poll() is None:
            break
    else:
        log.seek(0)
        pytest.fail('gunicorn did not start:\n' + log.read())

    server = SimpleNamespace(proc=proc, port=port, flag=flag, log=log,
                             engine=sqlalchemy.create_engine(f'sqlite:///{db_path}'))
    try:
        yield server
    finally:
        server.engine.dispose()
        _stop(proc)
        log.close()


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the master we started
            proc.wait(10)


def rows(server):
    with server.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sqlalchemy.text(
            'SELECT name, value FROM rows ORDER BY id'))]


def test_gunicorn_preload_every_worker_process_runs_its_jobs(gunicorn):
    master = gunicorn.proc.pid
    answers = []
    lock = threading.Lock()

    def client(stop):
        while not stop.is_set():
            status, body = _get(gunicorn.port, '/job')
            assert status == 200, body
            with lock:
                answers.append(json.loads(body))

    def two_pids_ran_jobs():
        return len({v for n, v in rows(gunicorn) if n != 'preload'}) >= 2

    stop = threading.Event()
    clients = [threading.Thread(target=client, args=(stop,)) for _ in range(4)]
    for c in clients:
        c.start()
    try:  # the listen socket is shared: keep asking until both workers took some
        wait_for(two_pids_ran_jobs, timeout=60, interval=0.05,
                 message=lambda: f'jobs ran in pids {set(v for n, v in rows(gunicorn))}')
    finally:
        stop.set()
        for c in clients:
            c.join(30)
    n = len(answers)
    wait_for(lambda: len([r for r in rows(gunicorn) if r[0] != 'preload']) >= n,
             timeout=30, message='some queued jobs never ran')
    jobs = [r for r in rows(gunicorn) if r[0] != 'preload']
    assert len(jobs) == n  # each request's job ran once
    assert all(name == str(value) for name, value in jobs)  # in the process that queued it
    assert sorted(int(name) for name, _ in jobs) == sorted(a['pid'] for a in answers)
    pids = {value for _, value in jobs}
    assert len(pids) == 2 and master not in pids
    assert len({a['jobid'] for a in answers}) == n
    # The master's jobs queued before the fork ran in no child: 'preload' is still
    # behind the two held jobs in the master, and runs there once they end.
    assert [r for r in rows(gunicorn) if r[0] == 'preload'] == []
    gunicorn.flag.touch()
    wait_for(lambda: [r for r in rows(gunicorn) if r[0] == 'preload'], timeout=30,
             message='the master never ran its preload job')
    assert [r for r in rows(gunicorn) if r[0] == 'preload'] == [('preload', master)]
