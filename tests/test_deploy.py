"""Deployment guardrails under a real uWSGI: without ``enable-threads`` the worker
threads cannot run, and forked from a loaded master without ``lazy-apps`` (or
``py-call-osafterfork``) a worker inherits a queue without threads; tgext.asyncjob says
so at start. Configured as docs/deploying.rst says, jobs run."""
import http.client
import json
import os
import signal
import subprocess
import sys

import pytest

from services import free_port, wait_for

TESTS = os.path.dirname(os.path.abspath(__file__))
UWSGI = os.path.join(os.path.dirname(sys.executable), 'uwsgi')
NO_THREADS = 'uWSGI runs without enable-threads'
NO_FORK_HANDLERS = 'without running Python\'s fork handlers'


@pytest.fixture
def uwsgi(tmp_path, sqlite_db_url):
    """Start uWSGI serving ``uwsgiapp.py`` with extra options; yield (port, log path)."""
    started = []

    def start(*options):
        port = free_port()
        log = tmp_path / f'uwsgi-{port}.log'
        env = dict(os.environ, ASYNCJOB_UWSGI_DB_URL=sqlite_db_url)
        with open(log, 'wb') as out:
            proc = subprocess.Popen(
                [UWSGI, '--http-socket', f'127.0.0.1:{port}', '--master', '--processes', '1',
                 '--wsgi-file', os.path.join(TESTS, 'uwsgiapp.py'), '--virtualenv', sys.prefix,
                 '--die-on-term', *options],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
        started.append(proc)
        wait_for(lambda: 'tgext.asyncjob started' in log.read_text() or proc.poll() is not None,
                 timeout=60, message=lambda: f'uWSGI did not start:\n{log.read_text()}')
        assert proc.poll() is None, log.read_text()
        return port, log

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(port, path):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    try:
        conn.request('GET', path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_uwsgi_without_enable_threads_is_reported_at_start(uwsgi):
    port, log = uwsgi('--lazy-apps')
    assert f'ERROR tgext.asyncjob tgext.asyncjob: {NO_THREADS}' in log.read_text()


def test_uwsgi_forking_a_loaded_master_without_fork_handlers_is_reported(uwsgi):
    port, log = uwsgi('--enable-threads')
    text = log.read_text()
    assert NO_FORK_HANDLERS in text and 'lazy-apps = true' in text
    assert NO_THREADS not in text


@pytest.mark.parametrize('option', [('--enable-threads', '--py-call-osafterfork'), ('--threads', '2', '--lazy-apps')])
def test_uwsgi_with_threads_runs_jobs_and_says_nothing(uwsgi, option):
    port, log = uwsgi(*option)
    status, body = get(port, '/job')
    assert status == 200 and json.loads(body)['jobid']

    def row_written():
        return json.loads(get(port, '/rows')[1])['rows']

    rows = wait_for(row_written, timeout=30, message=lambda: log.read_text())
    assert [r['name'] for r in rows] == ['from uwsgi']
    assert 'ERROR' not in log.read_text()


def test_jobs_run_under_gevent_monkey_patching(sqlite_db_url):
    result = subprocess.run([sys.executable, os.path.join(TESTS, 'gevent_jobs.py'),
                             sqlite_db_url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {'states': ['succeeded'] * 5, 'rows': [f'row {i}' for i in range(5)],
                      'sessions': 5}
