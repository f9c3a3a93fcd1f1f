"""Every Python example of README.rst and of the documentation (docs/**/*.rst) runs
here, against real apps: each ``.. code-block:: python`` is claimed by one test through a
marker string of HANDLERS, wherever the block lives, so moving an example between README
and a docs page keeps it tested."""
import pathlib
import re
import textwrap
from types import SimpleNamespace

import pytest
import transaction
from tg import FullStackApplicationConfigurator

from tgext.asyncjob import JobOptions

from jobhelpers import wait_finished
from sampleapp import model
from services import wait_for

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / 'README.rst'
DOCUMENTS = [README, *sorted((ROOT / 'docs').rglob('*.rst'))]
PYTHON_BLOCK = re.compile(r'\.\. code-block:: python\n\n((?:   .*\n|\n)+)')


def located_blocks():
    """``{block: the file it is in}`` for every Python example, in document order."""
    return {textwrap.dedent(b): path for path in DOCUMENTS
            for b in PYTHON_BLOCK.findall(path.read_text())}


def python_blocks():
    return list(located_blocks())


def shell_commands():
    return re.findall(r'\.\. code-block:: sh\n\n   (.*)\n', README.read_text())


def test_readme_opens_with_the_demo_and_test_commands():
    demo, tests = shell_commands()[:2]
    assert demo.endswith('python -m tgext.asyncjob.demo')
    assert tests.endswith('python -m pytest') and "'.[test]'" in tests
    ci = (README.parent / '.ci' / 'run').read_text()
    assert 'README.rst' in ci


def test_every_python_example_is_one_this_module_finds():
    # A block with options (:caption:) or written ``.. code:: python`` would escape the
    # pattern, and with it the tests.
    for path in DOCUMENTS:
        text = path.read_text()
        found = len(PYTHON_BLOCK.findall(text))
        assert len(re.findall(r'^\s*\.\. (?:code-block|code|sourcecode):: py', text, re.M)) \
            == found, path


def test_every_block_is_run_by_this_module():
    handled = [any(marker in block for marker in HANDLERS) for block in python_blocks()]
    assert handled and all(handled), python_blocks()[handled.index(False)]


def run(block, **names):
    namespace = dict(names)
    exec(compile(block, str(located_blocks().get(block, README)), 'exec'), namespace)
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
    over = queue.wait(queue.perform(ns['crunch'], (10 ** 12,),
                                    options=JobOptions(time_limit=0.2)), 30)
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


def test_unique_jobs_block(started, tmp_path):
    from uniqueproc import hold
    q = started(workers=1)
    gate = str(tmp_path / 'gate')
    blocker = q.perform(hold, (gate,))  # keeps the export queued meanwhile
    ns = run(block_with("unique_key=f'export:"))
    assert ns['second'] == ns['first']
    open(gate, 'w').close()
    q.wait(blocker, 30)
    assert q.wait(ns['first'], 30).result == 'orders-42.csv'
    assert ns['export'](42) != ns['first']  # it ended: a new job


def test_priorities_block(started):
    q = started(workers=1)
    run(block_with('asyncjob_options(priority=10)'))
    wait_for(lambda: sorted((s.state.value, s.result) for s in q.recent(2)) == [
        ('succeeded', 'archive'), ('succeeded', 'search')], timeout=30)


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


def test_quickstart_block(make_app, sqlite_db_url):
    ns = run(block_with('class QuickstartController'))
    app = make_app(sqlite_db_url, root=ns['QuickstartController'])
    progress_url = app.get('/start').headers['Location']
    assert app.get(progress_url).status_int == 200
    jobid = progress_url.rstrip('/').rsplit('/', 1)[1]
    status = wait_finished(app.app_globals.asyncjob_queue, jobid)
    assert (status.state.value, status.result, status.data) == ('succeeded', 20, '20 of 20 rows')


def plugged_hooks(marker):
    """The hooks a block gives ``plug()``, run on a configurator of its own."""
    base_config = FullStackApplicationConfigurator()
    ns = run(block_with(marker), base_config=base_config)
    return ns, base_config.get_component('asyncjob').plug_options['hooks']


def test_prometheus_block(make_app, sqlite_db_url):
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase
    ns, [hook] = plugged_hooks('hooks=[PrometheusHook()])')
    try:
        app = make_app(sqlite_db_url, root=ns['RootController'], plug_options={'hooks': [hook]})
        q = app.app_globals.asyncjob_queue
        wait_finished(q, q.perform(int, ('7',)))
        assert ('asyncjob_jobs_finished_total{callable="builtins.int",state="succeeded"} 1.0'
                in app.get('/metrics').text)
    finally:  # the block registers on the process-wide registry: leave it as it was
        for metric in vars(hook).values():
            if isinstance(metric, MetricWrapperBase):
                REGISTRY.unregister(metric)


