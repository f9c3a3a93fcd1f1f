"""Issue 10, the core's cases: each test names its case, and each failed on the code
before the job state machine (lifecycle.py) and the checks at the call site."""
import asyncio
import datetime
import inspect
import json
import logging
import math
import os
import pkgutil
import subprocess
import sys
import textwrap
import threading
import time
import typing
from types import SimpleNamespace

import pytest
import transaction

import tgext.asyncjob
from tgext.asyncjob import (JobFailed, JobQueue, QueueStopped, Retry, asyncjob_options,
                            locate, start_async_worker)
from tgext.asyncjob.job import Job
from tgext.asyncjob.scheduler import Scheduler
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from jobhelpers import Gate, wait_finished
from services import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def redis_tracker(redis_url, redis_client):
    tracker = RedisProgressTracker(url=redis_url)
    yield tracker
    tracker.redis.close()


def held_jobs(q):
    """The jobs the queue still holds (queued or running in this process)."""
    return [j for j in q.lifecycle.held() if not j.state.finished]


# ------------------------------------------------------ case 1: absurd delays

@pytest.mark.parametrize('options', [
    {'delay': 1e10}, {'delay': float('inf')}, {'delay': float('nan')},
    {'at': datetime.datetime(9999, 1, 1)}, {'at': float('inf')}, {'at': float('nan')},
], ids=repr)
def test_case1_absurd_delays_are_refused_at_the_call_site(started, options):
    q = started()
    with pytest.raises(ValueError):
        q.perform(print, (), delay=options.get('delay'), at=options.get('at'))
    with pytest.raises(ValueError):
        asyncjob_options(**options)
    assert q.recent(10) == []


@pytest.mark.parametrize('options', [
    {'max_backoff': float('inf')}, {'backoff': float('inf')}, {'max_backoff': 1e12},
    {'factor': float('inf')},
], ids=repr)
def test_case1_absurd_backoffs_are_refused_by_retry(options):
    with pytest.raises(ValueError):
        Retry(**options)


def test_case1_a_huge_backoff_growth_is_capped_not_an_overflow():
    policy = Retry(max_retries=5000, factor=10, max_backoff=60, jitter=False)
    assert policy.delay(4000) == 60


def test_case1_the_scheduler_survives_an_eta_beyond_the_clock_limits(caplog):
    released = []
    scheduler = Scheduler(released.append)
    far = Job(print, (), {})
    try:
        # Past every call-site check (a store could hold any number): threading's
        # wait() cannot take such a timeout; the scheduler must not die of it.
        scheduler.schedule(far, time.time() + threading.TIMEOUT_MAX * 10)
        for _ in range(3):  # each time, the thread goes back to sleeping until `far`
            soon = Job(print, (), {})
            scheduler.schedule(soon, time.time())
            wait_for(lambda: soon in released, message='a due job was never released')
    finally:
        assert scheduler.stop() == [far]


def test_case1_the_scheduler_survives_a_release_that_raises_and_logs_it(caplog):
    released = []

    def release(job):
        if job.func is len:
            raise RuntimeError('cannot hand over')
        released.append(job)

    scheduler = Scheduler(release)
    bad, good = Job(len, (), {}), Job(print, (), {})
    with caplog.at_level(logging.ERROR, logger='tgext.asyncjob'):
        scheduler.schedule(bad, time.time())
        wait_for(lambda: any('cannot hand over' in (r.exc_text or '') or r.exc_info
                             for r in caplog.records), message='the failure was not logged')
        scheduler.schedule(good, time.time())
        wait_for(lambda: good in released, message='the scheduler died')
    scheduler.stop()


# ------------------------------- case 2: cancelled while running, then retryable

def test_case2_a_cancelled_running_job_that_fails_retryably_is_not_retried(started):
    q = started()
    gate = Gate()

    def fails_after_gate():
        gate.job()
        raise ConnectionError('flaky')

    jobid = q.perform(fails_after_gate, retry=Retry(on=ConnectionError, backoff=0))
    gate.wait_entered()
    assert q.cancel(jobid) is True  # running: only flagged
    gate.release()
    status = q.wait(jobid, 10)
    assert status.state.value == 'failed', status
    assert status.attempt == 1 and status.error.type == 'ConnectionError'
    assert 'cancelled' in status.detail
    assert q.stop(5) == [] and held_jobs(q) == []
    assert q.get_status(jobid).state.value == 'failed'


# ------------------------------------- case 3: on_commit + delay after stop()

@pytest.mark.parametrize('delay', [None, 30])
def test_case3_an_on_commit_job_committing_after_stop_is_reported_not_queued(
        started, caplog, delay):
    q = started()
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        with transaction.manager:
            jobid = q.perform(print, ('never',), delay=delay, on_commit=True)
            unrun = q.stop(1)
        # The transaction committed after the stop.
    assert unrun == [jobid]
    status = q.get_status(jobid)
    assert status.state.value == 'cancelled' and 'not run' in status.detail
    assert 'commit' in status.detail
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert held_jobs(q) == []


# --------------------------------------------------------- case 5: exit

