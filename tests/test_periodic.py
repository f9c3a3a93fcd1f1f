"""Periodic jobs (issue 13 §1): declarations, once per slot across real processes,
catch-up after downtime, and the processes where schedules never fire."""
import os

import pytest

import tgext.asyncjob
from tgext.asyncjob import asyncjob_periodic, periodic, settings

from processes import Processes
from services import wait_for

RUNS = []


def nightly():
    RUNS.append('nightly')


def told(slot):
    RUNS.append(slot)


def queue_of(app):
    return app.app_globals.asyncjob_queue


# -- declarations and start-up errors --------------------------------------------------


def test_the_decorator_is_exported_and_checks_at_once():
    assert tgext.asyncjob.asyncjob_periodic is asyncjob_periodic
    with pytest.raises(ValueError, match="'bad'.*not a valid cron"):
        asyncjob_periodic('61 * * * *', name='bad')
    with pytest.raises(ValueError, match='importable module-level'):
        asyncjob_periodic('* * * * *')(lambda: None)


def test_three_declaration_forms_are_collected(monkeypatch):
    monkeypatch.setattr(periodic, 'DECLARED', {})
    asyncjob_periodic('*/5 * * * *')(nightly)
    found = periodic.collect(
        {'asyncjob.periodic.ini_one': '0 3 * * * test_periodic:told'},
        [('0 4 * * *', 'test_periodic:told')])
    assert [(s.name, s.cron, s.func) for s in found] == [
        ('ini_one', '0 3 * * *', told),
        ('test_periodic:nightly', '*/5 * * * *', nightly),
        ('test_periodic:told', '0 4 * * *', told)]


@pytest.mark.parametrize('entry, message', [
    ('0 3 * * test_periodic:told', "'nightly'.*not a valid cron"),
    ('0 3 * * * test_periodic:missing', "'nightly'.*cannot import 'test_periodic:missing'"),
    ('0 3 * * * no_such_module:job', "'nightly'.*cannot import"),
    ('test_periodic:told', "'nightly'.*expected"),
])
def test_bad_ini_schedules_fail_the_app_start_naming_the_schedule(make_app, sqlite_db_url,
                                                                 entry, message):
    with pytest.raises(ValueError, match=message):
        make_app(sqlite_db_url, extra_config={'asyncjob.periodic.nightly': entry})


def test_bad_plugged_schedule_fails_at_start(make_app, sqlite_db_url):
    with pytest.raises(ValueError, match="'test_periodic:told'.*not a valid cron"):
        make_app(sqlite_db_url, plug_options={'periodic': [('* *', 'test_periodic:told')]})


def test_time_zone_setting_is_checked_and_used():
    with pytest.raises(ValueError, match='asyncjob.periodic_tz'):
        settings.BY_NAME['periodic_tz'].coerce('Mars/Olympus')
    rome = settings.BY_NAME['periodic_tz'].coerce('Europe/Rome')
    schedule = periodic.Schedule('n', '0 3 * * *', nightly, 'x')
    # 2026-01-10 00:00 UTC: the next 03:00 in Rome is 02:00 UTC.
    assert schedule.next_after(1768003200.0, rome) == 1768003200.0 + 2 * 3600


def test_blocked_commands():
    assert periodic.blocked_command(['/venv/bin/gearbox', 'setup-app', '-c', 'x.ini']) == \
        'gearbox setup-app'
    assert periodic.blocked_command(['/venv/bin/gearbox', '-v', 'tgshell']) == 'gearbox tgshell'
    assert periodic.blocked_command(['/venv/bin/gearbox', 'serve', '-c', 'x.ini']) is None
    assert periodic.blocked_command(['python', '-m', 'pytest']) is None


# -- claims and catch-up (a real queue and Redis; the clock given to tick) -----------


def _runner(queue, cron='* * * * *', catchup=3600, claims=None):
    schedule = periodic.Schedule('catchup', cron, told, 'test_periodic:told')
    return periodic.PeriodicRunner(
        queue, [schedule], claims or periodic.claims_for(queue, int(catchup) + 3600),
        settings.BY_NAME['periodic_tz'].default, catchup)


