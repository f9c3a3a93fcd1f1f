"""tgext.asyncjob inside real TurboGears 2.5 applications (WebTest, SQLite and PostgreSQL)."""

import logging

import pytest
import sqlalchemy
import transaction
from tg import expose

import tgext.asyncjob
from tgext.asyncjob import (AlreadyStarted, asyncjob_get_progress, asyncjob_perform,
                            asyncjob_timed_query)
from tgext.asyncjob.trackers.memory import MemoryProgressTracker
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from jobhelpers import Gate, wait_finished
from sampleapp import model
from sampleapp.controllers.root import RootController, db_session
from services import wait_for

GATES = {}


def add_row(name, value=None):
    db_session().add(model.Row(name=name, value=value))


def add_row_then_fail(name):
    add_row(name)
    db_session().flush()
    raise RuntimeError('rolled back')


class JobsController(RootController):
    @expose('json')
    def start(self, name='r', fail=''):
        jobid = asyncjob_perform(add_row_then_fail if fail else add_row, name)
        return dict(jobid=jobid)

    @expose('json')
    def progress(self, jobid):
        return dict(progress=asyncjob_get_progress(jobid))


def queue_of(app):
    return app.app_globals.asyncjob_queue


def row_names(app):
    return [r['name'] for r in app.get('/rows').json['rows']]


@pytest.mark.parametrize('enable', ['plug', 'globals', 'globals-autodetect', 'after'])
def test_every_way_of_enabling_runs_jobs(make_app, db_url, enable):
    app = make_app(db_url, enable=enable, root=JobsController)
    jobid = app.get('/start', params={'name': enable}).json['jobid']
    wait_finished(queue_of(app), jobid)
    assert row_names(app) == [enable]


def test_plugme_returns_the_appid():
    from tg import FullStackApplicationConfigurator
    assert tgext.asyncjob.plugme(FullStackApplicationConfigurator(), {}) == {
        'appid': 'tgext.asyncjob'}


def test_plug_with_app_globals_and_progress_tracker(make_app, sqlite_db_url):
    from types import SimpleNamespace
    holder, tracker = SimpleNamespace(), MemoryProgressTracker()
    app = make_app(sqlite_db_url, plug_options={'app_globals': holder,
                                                'progress_tracker': tracker})
    assert holder.asyncjob_queue is queue_of(app)
    assert queue_of(app).tracker is tracker


def test_plug_reads_ini_settings(make_app, sqlite_db_url, redis_url, redis_client):
    app = make_app(sqlite_db_url, extra_config={'asyncjob.workers': '3',
                                                'asyncjob.tracker': redis_url})
    assert len(queue_of(app).backend.threads) == 3
    assert isinstance(queue_of(app).tracker, RedisProgressTracker)


def test_plug_and_start_async_worker_together_is_refused(make_app, sqlite_db_url):
    started = []
    try:
        with pytest.raises(AlreadyStarted):
            make_app(sqlite_db_url, enable='plug', globals_class=_self_starting_globals(started))
    finally:
        for g in started:  # the app never got built: stop the queue its Globals started
            g.asyncjob_queue.stop(5)
    assert len(started) == 1


def _self_starting_globals(started):
    from sampleapp.lib.app_globals import Globals

    class StartingGlobals(Globals):
        def __init__(self):
            super().__init__()
            tgext.asyncjob.start_async_worker(self)
            started.append(self)
    return StartingGlobals


def test_two_apps_have_their_own_queue_worker_and_tracker(make_app, tmp_path):
    first = make_app(f'sqlite:///{tmp_path}/a.sqlite', root=JobsController,
                     dbsession=model.new_session())
    second = make_app(f'sqlite:///{tmp_path}/b.sqlite', root=JobsController,
                      dbsession=model.new_session())
    q1, q2 = queue_of(first), queue_of(second)
    assert q1 is not q2 and q1.tracker is not q2.tracker
    assert q1.backend.threads[0] is not q2.backend.threads[0]
    id1 = first.get('/start', params={'name': 'first'}).json['jobid']
    id2 = second.get('/start', params={'name': 'second'}).json['jobid']
    wait_finished(q1, id1)
    wait_finished(q2, id2)
    assert row_names(first) == ['first'] and row_names(second) == ['second']
    assert q2.get_status(id1).state.value == 'not_found'