EXIT_SCRIPT = textwrap.dedent('''
    import json, logging, sys, threading
    from types import SimpleNamespace
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='%(levelname)s %(name)s %(message)s')
    from tgext.asyncjob import start_async_worker
    from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

    entered = threading.Event()

    def blocker():
        entered.set()
        threading.Event().wait(120)   # outlives the stop timeout

    def quick():
        return 'done'

    q = start_async_worker(SimpleNamespace(), RedisProgressTracker(url=sys.argv[1]),
                           workers=2, stop_timeout=0.5)
    out = {'blocker': q.perform(blocker)}
    assert entered.wait(60), 'blocker never started'
    out['quick'] = q.perform(quick)
    assert q.wait(out['quick'], 30).state.value == 'succeeded'
    print(json.dumps(out), flush=True)
    # No stop(): the interpreter exits, and exit handling stops the queue.
''')


def test_case5_jobs_running_at_exit_are_recorded_interrupted(redis_url, redis_tracker):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', EXIT_SCRIPT, redis_url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout)
    record = redis_tracker.get_record(ids['blocker'])
    assert record['state'] == 'failed', record
    assert record['error']['type'] == 'Interrupted'
    assert 'exited' in record['error']['message']
    lines = [line for line in proc.stderr.splitlines() if ids['blocker'] in line]
    assert any('still running' in line and 'Interrupted' in line for line in lines), proc.stderr
    assert 'left to finish' not in proc.stderr
    assert redis_tracker.get_record(ids['quick'])['state'] == 'succeeded'


def test_case5_a_job_ending_after_its_interrupt_keeps_the_interrupted_record(started, caplog):
    q = started()
    gate = Gate()
    jobid = q.perform(gate.job)
    gate.wait_entered()
    [job] = q.lifecycle.held()
    assert q.lifecycle.interrupt(job, 'the process is exiting')
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        gate.release()
        wait_for(lambda: any('after it was recorded failed' in r.getMessage()
                             for r in caplog.records), message='the late end was not logged')
    status = q.get_status(jobid)
    assert status.state.value == 'failed' and status.error.type == 'Interrupted'


# ------------------------------------------------ case 7: async and generators

async def _coroutine_job(path):
    await asyncio.sleep(0)
    with open(path, 'w') as f:
        f.write('ran')
    return 'awaited'


def _generator_job():
    yield 1


async def _async_generator_job():
    yield 1


def test_case7_async_functions_run_to_completion(started, tmp_path):
    q = started()
    path = tmp_path / 'ran'
    status = wait_finished(q, q.perform(_coroutine_job, (str(path),)))
    assert status.state.value == 'succeeded' and status.result == 'awaited'
    assert path.read_text() == 'ran'


def test_case7_async_functions_run_in_immediate_mode_too(started, tmp_path):
    q = started(immediate=True)
    path = tmp_path / 'ran'
    jobid = q.perform(_coroutine_job, (str(path),))
    assert q.get_status(jobid).result == 'awaited' and path.read_text() == 'ran'


@pytest.mark.parametrize('func', [_generator_job, _async_generator_job])
def test_case7_generator_functions_are_refused_at_the_call_site(started, func):
    q = started()
    with pytest.raises(TypeError, match='generator'):
        q.perform(func)
    assert q.recent(10) == []


# ------------------------------------------- case 8: hostile values and hooks

class HostileError(Exception):
    def __str__(self):
        raise RuntimeError('__str__ of the error raised')


class HostileResult:
    def __repr__(self):
        raise RuntimeError('__repr__ of the result raised')


def _raise_hostile():
    raise HostileError()


def _return_hostile():
    return HostileResult()


class Fatal(BaseException):
    """Not an Exception."""


class RaisingHooks:
    def on_started(self, job):
        raise Fatal('from on_started')

    def on_succeeded(self, job, result):
        raise SystemExit('from on_succeeded')

    def on_failed(self, job, error):
        raise KeyboardInterrupt()


@pytest.mark.parametrize('options', [
    {'max_retries': '3'}, {'max_retries': 1.5}, {'max_retries': True},
    {'max_retries': -1}, {'backoff': float('nan')}, {'backoff': '1'},
    {'factor': float('nan')}, {'factor': 0.5}, {'jitter': 'yes'},
], ids=repr)
def test_case8_and_17_retry_is_validated_at_construction(options):
    with pytest.raises((TypeError, ValueError)):
        Retry(**options)


def test_case8_an_error_whose_str_raises_is_recorded_and_the_worker_lives(started):
    q = started()
    thread = q.backend.threads[0]
    status = wait_finished(q, q.perform(_raise_hostile))
    assert status.state.value == 'failed' and status.error.type == 'HostileError'
    assert 'str() failed' in status.error.message
    assert wait_finished(q, q.perform(len, ('ab',))).result == 2
    assert q.backend.threads[0] is thread and thread.is_alive()


def test_case8_a_result_whose_repr_raises_is_recorded_and_the_worker_lives(
        started, redis_tracker):
    q = started(redis_tracker)  # stores JSON: falls back to the result's repr()
    thread = q.backend.threads[0]
    status = wait_finished(q, q.perform(_return_hostile))
    assert status.state.value == 'succeeded'
    assert 'repr() failed' in status.result and 'HostileResult' in status.result
    assert wait_finished(q, q.perform(len, ('ab',))).result == 2
    assert q.backend.threads[0] is thread and thread.is_alive()


