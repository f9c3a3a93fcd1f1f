"""The backend contract: one table of scenarios and their answers, run on every backend.

The ``sqlalchemy`` backend runs this table, on each database, from
tests/test_sqlalchemy_backend_contract.py (through :func:`test_contract` and
:data:`TABLE`, with its own database fixtures).

HOW TO ADD A BACKEND: write a function ``make(request) -> JobQueue`` that returns a
started queue using it (stopped by a finalizer it registers with
``request.addfinalizer``), with workers able to run this module's jobs, and add one
:class:`Entry` to :data:`BACKENDS`::

    BACKENDS['sqlalchemy'] = Entry(make_sqlalchemy_queue)

The jobs below are module-level functions taking JSON-safe arguments and talking to
the test only through files and their results, so a backend running jobs in another
process (importing this module by name) runs the same table. ``synchronous`` says
that jobs end inside ``perform`` (immediate mode): scenarios needing a job that waits
are then left out (not skipped: not generated). Which answer a scenario expects may
depend on the backend's capability flags (e.g. ``durable``), read from
``queue.backend``, never from the entry.
"""
import dataclasses
import os
import threading
import time
import uuid
from typing import Callable

import pytest

from tgext.asyncjob import (JobFailed, JobOptions, JobQueue, Retry, UnsupportedOption,
                            asyncjob_cancelled, asyncjob_running_uid)
from tgext.asyncjob.errors import TimeLimitExceeded
from tgext.asyncjob.backends.base import Backend

from rqapp.contract import make_rq_queue

DEADLINE = 30


# ------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class Entry:
    make: Callable[[pytest.FixtureRequest], JobQueue]
    synchronous: bool = False


def _started(request, **options):
    q = JobQueue(**options)
    q.backend.start()
    request.addfinalizer(lambda: q.stop(10))
    return q


BACKENDS = {
    'threads': Entry(lambda request: _started(request, workers=2)),
    'immediate': Entry(lambda request: _started(request, immediate=True), synchronous=True),
    'rq': Entry(make_rq_queue),  # jobs run in an RQ worker process (rqapp.contract)
}


# ------------------------------------------------------------------- jobs

def add(a, b):
    return a + b


def fail(message):
    raise ValueError(message)


def fail_for_the_user(message):
    raise JobFailed(message)


def touch(path):
    with open(path, 'x') as f:  # 'x': a second run would raise
        f.write('ran')
    return 'touched'


def flaky(path):
    """Fails its first attempt, succeeds on the second."""
    if not os.path.exists(path):
        touch(path)
        raise ConnectionError('first attempt fails')
    return 'second attempt'


def _wait_file(path):
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f'{path} never appeared')
        threading.Event().wait(0.01)


def hold(entered, release, then_fail=False):
    """Writes its id to ``entered``, waits for ``release`` to exist, then answers
    whether it was asked to cancel (or fails retryably)."""
    with open(entered + '.tmp', 'w') as f:
        f.write(asyncjob_running_uid())
    os.rename(entered + '.tmp', entered)
    _wait_file(release)
    if then_fail:
        raise ConnectionError('fails after being cancelled')
    return asyncjob_cancelled()


def overrun(path):
    """Starts (a file says so), then loops in Python until flagged; returns normally."""
    touch(path)
    deadline = time.monotonic() + DEADLINE
    while not asyncjob_cancelled():
        if time.monotonic() > deadline:
            raise AssertionError('the time limit neither flagged nor stopped the job')
        threading.Event().wait(0.01)
    return 'returned after the flag'


def stamp(directory, n):
    """Records its run: a file ``<n>`` holding ``start end``."""
    start = time.time()
    threading.Event().wait(0.05)
    with open(os.path.join(directory, '%d.tmp' % n), 'w') as f:
        f.write('%r %r' % (start, time.time()))
    os.rename(os.path.join(directory, '%d.tmp' % n), os.path.join(directory, str(n)))


# -------------------------------------------------------------- scenarios
# Each takes (queue, tmp_path) and returns the job id whose final status the table
# checks; ``ran`` files tell whether a body ran.

def s_returns(q, tmp):
    return q.perform(add, (2, 3))


def s_raises(q, tmp):
    return q.perform(fail, ('internal detail',))


def s_raises_job_failed(q, tmp):
    return q.perform(fail_for_the_user, ('Too many rows: pick fewer.',))