def test_job_commits_on_return_and_aborts_on_raise(make_app, db_url):
    app = make_app(db_url, root=JobsController)
    ok = app.get('/start', params={'name': 'kept'}).json['jobid']
    bad = app.get('/start', params={'name': 'dropped', 'fail': '1'}).json['jobid']
    wait_finished(queue_of(app), ok)
    status = wait_finished(queue_of(app), bad)
    assert status.state.value == 'failed' and status.error.message == 'rolled back'
    assert row_names(app) == ['kept']


def test_none_from_progress_means_the_writes_are_visible(make_app, db_url):
    app = make_app(db_url, root=JobsController)
    for i in range(20):
        jobid = app.get('/start', params={'name': f'row{i}'}).json['jobid']
        wait_for(lambda: app.get('/progress', params={'jobid': jobid}).json['progress'] is None)
        assert f'row{i}' in row_names(app)


def test_the_session_is_removed_after_each_job(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, root=JobsController)
    sessions = []

    def job():
        sessions.append(db_session()())

    q = queue_of(app)
    wait_finished(q, asyncjob_perform(job))
    wait_finished(q, asyncjob_perform(job))
    assert sessions[0] is not sessions[1]


def test_jobs_see_their_own_apps_config(make_app, tmp_path):
    import tg
    seen = {}
    first = make_app(f'sqlite:///{tmp_path}/a.sqlite', dbsession=model.new_session(),
                     extra_config={'marker': 'first'})
    second = make_app(f'sqlite:///{tmp_path}/b.sqlite', dbsession=model.new_session(),
                      extra_config={'marker': 'second'})
    for app in (first, second):
        q = queue_of(app)
        wait_finished(q, q.perform(lambda: seen.setdefault(app.config['marker'],
                                                            tg.config['marker'])))
    assert seen == {'first': 'first', 'second': 'second'}


def test_an_app_without_sqlalchemy_runs_jobs(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, extra_config={'use_sqlalchemy': False})
    q = queue_of(app)
    assert wait_finished(q, q.perform(lambda: 'fine')).result == 'fine'


# -- asyncjob_timed_query --------------------------------------------------------------


def test_timed_query_finds_a_row_committed_after_the_job_started(make_app, db_url):
    app = make_app(db_url, root=JobsController)
    gate = Gate()
    found = {}

    def job():
        if 'postgresql' in db_url:
            add_row('written first')  # SQLite allows one writer: only PostgreSQL can do both
            db_session().flush()
        gate.job()
        query = asyncjob_timed_query(
            db_session().query(model.Group).filter_by(group_name='late'), retries=500,
            interval=0.02)
        group = query.first()
        found['name'] = group.group_name if group else None

    q = queue_of(app)
    jobid = q.perform(job)
    gate.wait_entered()
    gate.release()
    with transaction.manager:
        app.dbsession.add(model.Group(group_name='late'))
    app.dbsession.remove()
    wait_finished(q, jobid)
    assert found == {'name': 'late'}
    if 'postgresql' in db_url:
        assert row_names(app) == ['written first']


def test_timed_query_returns_the_query_after_the_retries(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url)
    calls = []

    class CountingQuery:
        def first(self):
            calls.append(1)

    q = queue_of(app)
    result = wait_finished(q, q.perform(
        lambda: asyncjob_timed_query(CountingQuery(), retries=3, interval=0.001))).result
    assert len(calls) == 4 and result is not None
    with pytest.raises(ValueError):
        asyncjob_timed_query(CountingQuery(), retries=-1)


