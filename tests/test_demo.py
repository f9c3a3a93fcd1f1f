"""``python -m tgext.asyncjob.demo`` starts, serves on 127.0.0.1, and stops cleanly."""

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from services import free_port, wait_for

STARTUP_TIMEOUT = 30
STOP_TIMEOUT = 15


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def test_demo_cli_serves_and_stops(tmp_path):
    port = free_port()
    db = tmp_path / "cli.sqlite"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tgext.asyncjob.demo", "--port", str(port),
         "--db", "sqlite:///%s" % db],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = "http://127.0.0.1:%d/" % port
        status, body = wait_for(lambda: proc.poll() is None and _get(url), STARTUP_TIMEOUT,
                                interval=0.1,
                                message=lambda: "the demo did not serve %s (exit code %r)"
                                % (url, proc.poll()))
        assert status == 200
        assert "tgext.asyncjob demo" in body
        assert db.exists()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=STOP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "serving on http://127.0.0.1:%d/" % port in output
    assert "stopped" in output


def test_demo_cli_ctrl_c(tmp_path):
    """Ctrl-C (SIGINT) stops it the same way."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tgext.asyncjob.demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        url = "http://127.0.0.1:%d/" % port
        wait_for(lambda: proc.poll() is None and _get(url), STARTUP_TIMEOUT, interval=0.1,
                 message=lambda: "the demo did not serve %s (exit code %r)" % (url, proc.poll()))
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=STOP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert "stopped" in output
