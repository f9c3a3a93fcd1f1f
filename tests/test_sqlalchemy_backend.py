"""The ``sqlalchemy`` backend in real TurboGears applications (WebTest), on a SQLite
file, the real PostgreSQL (a schema per test) and the local MariaDB (a database per
test): issue 12's behaviours, each against every database."""

import threading
import time
import uuid

import pytest
import sqlalchemy
import transaction
from tg import expose

from tgext.asyncjob import (JobState, asyncjob_cancel, asyncjob_cancelled, asyncjob_options,
                            asyncjob_perform, asyncjob_set_progress, Retry)
from tgext.asyncjob.backends.sqlalchemy import JobNotStored, SQLAlchemyBackend, schema

from sampleapp import model
from sampleapp.controllers.root import RootController, db_session
from services import mariadb_server_url, wait_for

MARIADB_URL = mariadb_server_url()
WAIT = 30

# ----------------------------------------------------------------- databases


def _mariadb_admin():
    engine = sqlalchemy.create_engine(MARIADB_URL, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={'connect_timeout': 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql('SELECT 1')
    except Exception as exc:
        pytest.fail(f'MariaDB is not reachable at {MARIADB_URL} (set ASYNCJOB_TEST_MARIADB_URL): '
                    f'{exc}',
                    pytrace=False)
    return engine


@pytest.fixture
def mariadb_url(_apps):
    """A fresh MariaDB database, dropped after the test."""
    admin = _mariadb_admin()
    name = 'test_sqlbackend_%s' % uuid.uuid4().hex[:12]
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE {name} CHARACTER SET utf8mb4')
    try:
        yield f'{MARIADB_URL}{name}?charset=utf8mb4'
    finally:
        try:
            _apps.close_all()
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'DROP DATABASE {name}')
            admin.dispose()


@pytest.fixture(params=['sqlite', 'postgresql', 'mariadb'])
def url(request):
    """A clean database of each kind."""
    fixture = {'sqlite': 'sqlite_db_url', 'postgresql': 'postgres_db_url',
               'mariadb': 'mariadb_url'}[request.param]
    return request.getfixturevalue(fixture)


# ------------------------------------------------------------------ jobs (importable)

GATES = {}


def add_row(name, value=None):
    db_session().add(model.Row(name=name, value=value))
    return name


def add_row_then_fail(name):
    add_row(name)
    db_session().flush()
    raise RuntimeError('rolled back')


def noop(*args, **kwargs):
    return {'args': list(args), 'kwargs': kwargs}


def gated(name):
    """Signals it started, waits for the test to release it."""
    gate = GATES[name]
    gate['entered'].set()
    if not gate['released'].wait(WAIT):
        raise AssertionError('gate never released')
    return name


def wait_cancelled(name):
    gate = GATES[name]
    gate['entered'].set()
    wait_for(asyncjob_cancelled, timeout=WAIT, message='never saw the cancel flag')
    return 'saw the flag'


def many_progress(n):
    for i in range(n):
        asyncjob_set_progress(i, {'i': i})
    return n


def new_gate(name):
    GATES[name] = {'entered': threading.Event(), 'released': threading.Event()}
    return GATES[name]


class JobsController(RootController):
    @expose('json')
    def start(self, name='r', fail=''):
        return dict(jobid=asyncjob_perform(add_row, name))

    @expose('json')
    def start_then_abort(self, name='r'):
        asyncjob_perform(add_row, name)
        raise RuntimeError('the request fails after queueing')

    @expose('json')
    def start_delayed(self, name='r', delay='3600'):
        return dict(jobid=asyncjob_options(delay=float(delay)).perform(add_row, name))


# ----------------------------------------------------------------- helpers


def sql_app(make_app, db_url, **settings):
    """A sample app whose queue uses the sqlalchemy backend, with ``settings`` as
    ``asyncjob.backend.*`` keys."""
    config = {'asyncjob.backend': 'sqlalchemy', 'asyncjob.workers': '2'}
    config.update({f'asyncjob.backend.{k}': v for k, v in settings.items()})
    return make_app(db_url, root=JobsController, extra_config=config)


def queue_of(app):
    return app.app_globals.asyncjob_queue


def row_names(app):
    return sorted(r['name'] for r in app.get('/rows').json['rows'])


def job_rows(url, **where):
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sqlalchemy.select(schema.jobs)
            for name, value in where.items():
                query = query.where(schema.jobs.c[name] == value)
            return [dict(r._mapping) for r in conn.execute(query)]
    finally:
        engine.dispose()


def wait_state(q, jobid, state, timeout=WAIT):
    return wait_for(lambda: q.get_status(jobid).state is state and q.get_status(jobid),
                    timeout=timeout,
                    message=lambda: f'{jobid} is {q.get_status(jobid)}, not {state}')


# ------------------------------------------------------------------- 1. enqueue


def test_a_committed_request_has_its_job_without_any_orm_change(make_app, url):
    app = sql_app(make_app, url, in_process='false')
    jobid = app.get('/start', params={'name': 'committed'}).json['jobid']
    [row] = job_rows(url, id=jobid)
    assert row['state'] == 'queued' and row['func'].endswith(':add_row')
    assert queue_of(app).get_status(jobid).state is JobState.QUEUED
    queue_of(app).backend.work(threads=1, burst=True)
    assert queue_of(app).get_status(jobid).state is JobState.SUCCEEDED
    assert row_names(app) == ['committed']


def test_an_aborted_request_leaves_no_job(make_app, url):
    app = sql_app(make_app, url, in_process='false')
    with pytest.raises(RuntimeError, match='fails after queueing'):
        app.get('/start_then_abort', params={'name': 'aborted'})
    assert job_rows(url) == []


def test_outside_a_transaction_the_insert_commits_alone(make_app, url):
    app = sql_app(make_app, url)
    jobid = queue_of(app).perform(noop, (1, 'a'), {'k': [1]})
    status = queue_of(app).wait(jobid, WAIT)
    assert status.state is JobState.SUCCEEDED
    assert status.result == {'args': [1, 'a'], 'kwargs': {'k': [1]}}


def test_inside_a_script_transaction_the_job_commits_with_it(make_app, url):
    app = sql_app(make_app, url, in_process='false')
    q = queue_of(app)
    with transaction.manager:
        kept = q.perform(add_row, ('kept',))
    try:
        with transaction.manager:
            q.perform(add_row, ('dropped',))
            raise KeyError('abort')
    except KeyError:
        pass
    assert [r['id'] for r in job_rows(url)] == [kept]


@pytest.mark.parametrize('args', [(object(),), ({1: 2},), (float('nan'),), ({'s': {1}},)])
def test_non_json_arguments_raise_type_error_at_the_call_site(make_app, sqlite_db_url, args):
    app = sql_app(make_app, sqlite_db_url)
    with pytest.raises(TypeError, match='JSON'):
        queue_of(app).perform(noop, args)
    assert job_rows(sqlite_db_url) == []


def test_callables_must_be_importable_by_name(make_app, sqlite_db_url):
    app = sql_app(make_app, sqlite_db_url)
    with pytest.raises(TypeError, match='imported by name'):
        queue_of(app).perform(lambda: None)
    assert job_rows(sqlite_db_url) == []


# ---------------------------------------------------------------- 3. claiming


@pytest.fixture
def other_process():
    """``other_process(url, **options)``: a second backend on the same database, with
    its own engines and worker id: what another process would be (separate
    connections, locks and notifications). Stopped after the test (request this
    fixture after the database's, so it is stopped before the database goes)."""
    from types import SimpleNamespace
    from tgext.asyncjob import JobQueue
    made = []

    def factory(url, **options):
        q = JobQueue(backend='sqlalchemy', backend_options={'url': url, **options},
                     workers=2)
        made.append(q)
        return SimpleNamespace(queue=q, backend=q.backend)
    yield factory
    for q in made:
        q.stop(10)
        q.backend.engines.dispose()


def test_claims_never_hand_a_job_to_two_workers(make_app, url, other_process):
    app = sql_app(make_app, url, in_process='false')
    q = queue_of(app)
    ids = [q.perform(noop, (i,)) for i in range(60)]
    workers = [other_process(url) for _ in range(3)]
    threads = [threading.Thread(target=w.backend.work, kwargs={'threads': 3, 'burst': True})
               for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    rows = job_rows(url)
    assert sorted(r['id'] for r in rows) == sorted(ids)
    assert {r['state'] for r in rows} == {'succeeded'}
    assert {r['attempt'] for r in rows} == {1}  # each claimed exactly once
    assert len({r['worker_id'] for r in rows}) >= 1


def test_the_enqueuing_process_wakes_its_own_workers_at_commit(make_app, url):
    # A poll interval of an hour: the job can only start this soon if it is woken.
    app = sql_app(make_app, url, poll_interval='3600')
    jobid = app.get('/start', params={'name': 'woken'}).json['jobid']
    wait_state(queue_of(app), jobid, JobState.SUCCEEDED)
    assert row_names(app) == ['woken']


def test_postgresql_workers_are_woken_by_notify(make_app, postgres_db_url, other_process):
    app = sql_app(make_app, postgres_db_url, in_process='false')
    worker = other_process(postgres_db_url, poll_interval='3600')
    thread = threading.Thread(target=worker.backend.work, kwargs={'threads': 1})
    thread.start()
    try:
        wait_for(lambda: worker.backend._listener and worker.backend._listener.connected.is_set(),
                 timeout=WAIT, message='the worker never LISTENed')
        jobid = app.get('/start', params={'name': 'notified'}).json['jobid']
        wait_state(queue_of(app), jobid, JobState.SUCCEEDED)
    finally:
        worker.queue.stop(10)
        thread.join(WAIT)
    assert row_names(app) == ['notified']


def test_explain_of_the_claim_query_uses_the_claim_index(postgres_db_url):
    from tgext.asyncjob.backends.sqlalchemy.claims import due_jobs
    engine = sqlalchemy.create_engine(postgres_db_url, poolclass=sqlalchemy.pool.NullPool)
    schema.create_tables(engine)
    query = due_jobs(['default'], time.time(), 4)
    sql = str(query.compile(engine, compile_kwargs={'literal_binds': True}))
    with engine.begin() as conn:
        conn.exec_driver_sql('SET LOCAL enable_seqscan = off')
        plan = '\n'.join(r[0] for r in conn.exec_driver_sql('EXPLAIN ' + sql))
    engine.dispose()
    print(sql, plan, sep='\n')
    assert 'ix_asyncjob_jobs_claim' in plan and 'LockRows' in plan
    assert 'Sort' not in plan  # the index gives the order: no sort step


# ---------------------------------------------- 4. completion in the job's transaction


def test_success_commits_in_the_jobs_own_transaction(make_app, url):
    app = sql_app(make_app, url)
    seen = {}

    def spy(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith('UPDATE ASYNCJOB_JOBS') and "succeeded" in str(parameters):
            seen.setdefault('engine', conn.engine)
    sqlalchemy.event.listen(app.engine, 'before_cursor_execute', spy)
    jobid = app.get('/start', params={'name': 'together'}).json['jobid']
    wait_state(queue_of(app), jobid, JobState.SUCCEEDED)
    assert row_names(app) == ['together']
    assert seen.get('engine') is app.engine  # written by the job's session, in its transaction


def test_a_run_rescued_meanwhile_rolls_its_work_back(make_app, url):
    app = sql_app(make_app, url)
    q = queue_of(app)
    gate = new_gate('rescued')
    jobid = q.perform(gated_add_row, ('rescued',))
    assert gate['entered'].wait(WAIT)
    # What a rescuer does when this worker's lease expired: the job is queued again.
    set_row(url, jobid, state='queued', worker_id=None, run_at=time.time() + 3600)
    gate['released'].set()
    wait_for(lambda: q.backend.runs == {}, timeout=WAIT, message='the job never ended')
    assert row_names(app) == []  # its work was rolled back
    [row] = job_rows(url, id=jobid)
    assert row['state'] == 'queued'  # the rescuer's word stands


def gated_add_row(name):
    gated(name)  # before writing: SQLite would hold its write lock until the end
    add_row(name)
    db_session().flush()
    return name


# ---------------------------------------------------------------- 5. crash safety


def _orphan(url, func_path, attempt=1, retry=None, beat_age=3600):
    """A job left running by a worker that stopped heartbeating ``beat_age`` s ago."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    schema.create_tables(engine)
    now, jobid = time.time(), uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(sqlalchemy.insert(schema.workers).values(
            id='dead:1:x', hostname='dead', pid=1, started_at=now - beat_age,
            heartbeat_at=now - beat_age))
        conn.execute(sqlalchemy.insert(schema.jobs).values(
            id=jobid, queue='default', func=func_path, name=func_path, args='["orphan"]',
            kwargs='{}', retry=retry, state='running', priority=0, run_at=now - beat_age,
            enqueued_at=now - beat_age, started_at=now - beat_age, attempt=attempt,
            worker_id='dead:1:x', cancel_requested=False))
    engine.dispose()
    return jobid


def test_jobs_of_a_dead_worker_are_retried_when_their_policy_allows(make_app, url):
    from tgext.asyncjob.backends.sqlalchemy import codec
    jobid = _orphan(url, 'test_sqlalchemy_backend:add_row',
                    retry=codec.dump_retry(Retry(max_retries=2, backoff=0)))
    app = sql_app(make_app, url, rescue_interval='0.1')
    status = wait_state(queue_of(app), jobid, JobState.SUCCEEDED)
    assert status.attempt == 2  # the attempt that died counts
    assert row_names(app) == ['orphan']
    assert job_rows(url, id='dead:1:x') == []


def test_jobs_of_a_dead_worker_fail_with_worker_died_without_a_retry(make_app, url):
    jobid = _orphan(url, 'test_sqlalchemy_backend:add_row')
    app = sql_app(make_app, url, rescue_interval='0.1')
    status = wait_state(queue_of(app), jobid, JobState.FAILED)
    assert status.error.type == 'WorkerDied'
    assert row_names(app) == []


def test_a_live_worker_keeps_its_jobs(make_app, url, other_process):
    app = sql_app(make_app, url, rescue_interval='0.1', heartbeat_interval='0.1',
                  lease_timeout='5')
    gate = new_gate('alive')
    jobid = queue_of(app).perform(gated, ('alive',))
    assert gate['entered'].wait(WAIT)
    set_row(url, jobid, started_at=time.time() - 3600)  # a long job, a fresh heartbeat
    rescuer = other_process(url, rescue_interval='0.1', lease_timeout='5')
    assert rescuer.backend.rescue() == []
    assert queue_of(app).get_status(jobid).state is JobState.RUNNING
    gate['released'].set()
    wait_state(queue_of(app), jobid, JobState.SUCCEEDED)


# ---------------------------------------------------------------- 6. progress


def test_progress_is_coalesced_and_the_last_value_lands(make_app, url):
    app = sql_app(make_app, url)
    backend = queue_of(app).backend
    writes = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith('UPDATE ASYNCJOB_JOBS SET PROGRESS'):
            writes.append(1)
    sqlalchemy.event.listen(backend.engines.write, 'before_cursor_execute', count)
    jobid = queue_of(app).perform(many_progress, (10000,))
    status = wait_state(queue_of(app), jobid, JobState.SUCCEEDED)
    assert status.progress == 9999 and status.data == {'i': 9999}
    assert len(writes) < 1000  # coalesced: not one round trip per call


def progress_then_wait(name):
    asyncjob_set_progress(42, {'step': 'half'})
    return gated(name)


def test_progress_is_seen_by_every_process_while_the_job_runs(make_app, url, other_process):
    app = sql_app(make_app, url)
    gate = new_gate('progress')
    jobid = queue_of(app).perform(progress_then_wait, ('progress',))
    assert gate['entered'].wait(WAIT)
    elsewhere = other_process(url, in_process='false')
    wait_for(lambda: elsewhere.queue.get_progress(jobid) == (42, {'step': 'half'}),
             timeout=WAIT, message=lambda: str(elsewhere.queue.get_status(jobid)))
    assert [s.id for s in elsewhere.queue.recent()] == [jobid]
    gate['released'].set()
    wait_state(elsewhere.queue, jobid, JobState.SUCCEEDED)


# ---------------------------------------- 7. delays, retries, cancel (all rows)

FAILURES = {}


def fail_first(name):
    """Fails the first time it runs for ``name``, then adds its row."""
    if not FAILURES.get(name):
        FAILURES[name] = True
        raise ConnectionError('first attempt fails')
    return add_row(name)


def set_row(url, jobid, **values):
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.update(schema.jobs).where(schema.jobs.c.id == jobid)
                     .values(**values))
    engine.dispose()


def test_delayed_jobs_wait_as_rows_and_survive_a_restart(make_app, url, other_process):
    app = sql_app(make_app, url)
    jobid = app.get('/start_delayed', params={'name': 'later'}).json['jobid']
    [row] = job_rows(url, id=jobid)
    assert row['state'] == 'queued' and row['run_at'] > time.time() + 3000
    assert queue_of(app).get_status(jobid).state is JobState.QUEUED
    assert queue_of(app).stop(10) == []  # nothing lost: it waits in the database
    restarted = other_process(url)
    restarted.backend.start()
    set_row(url, jobid, run_at=time.time())  # the hour has passed
    restarted.backend.wake.set()
    wait_state(restarted.queue, jobid, JobState.SUCCEEDED)
    assert row_names(app) == ['later']


def test_retries_are_rows_with_a_run_at_and_survive_a_restart(make_app, url, other_process):
    app = sql_app(make_app, url)
    name = uuid.uuid4().hex
    jobid = queue_of(app).perform(fail_first, (name,), retry=Retry(backoff=3600, max_backoff=3600, jitter=False))
    wait_for(lambda: job_rows(url, id=jobid)[0]['attempt'] == 1
             and job_rows(url, id=jobid)[0]['state'] == 'queued', timeout=WAIT,
             message=lambda: str(job_rows(url, id=jobid)))
    [row] = job_rows(url, id=jobid)
    assert row['run_at'] > time.time() + 3000 and 'ConnectionError' in row['error']
    assert queue_of(app).stop(10) == []
    restarted = other_process(url)
    restarted.backend.start()
    set_row(url, jobid, run_at=time.time())
    restarted.backend.wake.set()
    status = wait_state(restarted.queue, jobid, JobState.SUCCEEDED)
    assert status.attempt == 2 and row_names(app) == [name]


def test_cancelling_a_queued_job_is_atomic_and_it_never_runs(make_app, url):
    app = sql_app(make_app, url, in_process='false')
    q = queue_of(app)
    jobid = q.perform(add_row, ('never',))
    assert q.cancel(jobid) is True
    assert q.cancel(jobid) is False  # already final
    q.backend.work(threads=1, burst=True)
    assert q.get_status(jobid).state is JobState.CANCELLED
    assert row_names(app) == []


def test_cancelling_a_running_job_from_another_process_sets_its_flag(make_app, url, other_process):
    app = sql_app(make_app, url)
    gate = new_gate('cancel-running')
    jobid = queue_of(app).perform(wait_cancelled, ('cancel-running',))
    assert gate['entered'].wait(WAIT)
    elsewhere = other_process(url, in_process='false')
    assert elsewhere.queue.cancel(jobid) is True
    status = wait_state(queue_of(app), jobid, JobState.SUCCEEDED)
    assert status.result == 'saw the flag'


# ---------------------------------------------------------------- 8. shutdown


def test_stop_lets_running_jobs_finish_and_leaves_queued_ones_in_the_database(make_app, url):
    app = sql_app(make_app, url)
    q = queue_of(app)
    gates = [new_gate(f'stop-{i}') for i in range(2)]
    running = [q.perform(gated, (f'stop-{i}',)) for i in range(2)]  # 2 workers: both run
    for gate in gates:
        assert gate['entered'].wait(WAIT)
    queued = [q.perform(add_row, (f'q{i}',)) for i in range(3)]
    outcome = []
    stopper = threading.Thread(target=lambda: outcome.append(q.stop(WAIT)))
    stopper.start()
    for gate in gates:
        gate['released'].set()
    stopper.join(WAIT + 5)
    assert outcome == [[]]  # nothing lost, so nothing reported
    assert {q.get_status(j).state for j in running} == {JobState.SUCCEEDED}
    assert {q.get_status(j).state for j in queued} == {JobState.QUEUED}


def test_a_job_still_running_at_the_stop_deadline_is_queued_again(make_app, url):
    app = sql_app(make_app, url)
    q = queue_of(app)
    gate = new_gate('deadline')
    jobid = q.perform(gated_add_row, ('deadline',))
    assert gate['entered'].wait(WAIT)
    assert q.stop(0.1) == []
    [row] = job_rows(url, id=jobid)
    assert row['state'] == 'queued' and 'Interrupted' in row['error']
    gate['released'].set()
    wait_for(lambda: not q.backend.runs, timeout=WAIT, message='the job never ended')
    assert job_rows(url, id=jobid)[0]['state'] == 'queued'  # it will run elsewhere
    assert row_names(app) == []  # and its work here was rolled back


# --------------------------------------------------------------- 9. retention


def _finished_rows(url, count, age):
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    schema.create_tables(engine)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(sqlalchemy.insert(schema.jobs), [dict(
            id=uuid.uuid4().hex, queue='default', func='m:f', name='m.f', args='[]',
            kwargs='{}', state='succeeded', priority=0, run_at=now - age,
            enqueued_at=now - age, finished_at=now - age, attempt=1,
            cancel_requested=False) for _ in range(count)])
    engine.dispose()


def test_finished_jobs_are_pruned_in_batches_by_one_process_at_a_time(url):
    from tgext.asyncjob.backends.sqlalchemy.engine import make_engines
    from tgext.asyncjob.backends.sqlalchemy.pruning import prune
    _finished_rows(url, 25, age=7200)
    _finished_rows(url, 3, age=10)
    engines = make_engines(url)
    batches = []
    sqlalchemy.event.listen(engines.auto, 'before_cursor_execute',
                            lambda c, cur, stmt, *a: stmt.startswith('DELETE') and batches.append(1))
    try:
        assert prune(engines, 'me', retention=3600, now=time.time(), batch=10) == 25
        assert len(batches) == 3
        assert prune(engines, 'someone else', retention=3600, now=time.time()) is None
        assert prune(engines, 'me', retention=3600, now=time.time()) == 0
    finally:
        engines.dispose()
    assert len(job_rows(url)) == 3


def test_a_running_backend_prunes_old_jobs(make_app, url):
    _finished_rows(url, 5, age=7200)
    app = sql_app(make_app, url, retention='3600', prune_interval='0.1')
    wait_for(lambda: job_rows(url) == [], timeout=WAIT, message='old jobs were not pruned')
    assert queue_of(app).backend.retention == 3600


# ------------------------------------------------------------------ 10. tables


def test_tables_are_created_when_missing_unless_told_not_to(make_app, url):
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    sql_app(make_app, url, create_tables='false', in_process='false')
    assert not sqlalchemy.inspect(engine).has_table('asyncjob_jobs')
    schema.create_tables(engine)  # what an alembic migration would do
    names = {i['name'] for i in sqlalchemy.inspect(engine).get_indexes('asyncjob_jobs')}
    assert 'ix_asyncjob_jobs_claim' in names
    engine.dispose()


def test_the_tables_are_on_a_metadata_of_their_own():
    from tgext.asyncjob.backends.sqlalchemy import metadata
    assert set(metadata.tables) == {'asyncjob_jobs', 'asyncjob_workers', 'asyncjob_leases',
                                    'asyncjob_periodic', 'asyncjob_unique_keys',
                                    'asyncjob_concurrency_keys'}
    assert not (set(metadata.tables) & set(model.metadata.tables))


# ----------------------------------------------------------- 11. database down


def test_perform_raises_a_clear_error_when_the_database_is_unreachable(make_app, sqlite_db_url):
    app = sql_app(make_app, sqlite_db_url,
                  url='postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2',
                  create_tables='false', in_process='false')
    with pytest.raises(JobNotStored, match='could not be stored in the database'):
        queue_of(app).perform(noop)


class AddsMeta:
    """A hook adding meta when the job is queued, as the OpenTelemetry hook does."""

    def on_enqueued(self, job):
        job.meta['added'] = job.id


@pytest.mark.parametrize('mode', ['due', 'delayed', 'immediate'])
def test_meta_an_on_enqueued_hook_adds_is_stored_in_the_row(sqlite_db_url, mode):
    import json
    from tgext.asyncjob import JobQueue
    q = JobQueue(backend='sqlalchemy', immediate=mode == 'immediate', hooks=[AddsMeta()],
                 backend_options={'url': sqlite_db_url, 'in_process': False})
    try:
        jobid = q.perform(noop, delay=3600 if mode == 'delayed' else None)
        [row] = job_rows(sqlite_db_url, id=jobid)
    finally:
        q.stop(WAIT)
        q.backend.engines.dispose()
    assert json.loads(row['meta']) == {'added': jobid}
    assert row['state'] == ('succeeded' if mode == 'immediate' else 'queued')


def test_immediate_mode_runs_the_job_at_once_and_records_it_in_the_table(make_app, url):
    app = make_app(url, root=JobsController, extra_config={
        'asyncjob.backend': 'sqlalchemy', 'asyncjob.immediate': 'true'})
    jobid = app.get('/start', params={'name': 'now'}).json['jobid']
    [row] = job_rows(url, id=jobid)
    assert row['state'] == 'succeeded' and row['attempt'] == 1
    assert row_names(app) == ['now']


class Proxy:
    """A TCP forwarder to the real PostgreSQL that a test can cut and restore: the
    database "goes away" for this backend only."""

    def __init__(self, target=('127.0.0.1', 5432)):
        import socket
        self.target = target
        self.port = None
        self._socket = socket
        self._conns = []
        self._listener = None
        self.restore()

    def restore(self):
        sock = self._socket.socket()
        sock.setsockopt(self._socket.SOL_SOCKET, self._socket.SO_REUSEADDR, 1)
        sock.bind(('127.0.0.1', self.port or 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock):
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            upstream = self._socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def cut(self):
        try:  # wakes the thread blocked in accept() (close() alone would not)
            self._listener.shutdown(self._socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in self._conns:
            try:
                conn.shutdown(self._socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self._conns = []

    def url(self, db_url):
        return sqlalchemy.engine.make_url(db_url).set(host='127.0.0.1', port=self.port) \
            .render_as_string(hide_password=False)


def test_workers_wait_while_the_database_is_down_and_resume(postgres_db_url, caplog, other_process):
    proxy = Proxy()
    worker = other_process(proxy.url(postgres_db_url), poll_interval='0.2')
    worker.backend.start()
    q = worker.queue
    first = q.perform(noop, ('before',))
    wait_state(q, first, JobState.SUCCEEDED)
    due = time.time() + 1
    delayed = q.perform(noop, ('due during the outage',), at=due)
    proxy.cut()
    with pytest.raises(JobNotStored, match='could not be stored'):
        q.perform(noop, ('during',))
    wait_for(lambda: time.time() > due + 0.5 and 'cannot claim jobs' in caplog.text,
             timeout=WAIT, message='the workers did not notice the outage')
    proxy.restore()
    wait_state(q, delayed, JobState.SUCCEEDED)  # nothing lost: it ran once back
    after = q.perform(noop, ('after',))
    wait_state(q, after, JobState.SUCCEEDED)


def test_after_fork_the_child_gets_new_connections(postgres_db_url, other_process):
    import os
    worker = other_process(postgres_db_url, in_process='false')
    engine = worker.backend.engines.read

    def backend_pid():
        with engine.connect() as conn:
            return conn.exec_driver_sql('SELECT pg_backend_pid()').scalar()
    parent = backend_pid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write_end, str(backend_pid()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child = int(os.read(read_end, 64) or b'0')
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child and child != parent
    assert backend_pid() == parent  # the parent's pooled connection is untouched


CHILD = '''
import sys
sys.path.insert(0, {tests!r})
from tgext.asyncjob import JobQueue
q = JobQueue(backend='sqlalchemy', backend_options={{'url': {url!r}}})
q.backend.work(threads=2, burst=True)
'''


def test_several_processes_on_one_sqlite_file_never_run_a_job_twice(make_app, sqlite_db_url):
    import os
    import subprocess
    import sys
    app = sql_app(make_app, sqlite_db_url, in_process='false')
    ids = [queue_of(app).perform(noop, (i,)) for i in range(200)]
    script = CHILD.format(tests=os.path.dirname(__file__), url=sqlite_db_url)
    children = [subprocess.Popen([sys.executable, '-c', script]) for _ in range(3)]
    for child in children:
        assert child.wait(120) == 0
    rows = job_rows(sqlite_db_url)
    assert sorted(r['id'] for r in rows) == sorted(ids)
    assert {(r['state'], r['attempt']) for r in rows} == {('succeeded', 1)}


def test_work_returns_once_stop_has_handed_back_a_job_that_ignores_it(make_app, url):
    app = sql_app(make_app, url, in_process='false')
    q = queue_of(app)
    gate = new_gate('ignores-stop')
    jobid = q.perform(gated, ('ignores-stop',))
    worker = threading.Thread(target=q.backend.work, kwargs={'threads': 1})
    worker.start()
    assert gate['entered'].wait(WAIT)
    assert q.stop(0.1) == []
    worker.join(WAIT / 3)  # well before the job's gate gives up (WAIT)
    assert not worker.is_alive()  # the job still runs; its row is back in the queue
    assert job_rows(url, id=jobid)[0]['state'] == 'queued'
    gate['released'].set()


def test_jobs_can_be_queued_while_workers_claim(make_app, url, other_process):
    # MariaDB at REPEATABLE READ: the claim's FOR UPDATE locked index gaps and these
    # INSERTs deadlocked with it.
    app = sql_app(make_app, url, in_process='false')
    workers = [other_process(url, poll_interval='0.05') for _ in range(2)]
    for worker in workers:
        worker.backend.start()
    errors, ids = [], []

    def queue_many():
        try:
            for i in range(100):
                ids.append(queue_of(app).perform(noop, (i,)))
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=queue_many) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert errors == []
    wait_for(lambda: {r['state'] for r in job_rows(url)} == {'succeeded'}, timeout=WAIT * 2,
             message=lambda: str({r['state'] for r in job_rows(url)}))
    assert len(job_rows(url)) == 300


def test_with_jobs_in_another_database_the_job_is_inserted_after_the_commit(
        make_app, sqlite_db_url, tmp_path):
    jobs_url = 'sqlite:///%s' % (tmp_path / 'jobs.sqlite')
    app = sql_app(make_app, sqlite_db_url, url=jobs_url, in_process='false')
    with pytest.raises(RuntimeError, match='fails after queueing'):
        app.get('/start_then_abort', params={'name': 'aborted'})
    assert job_rows(jobs_url) == []
    jobid = app.get('/start', params={'name': 'committed'}).json['jobid']
    assert [r['id'] for r in job_rows(jobs_url)] == [jobid]
    queue_of(app).backend.work(threads=1, burst=True)
    assert queue_of(app).get_status(jobid).state is JobState.SUCCEEDED
    assert row_names(app) == ['committed']


def test_a_stopped_queue_holds_no_database_connection(make_app, postgres_db_url):
    app = sql_app(make_app, postgres_db_url)
    q = queue_of(app)
    wait_state(q, q.perform(noop), JobState.SUCCEEDED)
    q.stop(10)
    engines = {id(e): e for e in (q.backend.engines.write, q.backend.engines.read,
                                  q.backend.engines.auto)}.values()
    assert sum(e.pool.checkedin() + e.pool.checkedout() for e in engines) == 0
    assert q.get_status(q.recent()[0].id).state is JobState.SUCCEEDED  # reads still work


def test_rows_claimed_as_the_stop_begins_are_handed_back_not_left_unrun():
    from tgext.asyncjob.backends.sqlalchemy.runner import Runner
    executed, unclaimed, stopped = [], [], threading.Event()
    runner = None

    def claim(limit):
        # The stop begins while this claim is in flight.
        threading.Thread(target=lambda: (runner.stop(5), stopped.set())).start()
        wait_for(runner._stopping.is_set, timeout=WAIT, message='the stop never began')
        return [{'id': 'a'}]
    runner = Runner(claim, executed.append, lambda: None, threading.Event(), threads=1,
                    unclaim=unclaimed.extend)
    runner.start()
    assert stopped.wait(WAIT)
    wait_for(lambda: unclaimed, timeout=WAIT, message='the row was not handed back')
    assert unclaimed == [{'id': 'a'}] and executed == []


def test_a_claim_never_takes_more_than_its_limit(url):
    # PostgreSQL may run ``id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` as a
    # join that rescans the subquery: each rescan skips the rows already locked and
    # returns new ones, so the UPDATE took more rows than the limit (a one-thread
    # worker then showed two jobs running).
    from tgext.asyncjob.backends.sqlalchemy.claims import claim
    from tgext.asyncjob.backends.sqlalchemy.engine import make_engines
    engines = make_engines(url)
    try:
        schema.create_tables(engines.write)
        now = time.time()
        rows = [{'id': uuid.uuid4().hex, 'queue': 'default', 'func': 'm:f', 'name': 'f',
                 'args': '[]', 'kwargs': '{}', 'state': 'queued', 'priority': 0,
                 'run_at': now - 1, 'enqueued_at': now - 1, 'attempt': 0,
                 'cancel_requested': False} for _ in range(40)]
        with engines.write.begin() as conn:
            conn.execute(schema.jobs.insert(), rows)
        taken = []
        for limit in [1] * 20 + [3] * 6:
            got = claim(engines, 'w', ['default'], time.time(), limit)
            assert len(got) == limit, (limit, len(got))
            taken += [r['id'] for r in got]
        with engines.read.connect() as conn:
            running = conn.execute(sqlalchemy.select(schema.jobs.c.id).where(
                schema.jobs.c.state == 'running')).scalars().all()
        assert sorted(running) == sorted(taken)
    finally:
        engines.dispose()


def test_a_burst_worker_is_unregistered_once(make_app, sqlite_db_url, caplog):
    # work(burst=True) unregisters the worker as it returns; the queue's stop() (at
    # exit, say) must not do it again: the database may be gone by then.
    app = sql_app(make_app, sqlite_db_url, in_process='false')
    q = queue_of(app)
    q.perform(noop, (1,))
    q.backend.work(threads=1, burst=True)
    with q.backend.engines.write.begin() as conn:
        conn.execute(schema.workers.delete())
        schema.workers.drop(conn)
    caplog.clear()
    q.stop(5)
    assert 'could not unregister' not in caplog.text