def test_case8_hooks_raising_base_exceptions_break_nothing(started, caplog):
    q = started(hooks=[RaisingHooks()])
    thread = q.backend.threads[0]
    with caplog.at_level(logging.ERROR, logger='tgext.asyncjob'):
        ok = wait_finished(q, q.perform(len, ('abc',)))
        failed = wait_finished(q, q.perform(_raise_hostile))
    assert ok.state.value == 'succeeded' and ok.result == 3
    assert failed.state.value == 'failed' and failed.error.type == 'HostileError'
    assert q.backend.threads[0] is thread and thread.is_alive()
    hooks_logged = [r for r in caplog.records if 'hook' in r.getMessage()]
    assert len(hooks_logged) == 4 and all(r.exc_info for r in hooks_logged)


def test_case8_failures_are_logged_in_full(started, caplog):
    q = started()
    with caplog.at_level(logging.ERROR, logger='tgext.asyncjob'):
        jobid = q.perform(_raise_hostile)
        wait_finished(q, jobid)
    [record] = [r for r in caplog.records if jobid in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info[0] is HostileError


# ------------------------------------------------ case 9: on_enqueued raises

class ExitOnEnqueued:
    def on_enqueued(self, job):
        raise SystemExit('from on_enqueued')


def test_case9_on_enqueued_raising_systemexit_leaves_no_queued_record(started):
    q = started(hooks=[ExitOnEnqueued()])
    try:
        jobid = q.perform(len, ('abcd',))
    except SystemExit:  # the old behaviour: the record stayed 'queued' forever
        [status] = q.recent(1)
        pytest.fail(f'perform raised SystemExit, leaving the job {status.state.value}')
    assert wait_finished(q, jobid).result == 4


# ------------------------------------------ case 17: settings at start / call

@pytest.mark.parametrize('options', [
    {'stop_timeout': float('nan')}, {'stop_timeout': -1}, {'stop_timeout': float('inf')},
    {'max_queue': 5, 'put_timeout': -1}, {'put_timeout': float('nan')},
    {'attempts': 0}, {'attempts': 1.5}, {'workers': 0}, {'max_queue': -1},
], ids=repr)
def test_case17_and_20_bad_queue_settings_fail_at_construction(options):
    with pytest.raises((TypeError, ValueError)):
        JobQueue(**options)


def test_case17_a_bad_stop_timeout_fails_when_the_app_starts(monkeypatch):
    monkeypatch.setattr(locate, 'current_conf', lambda: None)
    with pytest.raises(ValueError, match='stop_timeout'):
        start_async_worker(SimpleNamespace(), stop_timeout=float('nan'))


# -------------------------------------------------------------- case 20

def test_case20_perform_takes_at_as_any_like_the_public_api():
    hints = typing.get_type_hints(JobQueue.perform)
    assert hints['at'] is typing.Any
    assert inspect.signature(tgext.asyncjob.asyncjob_options).parameters['at'].annotation in (
        'Any', typing.Any)


def test_case20_one_fork_hook_for_the_whole_package():
    """Every reset after fork goes through forking.py; job ids need none at all."""
    import tgext.asyncjob as package
    users = []
    for info in pkgutil.walk_packages(package.__path__, 'tgext.asyncjob.'):
        if info.name.startswith('tgext.asyncjob.demo'):
            continue
        spec = info.module_finder.find_spec(info.name)
        if spec is None or not spec.origin or not spec.origin.endswith('.py'):
            continue
        with open(spec.origin) as f:
            if 'register_at_fork(' in f.read():
                users.append(info.name)
    assert users == ['tgext.asyncjob.forking']


# ------------------------------------------------- JobFailed, JobError.public

def _fail_for_the_user():
    raise JobFailed('The export is too large: pick fewer rows.')


def _fail_with_sql():
    raise RuntimeError('INSERT INTO users (password) VALUES (%s) -- secret')


def test_job_failed_is_public_other_errors_are_not(started):
    q = started()
    public = wait_finished(q, q.perform(_fail_for_the_user)).error
    assert public.type == 'JobFailed' and public.public is True
    assert public.message == 'The export is too large: pick fewer rows.'
    private = wait_finished(q, q.perform(_fail_with_sql)).error
    assert private.public is False and 'secret' in private.message  # kept, not shown


def test_job_failed_is_not_retried_unless_named(started):
    q = started()
    plain = wait_finished(q, q.perform(_fail_for_the_user, retry=Retry(backoff=0)))
    assert plain.attempt == 1
    named = wait_finished(q, q.perform(_fail_for_the_user,
                                       retry=Retry(on=JobFailed, max_retries=1, backoff=0)))
    assert named.attempt == 2 and named.state.value == 'failed'


def test_stopped_queue_refuses_jobs_at_once(started):
    q = started()
    q.stop(1)
    with pytest.raises(QueueStopped):
        q.perform(print)
    assert math.isfinite(q.stop_timeout)