def _ran(queue, count):
    wait_for(lambda: len(RUNS) >= count, timeout=30, message=lambda: 'runs: %r' % RUNS)
    wait_for(lambda: all(s.finished for s in queue.recent(100)), timeout=30)


@pytest.fixture
def redis_queue(started, redis_url, redis_client):
    RUNS.clear()
    return started(redis_url)


def test_a_missed_slot_runs_once_after_downtime_not_once_per_slot(redis_queue):
    q = redis_queue
    assert isinstance(periodic.claims_for(q, 60), periodic.RedisClaims)
    slot = 1768003200.0  # a whole minute
    first = _runner(q)
    assert first.tick(slot + 10)  # started 10 s after a slot: it is caught up
    _ran(q, 1)
    assert RUNS == [int(slot)]
    # Down for 5 minutes: 5 slots missed; the restarted process runs the latest once.
    again = _runner(q)
    assert again.tick(slot + 5 * 60 + 30)
    _ran(q, 2)
    # A third process starting within the same minute finds that slot claimed.
    assert _runner(q).tick(slot + 5 * 60 + 40)
    assert again.tick(slot + 6 * 60)  # the next slot, once
    _ran(q, 3)
    assert RUNS == [int(slot), int(slot) + 300, int(slot) + 360]
    assert [s.state.value for s in q.recent(10)] == ['succeeded'] * 3


def test_no_catch_up_outside_the_window_or_with_process_claims(redis_queue):
    q = redis_queue
    slot = 1768003200.0
    assert _runner(q, catchup=5).tick(slot + 10)
    assert _runner(q, claims=periodic.ProcessClaims()).tick(slot + 10)
    assert _runner(q, catchup=0).tick(slot + 10)
    assert q.recent(10) == [] and RUNS == []


def test_a_run_is_an_ordinary_job_with_a_record(redis_queue):
    q = redis_queue
    runner = _runner(q, catchup=0)
    assert runner.tick(1768003200.0 - 1)
    assert runner.tick(1768003200.0)
    _ran(q, 1)
    (status,) = q.recent(10)
    assert status.state.value == 'succeeded'
    assert 'told' in status.name


# -- real processes --------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path, redis_url):
    key = 'periodic:runs:%s' % os.urandom(4).hex()
    p = Processes(tmp_path, env={'PERIODIC_REDIS': redis_url, 'PERIODIC_KEY': key})
    p.key = key
    yield p
    p.close()


def _start(procs, *args):
    proc = procs.start(args[0], ['python', os.path.join(os.path.dirname(__file__),
                                                        'periodicproc.py'), *args])
    proc.wait_output('READY')
    line = [w for w in proc.output().splitlines() if w.startswith('READY')][0]
    proc.ready_at = float(line.split()[2])
    return proc


def _runs(redis_client, key):
    return [tuple(map(int, r.split())) for r in redis_client.lrange(key, 0, -1)]


def _per_slot(runs, slots):
    return {slot: sorted(pid for s, pid in runs if s == slot) for slot in slots}


@pytest.mark.parametrize('mode, db', [('redis', None), ('sqlalchemy', 'sqlite_db_url'),
                                      ('sqlalchemy', 'postgres_db_url'), ('rq', None)])
def test_two_processes_run_each_slot_exactly_once(procs, redis_client, mode, db, request):
    if db is not None:  # one database for both processes: the app's and the backend's
        procs.env['PERIODIC_DB'] = request.getfixturevalue(db)
    a = _start(procs, mode)
    b = _start(procs, mode)
    if mode == 'rq':  # runs the jobs, and claims slots too: its app has the schedule
        procs.worker('--app', 'periodicproc:rq_app')
    first = int(max(a.ready_at, b.ready_at)) + 2  # both processes are running by then
    slots = [first, first + 1, first + 2]
    wait_for(lambda: max([s for s, _ in _runs(redis_client, procs.key)] or [0]) >= first + 5,
             timeout=60, message=lambda: '%s\n%s' % (a.tail(), b.tail()))
    runs = _runs(redis_client, procs.key)
    assert [len(pids) for pids in _per_slot(runs, slots).values()] == [1, 1, 1], runs
    assert len([s for s, _ in runs]) == len({s for s, _ in runs}), runs  # never twice


