"""Priorities (``asyncjob_options(priority=...)``, README "Priorities"): higher runs
first, first in, first out within a priority, on the threads backend and on the
sqlalchemy backend (SQLite, PostgreSQL, MariaDB), through real TurboGears apps; on
the rq backend in three bands (RQ queues NAME:high, NAME, NAME:low), run by a real
worker process."""
import os
import uuid

import pytest
from tg import expose

import processes
from sampleapp.controllers.root import RootController
from services import wait_for
from test_sqlalchemy_backend import mariadb_url, url  # noqa: F401 (fixtures)
from tgext.asyncjob import JobOptions, JobState, QueueFull, asyncjob_options
from uniqueproc import hold, record

WAIT = 30
#: (label, priority) in the order queued, and the order they must run in.
QUEUED = [('a0', 0), ('b-5', -5), ('c10', 10), ('d10', 10), ('e100', 100), ('f-100', -100),
          ('g0', 0), ('h', None)]
RUN_ORDER = ['e100', 'c10', 'd10', 'a0', 'g0', 'h', 'b-5', 'f-100']


def _ran(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


class PriorityController(RootController):
    @expose('json')
    def queue(self, label, path, priority=None):
        options = asyncjob_options(priority=None if priority is None else int(priority))
        return dict(jobid=options.perform(record, label, path))

    @expose('json')
    def block(self, gate):
        return dict(jobid=asyncjob_options().perform(hold, gate))


def _queue_all(app, path):
    ids = []
    for label, priority in QUEUED:
        params = {'label': label, 'path': path}
        if priority is not None:
            params['priority'] = str(priority)
        ids.append(app.get('/queue', params=params).json['jobid'])
    return ids


def test_threads_run_higher_priorities_first_fifo_within_one(make_app, tmp_path):
    app = make_app(f'sqlite:///{tmp_path / "app.sqlite"}', root=PriorityController,
                   extra_config={'asyncjob.workers': '1'})
    q = app.app_globals.asyncjob_queue
    gate, path = str(tmp_path / 'gate'), str(tmp_path / 'order')
    blocker = app.get('/block', params={'gate': gate}).json['jobid']
    wait_for(lambda: q.get_status(blocker).state is JobState.RUNNING, timeout=WAIT)
    ids = _queue_all(app, path)
    open(gate, 'w').close()
    for jobid in ids:
        assert q.wait(jobid, WAIT).state is JobState.SUCCEEDED
    assert _ran(path) == RUN_ORDER


def test_a_bounded_threads_queue_still_refuses_when_full(started, tmp_path):
    q = started(workers=1, max_queue=2, put_timeout=0)
    gate = str(tmp_path / 'gate')
    blocker = q.perform(hold, (gate,))
    wait_for(lambda: q.get_status(blocker).state is JobState.RUNNING, timeout=WAIT)
    q.perform(record, ('low', str(tmp_path / 'order')), options=JobOptions(priority=-1))
    q.perform(record, ('high', str(tmp_path / 'order')), options=JobOptions(priority=1))
    with pytest.raises(QueueFull):
        q.perform(record, ('top', str(tmp_path / 'order')), options=JobOptions(priority=100))
    open(gate, 'w').close()
    wait_for(lambda: len(_ran(str(tmp_path / 'order'))) == 2, timeout=WAIT)
    assert _ran(str(tmp_path / 'order')) == ['high', 'low']


def test_sql_workers_claim_higher_priorities_first_fifo_within_one(
        make_app, url, tmp_path):  # noqa: F811
    config = {'asyncjob.backend': 'sqlalchemy', 'asyncjob.backend.in_process': 'false'}
    app = make_app(url, root=PriorityController, extra_config=config)
    q = app.app_globals.asyncjob_queue
    path = str(tmp_path / 'order')
    ids = _queue_all(app, path)
    q.backend.work(threads=1, burst=True)
    assert [q.get_status(i).state for i in ids] == [JobState.SUCCEEDED] * len(ids)
    assert _ran(path) == RUN_ORDER


@pytest.mark.parametrize('priority, error', [
    (101, ValueError), (-101, ValueError), (1.5, TypeError), ('1', TypeError), (True, TypeError),
])
def test_bad_priorities_raise_at_the_call_site(priority, error):
    with pytest.raises(error, match='priority'):
        asyncjob_options(priority=priority)


def test_rq_runs_the_high_band_first_then_default_then_low(redis_url, tmp_path):
    import redis
    from rqapp.contract import _queue
    name = f'asyncjob-prio-{uuid.uuid4().hex[:12]}'
    q = _queue(redis_url, name)
    path = str(tmp_path / 'order')
    procs = processes.Processes(tmp_path)
    client = redis.Redis.from_url(redis_url)
    try:
        ids = [q.perform(record, (label, path), options=JobOptions(priority=priority))
               for label, priority in QUEUED]
        assert {n: len(q.backend.rq_queues[n]) for n in q.backend.rq_queues} == {
            f'{name}:high': 3, name: 3, f'{name}:low': 2}
        worker = procs.start('worker', ['python', '-c', (
            'import sys; from rqapp.contract import _queue; '
            '_queue(sys.argv[1], sys.argv[2]).backend.work(simple=True, burst=True)'),
            redis_url, name])
        assert worker.wait_exit() == 0, worker.tail()
        for jobid in ids:
            assert q.wait(jobid, WAIT).state is JobState.SUCCEEDED
        # Bands, each first in, first out (100 and 10 are both "high").
        assert _ran(path) == ['c10', 'd10', 'e100', 'a0', 'g0', 'h', 'b-5', 'f-100']
    finally:
        procs.close()
        q.stop(5)
        for key in client.scan_iter(match=f'*{name}*'):
            client.delete(key)
        client.close()