def test_opentelemetry_block(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from tgext.asyncjob import start_async_worker
    _, [hook] = plugged_hooks('hooks=[OpenTelemetryHook()])')
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The block's hook traces with the global provider, which a process sets only once.
    monkeypatch.setattr(hook, 'tracer', provider.get_tracer('tgext.asyncjob'))
    q = start_async_worker(SimpleNamespace(), hooks=[hook])
    try:
        jobid = q.perform(int, ('7',))
        wait_finished(q, jobid)
    finally:
        q.stop(5)
    [span] = wait_for(lambda: exporter.get_finished_spans())
    assert (span.name, span.attributes['asyncjob.job_id']) == ('asyncjob builtins.int', jobid)


def test_alembic_block(make_app, sqlite_db_url):
    import sqlalchemy
    ns = run(block_with('target_metadata = [model.metadata, asyncjob_metadata]'), model=model)
    engine = sqlalchemy.create_engine(sqlite_db_url)
    for metadata in ns['target_metadata']:  # what the migration autogenerated does
        metadata.create_all(engine)
    engine.dispose()
    app = make_app(sqlite_db_url, extra_config={'asyncjob.backend': 'sqlalchemy',
                                                'asyncjob.backend.create_tables': 'false'})
    q = app.app_globals.asyncjob_queue
    assert wait_finished(q, q.perform(int, ('7',))).result == 7


def test_snippet_block():
    ns = run(block_with('progress_snippet(jobid)'), jobid='0123456789abcdef0123456789abcdef')
    assert 'asyncjob' in str(ns['progress_snippet']('0123456789abcdef0123456789abcdef'))


def test_jobs_access_block():
    base_config = FullStackApplicationConfigurator()
    run(block_with("'asyncjob.jobs_access'"), base_config=base_config)
    assert callable(base_config.get_blueprint_value('asyncjob.jobs_access'))


def test_dashboard_script_block(make_app, sqlite_db_url):
    """The script cancels a queued job through a real HTTP server, cookie and token."""
    import threading
    from tgext.asyncjob.demo.server import make_demo_server, serve_in_thread

    ns = run(block_with('def cancel_job'))
    app = make_app(sqlite_db_url, extra_config={'debug': True})
    queue = app.app_globals.asyncjob_queue
    gate, started = threading.Event(), threading.Event()
    blocker = queue.perform(lambda: (started.set(), gate.wait(10)))
    assert started.wait(10)
    victim = queue.perform(int)  # queued behind the blocker: the only worker is busy
    server = make_demo_server(app.app, '127.0.0.1', 0, quiet=True)
    thread = serve_in_thread(server)
    try:
        answer = ns['cancel_job']('http://127.0.0.1:%d' % server.server_address[1], victim)
    finally:
        gate.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert answer == {'id': victim, 'action': 'cancel', 'outcome': 'cancelled', 'ok': True}
    assert queue.get_status(victim).state.value == 'cancelled'
    wait_finished(queue, blocker)


HANDLERS = ['asyncjob = AsyncJobController()', 'def cancel_job', 'class ExportController', 'progress_snippet(jobid)',
            'class QuickstartController', 'hooks=[PrometheusHook()])',
            'hooks=[OpenTelemetryHook()])', 'target_metadata = [model.metadata, asyncjob_metadata]',
            "'asyncjob.jobs_access'",
"plug(base_config, 'tgext.asyncjob')", 'MemoryProgressTracker())',
            'RedisProgressTracker())', 'def background_task', 'def controller_method',
            'asyncjob_wait(asyncjob_perform(double', 'class LogJobs', 'asyncjob_options(delay=30)',
            'asyncjob_options(on_commit=True).perform(async_query', 'asyncjob_timed_query(DBSession',
            'class MyProgressTracker', '@asyncjob_periodic(', 'asyncjob_retry(failed.id)',
            "unique_key=f'export:", 'asyncjob_options(priority=10)',
            "asyncjob_options(concurrency_key='user:42'", 'asyncjob_options(time_limit=30)']


def test_periodic_block(monkeypatch):
    from tgext.asyncjob import periodic
    monkeypatch.setattr(periodic, 'DECLARED', {})
    ns = run(block_with('@asyncjob_periodic('), __name__='readme_periodic')
    assert periodic.DECLARED == {'readme_periodic:refresh_feeds': (
        '*/5 * * * *', 'readme_periodic:refresh_feeds')}
    assert ns['refresh_feeds']() == 'refreshed'


def test_operations_block(queue, capfd, monkeypatch):
    # A module of its own, so that the retry imports send_invoice by its path.
    import sys
    import types
    module = types.ModuleType('readme_operations')
    monkeypatch.setitem(sys.modules, 'readme_operations', module)
    exec(compile(block_with('asyncjob_retry(failed.id)'), str(README), 'exec'), module.__dict__)
    out = capfd.readouterr().out
    assert "readme_operations.send_invoice (7,) invoice 7: the mail server refused it" in out
    assert "'failed': 1" in out
    assert queue.get_status(module.failed.id).state.value == 'not_found'  # deleted
    assert queue.get_status(module.copy).retry_of == module.failed.id