def test_timed_query_does_not_sleep_when_the_row_is_there(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url)
    calls = []

    class FoundQuery:
        def first(self):
            calls.append(1)
            return 'row'

    q = queue_of(app)
    # An interval of an hour: any sleep would blow the wait's deadline.
    wait_finished(q, q.perform(lambda: asyncjob_timed_query(FoundQuery(), interval=3600)),
                  timeout=10)
    assert calls == [1]


# -- an application configured in code (issue 11 §2) -----------------------------------


def test_an_app_configured_in_code_runs_jobs_with_its_config_and_fresh_sessions(
        _apps, sqlite_db_url):
    """TurboGears' single-file style: a blueprint of root_controller, model and
    sqlalchemy.url, and no ``package``."""
    import types

    import tg
    from tg import FullStackApplicationConfigurator
    from tgext.pluggable import plug

    session = model.new_session()
    app_model = types.SimpleNamespace(DBSession=session,
                                      init_model=lambda engine: session.configure(bind=engine))
    config = FullStackApplicationConfigurator()
    config.update_blueprint({
        'root_controller': RootController(), 'renderers': ['json'],
        'default_renderer': 'json', 'use_sqlalchemy': True, 'sqlalchemy.url': sqlite_db_url,
        'model': app_model, 'tm.enabled': True, 'marker': 'in code',
        'use_toscawidgets': False, 'use_toscawidgets2': False, 'errorpage.enabled': False,
        'sa_auth.enabled': False, 'session.enabled': False, 'cache.enabled': False,
    })
    plug(config, 'tgext.asyncjob')
    _apps.built = True
    config.make_wsgi_app()
    conf = tg.config.current_conf()
    q = conf['tg.app_globals'].asyncjob_queue
    seen = []

    def job():
        seen.append((tg.config.get('marker'), session()))

    try:
        for _ in range(3):
            wait_finished(q, q.perform(job))
    finally:
        q.stop(10)
        conf['tg.app_globals'].sa_engine.dispose()
    assert [marker for marker, _ in seen] == ['in code'] * 3
    assert len({id(s) for _, s in seen}) == 3


# -- settings: one order, every value checked at start (issue 11 §3) ----------------------


def test_the_ini_beats_plug_options(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, plug_options={'workers': 2, 'stop_timeout': 3},
                   extra_config={'asyncjob.workers': '3'})
    assert len(queue_of(app).backend.threads) == 3
    assert queue_of(app).stop_timeout == 3  # not in the .ini: the plug() option


def test_start_async_worker_arguments_beat_the_ini(make_app, sqlite_db_url):
    app = make_app(sqlite_db_url, enable='after', plug_options={'workers': 4},
                   extra_config={'asyncjob.workers': '3', 'asyncjob.max_queue': '7'})
    assert len(queue_of(app).backend.threads) == 4
    assert queue_of(app).max_queue == 7


@pytest.mark.parametrize('option', ['worker', 'trackr', 'progress'])
def test_unknown_plug_options_are_rejected_naming_the_valid_ones(option):
    from tg import FullStackApplicationConfigurator
    from tgext.pluggable import plug
    with pytest.raises(TypeError, match=rf'unknown plug\(tgext.asyncjob\) option\(s\): {option};'
                                        r' valid: .*progress_tracker.*workers'):
        plug(FullStackApplicationConfigurator(), 'tgext.asyncjob', **{option: 4})


def test_unknown_start_async_worker_options_are_rejected_naming_the_valid_ones():
    from types import SimpleNamespace
    with pytest.raises(TypeError, match=r'worker; valid: .*workers'):
        tgext.asyncjob.start_async_worker(SimpleNamespace(), worker=4)
    with pytest.raises(TypeError, match=r'mount; valid:'):
        tgext.asyncjob.start_async_worker(SimpleNamespace(), mount='x')


def test_the_tracker_setting_is_a_plug_option_too(make_app, sqlite_db_url, redis_url,
                                                  redis_client):
    app = make_app(sqlite_db_url, plug_options={'tracker': redis_url})
    assert isinstance(queue_of(app).tracker, RedisProgressTracker)