def s_retried_then_succeeds(q, tmp):
    return q.perform(flaky, (str(tmp / 'ran'),), retry=Retry(on=ConnectionError, backoff=0))


def s_cancelled_while_queued(q, tmp):
    jobid = q.perform(touch, (str(tmp / 'ran'),), delay=DEADLINE)
    assert q.cancel(jobid) is True
    assert q.cancel(jobid) is False  # finished: cancelling again answers False
    return jobid


def _start_holding(q, tmp, then_fail=False, **options):
    """Start ``hold`` and return (its id, the release file, the performing thread).
    perform runs in a thread: in immediate mode it returns only once the job ended."""
    entered, release = str(tmp / 'entered'), str(tmp / 'release')
    thread = threading.Thread(target=q.perform, args=(hold, (entered, release, then_fail)),
                              kwargs=options)
    thread.start()
    _wait_file(entered)
    with open(entered) as f:
        return f.read(), release, thread


def _cancel_running(q, tmp, **options):
    jobid, release, thread = _start_holding(q, tmp, **options)
    assert q.cancel(jobid) is True  # running: flagged
    open(release, 'w').close()
    thread.join(DEADLINE)
    return jobid


def s_cancelled_while_running(q, tmp):
    return _cancel_running(q, tmp)


def s_cancelled_while_running_then_fails_retryably(q, tmp):
    return _cancel_running(q, tmp, then_fail=True,
                           retry=Retry(on=ConnectionError, backoff=0))


def s_delayed(q, tmp):
    return q.perform(add, (1, 1), delay=0.2)


def s_unknown_id(q, tmp):
    assert q.cancel('0' * 32) is False
    return '0' * 32


def s_waiting_at_stop(q, tmp):
    jobid = q.perform(touch, (str(tmp / 'ran'),), delay=DEADLINE)
    unrun = q.stop(5)
    assert (jobid in unrun) is (not q.backend.durable)
    return jobid


def _unique(**options):
    return JobOptions(unique_key=f'contract:{uuid.uuid4().hex}', **options)


def s_unique_while_queued_then_free_once_cancelled(q, tmp):
    waiting = _unique(delay=DEADLINE)
    first = q.perform(touch, (str(tmp / 'ran'),), options=waiting)
    assert q.perform(touch, (str(tmp / 'ran'),), options=waiting) == first  # nothing queued
    assert q.cancel(first) is True
    jobid = q.perform(add, (2, 2), options=JobOptions(unique_key=waiting.unique_key))
    assert jobid != first
    return jobid


def s_unique_while_running(q, tmp):
    options = _unique()
    jobid, release, thread = _start_holding(q, tmp, options=options)
    assert q.perform(add, (1, 1), options=options) == jobid
    open(release, 'w').close()
    thread.join(DEADLINE)
    return jobid


def s_unique_free_once_failed(q, tmp):
    options = _unique()
    failed = q.perform(fail, ('first',), options=options)
    assert q.wait(failed, DEADLINE).state.value == 'failed'
    jobid = q.perform(add, (1, 2), options=options)
    assert jobid != failed
    return jobid


def s_over_its_time_limit(q, tmp):
    return q.perform(overrun, (str(tmp / 'ran'),), options=JobOptions(time_limit=0.5))


def s_within_its_time_limit(q, tmp):
    return q.perform(add, (2, 2), options=JobOptions(time_limit=DEADLINE))


STAMPS = 4


def s_concurrency_limit_1(q, tmp):
    keyed = dict(concurrency_key='contract', concurrency_limit=1)
    if not q.backend.supports_concurrency_limit:
        with pytest.raises(UnsupportedOption, match='concurrency_key'):
            q.perform(add, (1, 1), options=JobOptions(**keyed))
        return q.perform(add, (1, 1))  # refused: nothing queued, the table checks that
    for n in range(STAMPS):
        jobid = q.perform(stamp, (str(tmp), n), options=JobOptions(**keyed))
    return jobid  # in order, one at a time: once the last is done, all are


def _one_at_a_time(tmp):
    files = sorted(p for p in tmp.iterdir() if p.name.isdigit())
    if not files:  # the backend refused the option
        return True
    runs = sorted(tuple(map(float, p.read_text().split())) for p in files)
    return len(runs) == STAMPS and all(a[1] <= b[0] for a, b in zip(runs, runs[1:]))


# ------------------------------------------------------------------- the table
# scenario, needs a job that waits, final state, what else the answer says

def _ran(tmp):
    return (tmp / 'ran').exists()


