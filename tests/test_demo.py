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
# Runs the command given after it with SIGINT ignored, as a shell script's background
# job (or a test runner started that way) is: exec keeps the disposition and the pid.
SIGINT_IGNORED = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def run_demo(extra_args, stop_signal, sigint_ignored=False):
    """Start the demo CLI, wait for its index page, stop it with ``stop_signal``.
    Returns (status, body, output, port, returncode)."""
    port = free_port()
    wrapper = [sys.executable, "-c", SIGINT_IGNORED] if sigint_ignored else []
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "tgext.asyncjob.demo", "--port", str(port),
         *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        url = "http://127.0.0.1:%d/" % port
        status, body = wait_for(lambda: proc.poll() is None and _get(url), STARTUP_TIMEOUT,
                                interval=0.1,
                                message=lambda: "the demo did not serve %s (exit code %r)"
                                % (url, proc.poll()))
        proc.send_signal(stop_signal)
        output, _ = proc.communicate(timeout=STOP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return status, body, output, port, proc.returncode


def test_demo_cli_serves_and_stops(tmp_path):
    db = tmp_path / "cli.sqlite"
    status, body, output, port, returncode = run_demo(["--db", "sqlite:///%s" % db],
                                                      signal.SIGTERM)
    assert status == 200
    assert "tgext.asyncjob demo" in body
    assert db.exists()
    assert returncode == 0, output
    assert "serving on http://127.0.0.1:%d/" % port in output
    assert "stopped" in output


def test_demo_cli_ctrl_c():
    """Ctrl-C (SIGINT) stops it the same way."""
    status, _, output, _, returncode = run_demo([], signal.SIGINT)
    assert status == 200
    assert returncode == 0, output
    assert "Traceback" not in output
    assert "stopped" in output


def test_demo_cli_ctrl_c_when_started_with_sigint_ignored():
    """The demo inherits an ignored SIGINT from whoever started it (the test runner,
    a script): Ctrl-C must stop it all the same."""
    status, _, output, _, returncode = run_demo([], signal.SIGINT, sigint_ignored=True)
    assert status == 200
    assert returncode == 0, output
    assert "stopped" in output
