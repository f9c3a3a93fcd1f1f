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
from services import wait_for

MARIADB_URL = 'mysql+pymysql://root@127.0.0.1:3306/'
WAIT = 30

# ----------------------------------------------------------------- databases


def _mariadb_admin():
    engine = sqlalchemy.create_engine(MARIADB_URL, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={'connect_timeout': 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql('SELECT 1')
    except Exception as exc:
        pytest.fail(f'MariaDB is not reachable at {MARIADB_URL} (root, no password): {exc}',
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


def sql_app(make_app, url, **settings):
    config = {'asyncjob.backend': 'sqlalchemy', 'asyncjob.workers': '2'}
    config.update({f'asyncjob.backend.{k}': v for k, v in settings.items()})
    return make_app(url, root=JobsController, extra_config=config)


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