TABLE = [
    (s_returns, False, 'succeeded', lambda s, tmp: s.result == 5 and s.attempt == 1),
    (s_raises, False, 'failed',
     lambda s, tmp: s.error.type == 'ValueError' and s.error.public is False),
    (s_raises_job_failed, False, 'failed',
     lambda s, tmp: s.error.public is True and s.error.message == 'Too many rows: pick fewer.'),
    (s_retried_then_succeeds, False, 'succeeded',
     lambda s, tmp: s.attempt == 2 and s.result == 'second attempt'),
    (s_cancelled_while_queued, True, 'cancelled', lambda s, tmp: not _ran(tmp)),
    (s_cancelled_while_running, False, 'succeeded', lambda s, tmp: s.result is True),
    (s_cancelled_while_running_then_fails_retryably, False, 'failed',
     lambda s, tmp: s.attempt == 1 and 'cancelled' in s.detail),
    (s_delayed, True, 'succeeded',
     lambda s, tmp: s.result == 2 and s.started_at >= s.enqueued_at + 0.2),
    (s_unknown_id, False, 'not_found', lambda s, tmp: True),
    (s_waiting_at_stop, True, None, lambda s, tmp: not _ran(tmp)),
    (s_unique_while_queued_then_free_once_cancelled, True, 'succeeded',
     lambda s, tmp: s.result == 4 and not _ran(tmp)),
    (s_unique_while_running, False, 'succeeded', lambda s, tmp: s.result is False),
    (s_unique_free_once_failed, False, 'succeeded', lambda s, tmp: s.result == 3),
    # Over its limit: flagged (threads) or stopped (rq), failed either way.
    (s_over_its_time_limit, False, 'failed',
     lambda s, tmp: _ran(tmp) and s.error.type == TimeLimitExceeded.__name__
     and s.result is None),
    (s_within_its_time_limit, False, 'succeeded', lambda s, tmp: s.result == 4),
    (s_concurrency_limit_1, False, 'succeeded', lambda s, tmp: _one_at_a_time(tmp)),
]


def _cases():
    for name, entry in BACKENDS.items():
        for scenario, needs_waiting, state, check in TABLE:
            if needs_waiting and entry.synchronous:
                continue  # immediate mode: no job ever waits
            yield pytest.param(entry, scenario, state, check,
                               id=f'{name}-{scenario.__name__[2:]}')


@pytest.mark.parametrize('entry, scenario, state, check', list(_cases()))
def test_contract(request, tmp_path, entry, scenario, state, check):
    q = entry.make(request)
    jobid = scenario(q, tmp_path)
    if state is None:  # after stop(): kept queued if durable, else reported at once
        state = 'queued' if q.backend.durable else 'cancelled'
        status = q.get_status(jobid)
    else:
        status = q.wait(jobid, DEADLINE)
    assert status.state.value == state, status
    assert check(status, tmp_path), status
    held = [j for j in q.lifecycle.held() if not j.state.finished]
    assert state == 'queued' or held == [], held


# ---------------------------------------------- flags read at the call site

class NoFrills(Backend):
    """A backend that honours nothing optional; it runs due jobs in the caller."""

    supports_delay = False
    supports_retry = False
    supports_on_commit = False

    def enqueue(self, job):
        self.runtime.execute(job)


@pytest.mark.parametrize('options, flag', [
    ({'delay': 1}, 'delay'), ({'retry': Retry()}, 'retry'), ({'on_commit': True}, 'on_commit'),
    ({'options': JobOptions(priority=1)}, 'priority'),
    ({'options': JobOptions(unique_key='k')}, 'unique_key'),
])
def test_perform_rejects_what_the_backend_cannot_honour(options, flag):
    q = JobQueue(backend=NoFrills)
    with pytest.raises(UnsupportedOption, match=flag):
        q.perform(add, (1, 2), **options)
    assert q.recent(10) == []  # nothing stored
    assert q.wait(q.perform(add, (1, 2)), DEADLINE).result == 3
    q.stop(1)


def test_a_backend_factory_must_make_a_backend():
    with pytest.raises(TypeError, match='Backend'):
        JobQueue(backend=lambda runtime: object())


def test_the_default_worker_command_says_why_it_cannot_run():
    q = JobQueue()
    with pytest.raises(NotImplementedError, match='worker command'):
        q.backend.work(threads=1, burst=True, queues=None)
    q.stop(1)
