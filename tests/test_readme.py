"""Every Python example in README.rst runs here, in order, against real apps."""
import pathlib
import re
import textwrap
from types import SimpleNamespace

import pytest
import transaction
from tg import FullStackApplicationConfigurator

from jobhelpers import wait_finished
from sampleapp import model
from services import wait_for

README = pathlib.Path(__file__).parent.parent / 'README.rst'


def python_blocks():
    blocks = re.findall(r'\.\. code-block:: python\n\n((?:   .*\n|\n)+)', README.read_text())
    return [textwrap.dedent(b) for b in blocks]


def shell_commands():
    return re.findall(r'\.\. code-block:: sh\n\n   (.*)\n', README.read_text())


def test_readme_opens_with_the_demo_and_test_commands():
    demo, tests = shell_commands()[:2]
    assert demo.endswith('python -m tgext.asyncjob.demo')
    assert tests.endswith('python -m pytest') and "'.[test]'" in tests
    ci = (README.parent / '.ci' / 'run').read_text()
    assert 'README.rst' in ci


def test_every_block_is_run_by_this_module():
    handled = [any(marker in block for marker in HANDLERS) for block in python_blocks()]
    assert handled and all(handled), python_blocks()[handled.index(False)]


def run(block, **names):
    namespace = dict(names)
    exec(compile(block, str(README), 'exec'), namespace)
    return namespace


def block_with(marker):
    [block] = [b for b in python_blocks() if marker in b and b not in CLAIMED]
    CLAIMED.append(block)
    return block


CLAIMED = []


def test_plug_block(make_app, sqlite_db_url):
    base_config = FullStackApplicationConfigurator()
    run(block_with("plug(base_config, 'tgext.asyncjob')"), base_config=base_config)
    assert base_config.get_component('asyncjob') is not None


@pytest.mark.parametrize('marker', ['MemoryProgressTracker())', 'RedisProgressTracker())'])
def test_globals_blocks(marker, redis_url, redis_client):
    ns = run([b for b in python_blocks() if marker in b][0])
    g = ns['Globals']()
    try:
        jobid = g.asyncjob_queue.perform(lambda: 'ran')
        assert wait_finished(g.asyncjob_queue, jobid).result == 'ran'
    finally:
        g.asyncjob_queue.stop(5)


def test_performing_block(queue, capfd):
    ns = run(block_with('def background_task'))
    wait_finished(queue, ns['jobid'])
    assert capfd.readouterr().out == '10\n'


def test_progress_controller_block(make_app, sqlite_db_url):
    ns = run(block_with('def controller_method'))
    app = make_app(sqlite_db_url, root=ns['RootController'])
    state_url = app.get('/controller_method').headers['Location']
    wait_for(lambda: app.get(state_url).text == 'Job Completed')


def test_status_block(queue):
    run(block_with('asyncjob_wait(asyncjob_perform(double'))


def test_hooks_block(queue, caplog):
    from tgext.asyncjob import start_async_worker
    ns = run(block_with('class LogJobs'))
    q = start_async_worker(SimpleNamespace(), hooks=[ns['LogJobs']()])
    try:
        wait_finished(q, q.perform(int, ('x',)))
    finally:
        q.stop(5)
    assert any('builtins.int failed' in r.getMessage() for r in caplog.records)


def test_options_block(queue):
    ns = run(block_with('asyncjob_options(delay=30)'))
    assert ns['fetch_feed'].__asyncjob_retry__.max_retries == 3
    wait_for(lambda: sorted(s.state.value for s in queue.recent(2)) == ['queued', 'succeeded'])


def test_concurrency_limit_block(queue):
    ns = run(block_with("asyncjob_options(concurrency_key='user:42'"))
    first, second = (queue.wait(ns[name], 30) for name in ('first', 'second'))
    assert (first.result, second.result) == ('index of user 42 rebuilt',) * 2
    assert second.started_at >= first.finished_at


