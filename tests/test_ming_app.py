"""tgext.asyncjob in a Ming (MongoDB) TurboGears application, as ``gearbox quickstart
--ming`` makes one, on Ming's in-memory MongoDB (``mim://``), driven by WebTest.

A job behaves as a request does there: its unit of work is flushed when it returns,
discarded when it raises, and the sessions are closed after every job.
"""
import logging

import pytest
from ming.odm import ThreadLocalODMSession
from tg import expose

from tgext.asyncjob import asyncjob_perform

from jobhelpers import wait_finished
from mingapp import model
from mingapp.controllers.root import RootController


@pytest.fixture
def make_ming_app(_apps, postgres_url):
    """``mingapp.config.make_app`` with the queues stopped and sessions closed after."""
    from mingapp.config import make_app
    built = []

    def factory(**kwargs):
        _apps.built = True  # TG's process-wide milestones are reset after the test
        app = make_app(**kwargs)
        built.append(app)
        return app

    yield factory
    for app in built:
        app.queue.stop(10)
        ThreadLocalODMSession.close_all()
        model.SQLASession.remove()
        engine = getattr(app.config['tg.app_globals'], 'sa_engine', None)
        if engine is not None:
            engine.dispose()


def create(name, value=0):
    model.Document(name=name, value=value)  # no flush: the job's end must save it


def rename_then_fail(old, new):
    model.Document.query.get(name=old).name = new
    raise RuntimeError('this change must be discarded')


def create_and_flush(name):
    model.Document(name=name)
    model.DBSession.flush()


class JobsController(RootController):
    @expose('json')
    def start(self, name):
        return dict(jobid=asyncjob_perform(create, name))


@pytest.mark.parametrize('tm', [False, True], ids=['quickstart', 'tm-enabled'])
def test_a_document_made_in_a_job_is_saved_when_the_job_returns(make_ming_app, tm):
    app = make_ming_app(root=JobsController, extra_config={'tm.enabled': tm})
    jobid = app.get('/start', params={'name': 'kept'}).json['jobid']
    assert wait_finished(app.queue, jobid).state.value == 'succeeded'
    assert app.documents() == [('kept', 0)]


def test_no_session_error_is_logged_and_no_document_deleted(make_ming_app, caplog):
    app = make_ming_app()
    q = app.queue
    wait_finished(q, q.perform(create, ('first',)))
    with caplog.at_level(logging.WARNING, logger='tgext.asyncjob'):
        wait_finished(q, q.perform(create, ('second',)))
    assert [r.getMessage() for r in caplog.records if r.name == 'tgext.asyncjob'] == []
    assert app.documents() == [('first', 0), ('second', 0)]


def test_a_failed_jobs_change_is_not_saved_by_the_next_job(make_ming_app):
    app = make_ming_app()
    q = app.queue
    wait_finished(q, q.perform(create_and_flush, ('original',)))
    failed = wait_finished(q, q.perform(rename_then_fail, ('original', 'renamed')))
    assert failed.state.value == 'failed'
    wait_finished(q, q.perform(create_and_flush, ('unrelated',)))
    assert app.documents() == [('original', 0), ('unrelated', 0)]
    assert 'discarded' in failed.error.message


def test_sessions_are_closed_after_every_job(make_ming_app):
    app = make_ming_app()
    q = app.queue
    seen = []

    def load():
        doc = model.Document.query.get(name='doc')
        seen.append(len(list(model.DBSession.imap)))
        doc.value += 1  # would be flushed again by a session that kept it

    wait_finished(q, q.perform(create, ('doc',)))
    for _ in range(3):
        assert wait_finished(q, q.perform(load)).state.value == 'succeeded'
    assert seen == [1, 1, 1]
    assert app.documents() == [('doc', 3)]


def test_an_app_using_sqlalchemy_and_ming_gets_both(make_ming_app, postgres_db_url):
    app = make_ming_app(sqlalchemy_url=postgres_db_url)
    q = app.queue
    sessions = []

    def both(name, fail=False):
        model.Document(name=name)
        model.SQLASession.add(model.Row(name=name))
        sessions.append(model.SQLASession())
        if fail:
            raise RuntimeError('neither is kept')

    wait_finished(q, q.perform(both, ('kept',)))
    assert wait_finished(q, q.perform(both, ('dropped', True))).state.value == 'failed'
    wait_finished(q, q.perform(both, ('also kept',)))
    assert app.documents() == [('also kept', 0), ('kept', 0)]
    assert app.get('/rows').json['rows'] == ['kept', 'also kept']
    assert len({id(s) for s in sessions}) == 3
