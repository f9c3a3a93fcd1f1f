"""The sqlalchemy backend's path per job: how the database finds a job's row, how a
worker claims (ahead, for short jobs only) and how a job's end is written (behind,
in batches; not at all when the job's own transaction recorded it)."""
import threading
import time
import uuid

import sqlalchemy
import transaction

from tgext.asyncjob import JobState
from tgext.asyncjob.backends.sqlalchemy import claims, schema, transitions
from tgext.asyncjob.backends.sqlalchemy.runner import MAX_AHEAD, Runner

from services import wait_for
from test_sqlalchemy_backend import (WAIT, add_row, job_rows, noop, queue_of, row_names,
                                     sql_app)
from test_sqlalchemy_backend import mariadb_url, url  # noqa: F401 (fixtures)


def _rows(n, state, worker_id=None):
    now = time.time()
    return [{'id': uuid.uuid4().hex, 'queue': 'default', 'func': 'm:f', 'name': 'f',
             'args': '[]', 'kwargs': '{}', 'state': state, 'priority': 0,
             'run_at': now - 1, 'enqueued_at': now - 1, 'attempt': 1 if worker_id else 0,
             'worker_id': worker_id, 'cancel_requested': False} for _ in range(n)]


def _plan(conn, statement, params):
    compiled = statement.compile(dialect=conn.dialect)
    return '\n'.join(r[0] for r in conn.exec_driver_sql(
        'EXPLAIN ' + str(compiled), compiled.construct_params(params)))


