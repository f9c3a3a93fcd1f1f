"""The operations API (``asyncjob_jobs``, ``asyncjob_counts``, ``asyncjob_retry``,
``asyncjob_delete``, ``asyncjob_purge``) called by a real TurboGears application's
controller (WebTest), on each backend and tracker: threads with the memory and the
Redis tracker, and the sqlalchemy backend on SQLite and PostgreSQL."""

import pytest
from tg import expose

import tgext.asyncjob as aj
from tgext.asyncjob.webaccess import arguments_allowed

from jobhelpers import wait_finished
from sampleapp.controllers.root import RootController


def double(value):
    return value * 2


def broken(value, *, why='on purpose'):
    raise aj.JobFailed(f'{value} failed {why}')


def _error(exc):
    return dict(error=type(exc).__name__, message=str(exc))


class OpsController(RootController):
    """What a dashboard does: list, count, retry, delete, purge, through the API."""

    @expose('json')
    def queue(self, job='double', value='x', delay=None):
        func = broken if job == 'broken' else double
        if delay:
            return dict(jobid=aj.asyncjob_options(delay=float(delay)).perform(func, value))
        return dict(jobid=aj.asyncjob_perform(func, value, **({'why': 'here'} if
                                                                 job == 'broken' else {})))

    @expose('json')
    def jobs(self, state=None, name=None, offset='0', limit='50'):
        try:
            listed = aj.asyncjob_jobs(state, name, int(offset), int(limit))
        except (aj.AsyncJobError, ValueError) as exc:
            return _error(exc)
        show = arguments_allowed()
        return dict(jobs=[s.to_dict(include_arguments=show) for s in listed],
                    counts=aj.asyncjob_counts())

    @expose('json')
    def retry(self, jobid):
        try:
            return dict(jobid=aj.asyncjob_retry(jobid))
        except aj.AsyncJobError as exc:
            return _error(exc)

    @expose('json')
    def delete(self, jobid):
        try:
            aj.asyncjob_delete(jobid)
        except aj.AsyncJobError as exc:
            return _error(exc)
        return dict(deleted=jobid)

    @expose('json')
    def purge(self, older_than):
        return dict(purged=aj.asyncjob_purge(float(older_than)))


@pytest.fixture(params=['threads-memory', 'threads-redis', 'sqlalchemy-sqlite',
                        'sqlalchemy-postgresql'])
def app(request, make_app):
    kind = request.param
    config = {'asyncjob.show_arguments': 'true'}
    if kind == 'threads-redis':
        request.getfixturevalue('redis_client')  # a flushed test db
        config['asyncjob.tracker'] = request.getfixturevalue('redis_url')
    if kind.startswith('sqlalchemy'):
        config['asyncjob.backend'] = 'sqlalchemy'
        db = 'postgres_db_url' if kind.endswith('postgresql') else 'sqlite_db_url'
    else:
        db = 'sqlite_db_url'
    return make_app(request.getfixturevalue(db), root=OpsController, extra_config=config)


def queue_of(app):
    return app.app_globals.asyncjob_queue


def test_a_dashboard_lists_retries_deletes_and_purges_through_the_api(app):
    q = queue_of(app)
    good = app.get('/queue', params={'value': 'a'}).json['jobid']
    bad = app.get('/queue', params={'job': 'broken', 'value': 'b'}).json['jobid']
    for jobid in (good, bad):
        wait_finished(q, jobid)
    listed = app.get('/jobs').json
    assert [j['id'] for j in listed['jobs']] == [bad, good]
    assert listed['jobs'][0]['args'] == ['b'] and listed['jobs'][0]['kwargs'] == {'why': 'here'}
    assert listed['counts']['failed'] == 1 and listed['counts']['succeeded'] == 1
    assert [j['id'] for j in app.get('/jobs', params={'state': 'failed'}).json['jobs']] == [bad]
    by_name = app.get('/jobs', params={'name': f'{__name__}.double'}).json['jobs']
    assert [j['id'] for j in by_name] == [good]
    assert app.get('/jobs', params={'offset': '1', 'limit': '1'}).json['jobs'][0]['id'] == good
    assert app.get('/jobs', params={'state': 'nope'}).json['error'] == 'ValueError'

    again = app.get('/retry', params={'jobid': bad}).json['jobid']
    status = wait_finished(q, again)
    assert (status.state.value, status.retry_of, status.error.message) == (
        'failed', bad, 'b failed here')
    rows = {j['id']: j for j in app.get('/jobs').json['jobs']}
    assert rows[bad]['retried_as'] == again and rows[again]['retry_of'] == bad
    assert app.get('/retry', params={'jobid': good}).json['error'] == 'JobStateError'
    assert app.get('/retry', params={'jobid': '0' * 32}).json['error'] == 'JobNotFound'

    later = app.get('/queue', params={'delay': '3600'}).json['jobid']
    refused = app.get('/delete', params={'jobid': later}).json
    assert refused['error'] == 'JobStateError' and 'queued' in refused['message']
    assert app.get('/delete', params={'jobid': good}).json == {'deleted': good}
    assert q.get_status(good).state is aj.JobState.NOT_FOUND
    assert app.get('/purge', params={'older_than': '3600'}).json == {'purged': 0}
    assert app.get('/purge', params={'older_than': '0'}).json == {'purged': 2}
    assert [j['id'] for j in app.get('/jobs').json['jobs']] == [later]


def test_arguments_are_shown_only_where_allowed(make_app, sqlite_db_url):
    rule = {'allow': False}
    app = make_app(sqlite_db_url, root=OpsController,
                   extra_config={'asyncjob.show_arguments': lambda: rule['allow']})
    wait_finished(queue_of(app), app.get('/queue', params={'value': 'secret'}).json['jobid'])
    assert 'args' not in app.get('/jobs').json['jobs'][0]
    rule['allow'] = True
    assert app.get('/jobs').json['jobs'][0]['args'] == ['secret']


def test_a_03_tracker_says_it_cannot_list(make_app, sqlite_db_url):
    from test_contract_trackers import FourMethodTracker
    app = make_app(sqlite_db_url, root=OpsController,
                   plug_options={'progress_tracker': FourMethodTracker()})
    answer = app.get('/jobs').json
    assert answer['error'] == 'OperationUnsupported'
    assert 'FourMethodTracker cannot list jobs' in answer['message']