@pytest.mark.parametrize('key, value, where', [
    ('asyncjob.stop_timeout', 'nan', 'plug'),
    ('asyncjob.put_timeout', '-1', 'ini'),
    ('asyncjob.put_timeout', '1e12', 'ini'),
    ('asyncjob.workers', '1.5', 'ini'),
    ('asyncjob.attempts', '0', 'ini'),
    ('asyncjob.jobs_access', 'yes please', 'ini'),
    ('asyncjob.show_tracebacks', 'sometimes', 'ini'),
    ('asyncjob.tracker', 'redis://127.0.0.1:6379/abc', 'ini'),
    ('asyncjob.tracker', 'redis://127.0.0.1:6379/0?db=x', 'ini'),
    ('asyncjob.backend', 'celery', 'ini'),
    ('asyncjob.mount', 'job pages', 'ini'),
])
def test_bad_values_fail_at_start_naming_the_setting(make_app, sqlite_db_url, key, value,
                                                     where):
    name = key[len('asyncjob.'):]
    config = {'asyncjob.max_queue': '5'}
    options = {}
    if where == 'ini':
        config[key] = value
    else:
        options[name] = float(value)
    with pytest.raises((ValueError, TypeError), match=key.replace('.', r'\.')):
        make_app(sqlite_db_url, plug_options=options, extra_config=config)


def test_an_existing_asyncjob_attribute_of_the_root_is_left_alone_and_logged(
        make_app, sqlite_db_url, caplog):
    class Root(RootController):
        @expose('json')
        def asyncjob(self):
            return dict(mine=True)

    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        app = make_app(sqlite_db_url, root=Root)
    assert app.get('/asyncjob').json == {'mine': True}
    assert any('not mounted at /asyncjob' in r.getMessage() for r in caplog.records)


def test_perform_in_a_disabled_app_names_the_setting(make_app, sqlite_db_url):
    class Root(RootController):
        @expose('json')
        def start(self):
            try:
                asyncjob_perform(print)
            except tgext.asyncjob.NoWorkerError as exc:
                return dict(error=str(exc))

    app = make_app(sqlite_db_url, root=Root, extra_config={'asyncjob.enabled': 'false'})
    assert getattr(app.app_globals, 'asyncjob_queue', None) is None
    assert 'asyncjob.enabled' in app.get('/start').json['error']


def test_redis_unreachable_at_start_is_one_warning_at_start(make_app, sqlite_db_url, caplog):
    from services import free_port
    url = f'redis://127.0.0.1:{free_port()}/0'
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        make_app(sqlite_db_url, extra_config={'asyncjob.tracker': url})
    warned = [r.getMessage() for r in caplog.records if 'did not answer' in r.getMessage()]
    assert len(warned) == 1 and '127.0.0.1' in warned[0]


def test_one_start_up_line_names_backend_workers_and_tracker(make_app, sqlite_db_url,
                                                             redis_url, caplog):
    with caplog.at_level(logging.INFO, logger='tgext.asyncjob'):
        make_app(sqlite_db_url, extra_config={'asyncjob.workers': '3',
                                              'asyncjob.tracker': redis_url})
    lines = [r.getMessage() for r in caplog.records if 'started' in r.getMessage()]
    assert len(lines) == 1
    assert 'backend threads, 3 worker thread(s)' in lines[0]
    assert 'tracker redis at 127.0.0.1:6379' in lines[0]


def test_the_rq_backend_keeps_its_records_in_redis_and_says_so_at_start(
        make_app, sqlite_db_url, redis_url, caplog):
    with caplog.at_level(logging.INFO, logger='tgext.asyncjob'):
        app = make_app(sqlite_db_url, extra_config={'asyncjob.backend': 'rq',
                                                    'asyncjob.backend.redis_url': redis_url})
    assert isinstance(queue_of(app).store, RedisProgressTracker)
    line, = [r.getMessage() for r in caplog.records if 'started' in r.getMessage()]
    assert 'backend rq' in line and 'worker thread' not in line