def test_job_updates_find_their_row_by_primary_key_on_a_new_table(postgres_db_url):
    # A table created minutes ago has no statistics: PostgreSQL then planned a job's
    # compare-and-set (id = ... AND state = 'running' AND ...) on an index led by
    # ``state``, walking every row that ever ran, and the claim's UPDATE walked every
    # queued row: a worker slowed down with every job it ran.
    engine = sqlalchemy.create_engine(postgres_db_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        schema.create_tables(engine)
        running = _rows(2000, 'running', worker_id='w')
        with engine.begin() as conn:
            conn.execute(schema.jobs.insert(), running + _rows(2000, 'queued'))
        finish, params = transitions.of_run(running[7]['id'], 'w', 1,
                                            {'state': 'succeeded', 'finished_at': 1.0})
        claim = claims._claim_returning(('default',))
        with engine.begin() as conn:
            finish_plan = _plan(conn, finish, params)
            claim_plan = _plan(conn, claim, {'claim_now': time.time(), 'claim_limit': 4,
                                             'claim_worker': 'w2'})
        print(finish_plan, claim_plan, sep='\n\n')
        assert 'asyncjob_jobs_pkey' in finish_plan
        assert 'ix_asyncjob_jobs_state' not in finish_plan
        # The claim: the index picks the due rows, the primary key finds each of them.
        outer = claim_plan.split('CTE due')[0] + claim_plan.split('CTE Scan on due')[-1]
        assert 'asyncjob_jobs_pkey' in claim_plan and 'ix_asyncjob_jobs_claim' not in outer
    finally:
        engine.dispose()


# ------------------------------------------------------------------ claiming ahead


def _runner(execute, threads=2):
    """A runner over ``rows`` jobs (ids 0..), recording every claim's limit."""
    limits, lock = [], threading.Lock()
    state = {'next': 0, 'rows': 0}

    def claim(limit):
        with lock:
            limits.append(limit)
            start = state['next']
            stop = min(state['rows'], start + limit)
            state['next'] = stop
        return [{'id': str(i)} for i in range(start, stop)]
    runner = Runner(claim, execute, lambda: None, threading.Event(), threads=threads,
                    poll_interval=0.05, burst=True)
    return runner, limits, state


def test_short_jobs_are_claimed_ahead_with_a_bound():
    done = []
    runner, limits, state = _runner(lambda row: done.append(row['id']))
    state['rows'] = 2000
    runner.run()
    assert len(done) == 2000 and len(set(done)) == 2000
    assert max(limits) > runner.threads  # ahead: more than the free threads
    assert max(limits) <= runner.threads * (1 + MAX_AHEAD)


def test_long_jobs_are_never_claimed_ahead():
    # A job claimed ahead would wait behind a long one while its row says running.
    release, started = threading.Event(), []

    def slow(row):
        started.append(row['id'])
        release.wait(0.05)  # "long": above PREFETCH_BELOW
    runner, limits, state = _runner(slow)
    state['rows'] = 12
    runner.run()
    assert len(started) == 12
    assert max(limits) <= runner.threads


# ------------------------------------------------------------ ends written behind


def _count_updates(engines):
    seen = []

    def count(conn, cursor, statement, params, context, executemany):
        if statement.startswith('UPDATE asyncjob_jobs SET'):
            seen.append((statement, len(params) if executemany else 1))
    for engine in {id(e): e for e in (engines.write, engines.auto)}.values():
        sqlalchemy.event.listen(engine, 'before_cursor_execute', count)
    return seen


def test_a_job_recorded_in_its_own_transaction_is_not_written_again(make_app, url):
    app = sql_app(make_app, url, in_process='false')
    q = queue_of(app)
    with transaction.manager:
        jobid = q.perform(add_row, ('once',))
    updates = _count_updates(q.backend.engines)
    q.backend.work(threads=1, burst=True)
    assert row_names(app) == ['once']
    [row] = job_rows(url, id=jobid)
    assert row['state'] == 'succeeded'
    # The claim, and nothing after it: 'succeeded' went in with the job's own row.
    assert [s for s, _ in updates if 'finished_at' in s.split('WHERE')[0]] == []


def test_ends_of_short_jobs_share_writes_and_are_all_written_at_stop(make_app, url):
    app = sql_app(make_app, url, in_process='false')
    q = queue_of(app)
    with transaction.manager:
        ids = [q.perform(noop, (i,)) for i in range(60)]
    updates = _count_updates(q.backend.engines)
    q.backend.work(threads=3, burst=True)
    # work() returned: every end is in the table already, none waits in memory.
    rows = {r['id']: r['state'] for r in job_rows(url)}
    assert {rows[i] for i in ids} == {'succeeded'}
    finals = [n for s, n in updates if 'finished_at' in s.split('WHERE')[0]]
    assert sum(finals) == 60 and len(finals) < 60


def test_a_job_that_ended_here_is_not_flagged_as_running_by_a_cancel(make_app,
                                                                     sqlite_db_url):
    # Its end may still wait to be written when the cancel comes: the cancel writes it
    # first, rather than flagging a row that still says running.
    ended = threading.Event()

    class Hook:
        def on_succeeded(self, job, result):
            ended.set()
    app = sql_app(make_app, sqlite_db_url)
    q = queue_of(app)
    q.hooks.add(Hook())
    jobid = q.perform(noop, (1,))
    assert ended.wait(WAIT), 'the job never ended'
    assert q.cancel(jobid) is False
    assert q.get_status(jobid).state is JobState.SUCCEEDED
    assert not job_rows(sqlite_db_url, id=jobid)[0]['cancel_requested']


def test_jobs_claimed_ahead_are_handed_back_unrun_at_stop():
    # They wait in this process with rows that say running: a stop must not leave
    # them to run after it returned, nor to a rescue as if this worker had died.
    release, started, unclaimed = threading.Event(), [], []

    def execute(row):
        started.append(row['id'])
        release.wait(WAIT)
    rows = [[{'id': 'a'}, {'id': 'b'}, {'id': 'c'}]]
    runner = Runner(lambda limit: rows.pop() if rows else [], execute, lambda: None,
                    threading.Event(), threads=1, poll_interval=0.05,
                    unclaim=unclaimed.extend)
    runner.start()
    wait_for(lambda: started, timeout=WAIT, message='the first job never started')
    stopper = threading.Thread(target=runner.stop, args=(WAIT,))
    stopper.start()
    wait_for(lambda: unclaimed, timeout=WAIT, message='nothing was handed back')
    release.set()
    stopper.join(WAIT)
    assert started == ['a'] and unclaimed == [{'id': 'b'}, {'id': 'c'}]