def test_time_limit_block(queue):
    ns = run(block_with('asyncjob_options(time_limit=30)'))
    [status] = [s for s in queue.recent(1)]
    assert queue.wait(status.id, 30).result == 1000
    # Over its limit: the loop sees the flag and stops; the job is recorded failed.
    over = queue.wait(queue.perform(ns['crunch'], (10 ** 12,), time_limit=0.2), 30)
    assert (over.state.value, over.error.type) == ('failed', 'TimeLimitExceeded')


@pytest.mark.parametrize('marker', ['asyncjob_options(on_commit=True).perform(async_query',
                                    'asyncjob_timed_query(DBSession'])
def test_database_blocks(make_app, db_url, marker):
    app = make_app(db_url)
    block = [b for b in python_blocks() if marker in b][0]
    with transaction.manager:
        run(block, DBSession=app.dbsession, Group=model.Group)
    app.dbsession.remove()
    wait_for(lambda: [g['display_name'] for g in app.get('/groups').json['groups']] == ['Prova'])


def test_custom_tracker_block():
    from tgext.asyncjob import start_async_worker
    ns = run(block_with('class MyProgressTracker'))
    q = start_async_worker(SimpleNamespace(), progress_tracker=ns['MyProgressTracker']())
    try:
        jobid = q.perform(lambda: None)
        wait_for(lambda: q.get_progress(jobid) is None)
    finally:
        q.stop(5)


def test_mount_by_hand_block(make_app, sqlite_db_url):
    ns = run(block_with('asyncjob = AsyncJobController()'))
    app = make_app(sqlite_db_url, enable='after', root=ns['RootController'])
    app.get('/asyncjob/status/0123456789abcdef0123456789abcdef.json', status=404)


def test_export_block(make_app, sqlite_db_url):
    ns = run(block_with('class ExportController'))
    app = make_app(sqlite_db_url, root=ns['ExportController'])
    progress_url = app.get('/export').headers['Location']
    assert '/asyncjob/progress/' in progress_url
    assert app.get(progress_url).status_int == 200
    jobid = progress_url.rstrip('/').rsplit('/', 1)[1]
    status = wait_finished(app.app_globals.asyncjob_queue, jobid)
    assert (status.progress, status.data['message']) == (100, '50 of 50 rows')
    assert app.get(f'/asyncjob/status/{jobid}.json').json['percent'] == 100


def test_snippet_block():
    ns = run(block_with('progress_snippet(jobid)'), jobid='0123456789abcdef0123456789abcdef')
    assert 'asyncjob' in str(ns['progress_snippet']('0123456789abcdef0123456789abcdef'))


def test_jobs_access_block():
    base_config = FullStackApplicationConfigurator()
    run(block_with("'asyncjob.jobs_access'"), base_config=base_config)
    assert callable(base_config.get_blueprint_value('asyncjob.jobs_access'))


HANDLERS = ['asyncjob = AsyncJobController()', 'class ExportController', 'progress_snippet(jobid)',
            "'asyncjob.jobs_access'",
"plug(base_config, 'tgext.asyncjob')", 'MemoryProgressTracker())',
            'RedisProgressTracker())', 'def background_task', 'def controller_method',
            'asyncjob_wait(asyncjob_perform(double', 'class LogJobs', 'asyncjob_options(delay=30)',
            'asyncjob_options(on_commit=True).perform(async_query', 'asyncjob_timed_query(DBSession',
            'class MyProgressTracker', '@asyncjob_periodic(',
            "asyncjob_options(concurrency_key='user:42'", 'asyncjob_options(time_limit=30)']


def test_periodic_block(monkeypatch):
    from tgext.asyncjob import periodic
    monkeypatch.setattr(periodic, 'DECLARED', {})
    ns = run(block_with('@asyncjob_periodic('), __name__='readme_periodic')
    assert periodic.DECLARED == {'readme_periodic:refresh_feeds': (
        '*/5 * * * *', 'readme_periodic:refresh_feeds')}
    assert ns['refresh_feeds']() == 'refreshed'