# -- deployment guardrails (issue 11 §4) --------------------------------------------------


def test_a_pool_smaller_than_the_job_threads_is_warned_with_the_numbers(
        make_app, postgres_db_url, caplog):
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        make_app(postgres_db_url, extra_config={
            'sqlalchemy.pool_size': '2', 'sqlalchemy.max_overflow': '1',
            'asyncjob.workers': '4'})
    warned = [r.getMessage() for r in caplog.records if 'pool' in r.getMessage()]
    assert len(warned) == 1
    assert 'at most 3 connections (pool_size 2 + max_overflow 1)' in warned[0]
    assert 'fewer than 4 job thread(s)' in warned[0]


def test_a_big_enough_pool_is_not_warned(make_app, postgres_db_url, caplog):
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        make_app(postgres_db_url, extra_config={'asyncjob.workers': '4'})
    assert not [r for r in caplog.records if 'pool' in r.getMessage()]


def test_uwsgi_options_without_threads_or_fork_handlers_are_detected():
    from tgext.asyncjob.startup import uwsgi_warning
    assert 'enable-threads' in uwsgi_warning({b'lazy-apps': True, b'processes': b'4'})
    assert 'lazy-apps' in uwsgi_warning({b'master': True, b'enable-threads': True})
    assert uwsgi_warning({b'enable-threads': True}) is None  # one process, no master
    assert uwsgi_warning({'threads': b'4', 'master': True, 'lazy-apps': True}) is None
    assert uwsgi_warning({b'enable-threads': True, b'processes': b'2',
                          b'py-call-osafterfork': True}) is None


# -- fork: the child never uses the parent's connections (issue 10 case 4) ---------------


def backend_pid():
    return db_session().execute(sqlalchemy.text('select pg_backend_pid()')).scalar()


# Forking a process whose worker threads run is the very case under test.
@pytest.mark.filterwarnings('ignore:This process .* is multi-threaded:DeprecationWarning')
def test_a_forked_child_never_uses_the_parents_database_connections(make_app,
                                                                     postgres_db_url):
    app = make_app(postgres_db_url, extra_config={'asyncjob.workers': '2'})
    q = queue_of(app)
    parent_pid = wait_finished(q, q.perform(backend_pid)).result  # its connection is pooled
    from test_fork import in_fork
    _, child_pids = in_fork(lambda: [q.wait(q.perform(backend_pid), 30).result
                                     for _ in range(3)])
    assert None not in child_pids
    assert parent_pid not in child_pids
    # The parent's pooled connection was left open for the parent (dispose(close=False)).
    assert wait_finished(q, q.perform(backend_pid)).result == parent_pid


def test_the_readme_settings_table_is_the_settings_definition():
    import pathlib

    from tgext.asyncjob import settings
    readme = (pathlib.Path(__file__).parent.parent / 'README.rst').read_text()
    assert settings.rst_table() in readme


def test_an_unknown_asyncjob_key_in_the_ini_fails_the_start_naming_the_valid_ones(
        make_app, sqlite_db_url):
    with pytest.raises(ValueError, match=r'asyncjob\.worker;.*asyncjob\.workers'):
        make_app(sqlite_db_url, extra_config={'asyncjob.worker': '4'})


def test_start_async_worker_takes_the_jobs_configuration_as_a_keyword(make_app,
                                                                      sqlite_db_url):
    import inspect

    import tg
    parameter = inspect.signature(tgext.asyncjob.start_async_worker).parameters.get('conf')
    assert parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY
    app = make_app(sqlite_db_url, enable='none', extra_config={'marker': 'mine'})
    from types import SimpleNamespace
    q = tgext.asyncjob.start_async_worker(SimpleNamespace(), conf=app.config)
    try:
        assert wait_finished(q, q.perform(lambda: tg.config['marker'])).result == 'mine'
    finally:
        q.stop(10)