def test_memory_tracker_runs_each_slot_once_per_process(procs, redis_client):
    a = _start(procs, 'memory')
    b = _start(procs, 'memory')
    first = int(max(a.ready_at, b.ready_at)) + 2
    slots = [first, first + 1, first + 2]
    wait_for(lambda: all(len(p) >= 2 for p in _per_slot(_runs(redis_client, procs.key),
                                                          slots).values()),
             timeout=60, message=lambda: '%s\n%s' % (a.tail(), b.tail()))
    assert _per_slot(_runs(redis_client, procs.key), slots) == {
        slot: sorted([a.pid, b.pid]) for slot in slots}


def test_an_app_started_with_start_async_worker_fires_its_schedules(procs, redis_client):
    proc = _start(procs, 'globals')
    wait_for(lambda: len({s for s, p in _runs(redis_client, procs.key) if p == proc.pid}) >= 2,
             timeout=60, message=proc.tail)


def test_a_forked_child_fires_as_its_parent_did(procs, redis_client):
    # gunicorn --preload: the app (and its periodic thread) is built before fork();
    # threads do not survive fork, so the child must start its own.
    parent = _start(procs, 'fork')
    parent.wait_output('CHILD')
    child = int(parent.output().split('CHILD ')[1].split()[0])
    wait_for(lambda: len({s for s, p in _runs(redis_client, procs.key) if p == child}) >= 2,
             timeout=60, message=lambda: '%r\n%s' % (_runs(redis_client, procs.key),
                                                     parent.tail()))


def test_never_fires_in_setup_app_tgshell_or_disabled(procs, redis_client):
    blocked = [_start(procs, 'memory', 'setup-app'), _start(procs, 'memory', 'tgshell'),
               _start(procs, 'disabled')]
    control = _start(procs, 'memory')
    first = int(control.ready_at) + 1
    wait_for(lambda: len([s for s, p in _runs(redis_client, procs.key)
                          if p == control.pid and s >= first]) >= 3,
             timeout=60, message=control.tail)
    assert {p for _, p in _runs(redis_client, procs.key)} == {control.pid}
    assert 'never fire in gearbox setup-app' in blocked[0].output()
    assert 'never fire in gearbox tgshell' in blocked[1].output()
    assert all(p.alive() for p in blocked)


# -- the database claim: one row per (schedule, slot) ----------------------------------


@pytest.mark.parametrize('db', ['sqlite_db_url', 'postgres_db_url'])
def test_sql_claims_let_one_of_many_concurrent_claimers_win(db, request):
    import threading

    from tgext.asyncjob.backends.sqlalchemy.engine import make_engines
    from tgext.asyncjob.backends.sqlalchemy.periodic import SQLClaims, periodic_slots
    from tgext.asyncjob.backends.sqlalchemy.schema import create_tables
    engines = make_engines(request.getfixturevalue(db))
    try:
        create_tables(engines.write)  # the slot table is on the backend's metadata
        claims = SQLClaims(engines, keep=60)
        barrier, won = threading.Barrier(8), []

        def claimer():
            barrier.wait()
            won.append(claims.claim('nightly', 1000))

        threads = [threading.Thread(target=claimer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(won) == [False] * 7 + [True]
        assert claims.claim('other', 1000) and claims.claim('nightly', 1001)
        assert claims.claim('nightly', 1100)  # prunes rows older than keep
        with engines.read.connect() as conn:
            rows = conn.execute(periodic_slots.select().order_by('name', 'slot')).all()
        assert [(r.name, r.slot) for r in rows] == [('nightly', 1100), ('other', 1000)]
    finally:
        engines.dispose()
