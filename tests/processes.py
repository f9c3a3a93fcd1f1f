"""Real processes for tests: start them, read their logs, signal them, always kill them.

:class:`Processes` starts commands with their output in a log file each (read back
for readiness and for failure messages); :meth:`Processes.close` SIGKILLs whatever is
still running, so a fixture calling it in its teardown leaves nothing behind.
Every wait is :func:`services.wait_for` with a deadline.
"""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

from services import free_port, wait_for

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Seconds a process is given to exit after a signal before the test fails.
EXIT_TIMEOUT = 30
# Seconds a started process is given to become ready.
START_TIMEOUT = 60


class Proc:
    """One started process: ``popen``, its ``name`` and the path of its ``log``."""

    def __init__(self, name, popen, log):
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self):
        return self.popen.pid

    def output(self):
        """Everything the process wrote so far (stdout and stderr)."""
        with open(self.log, errors="replace") as f:
            return f.read()

    def alive(self):
        return self.popen.poll() is None

    def signal(self, signum):
        """Send ``signum`` if the process still runs."""
        if self.alive():
            self.popen.send_signal(signum)

    def kill(self):
        """SIGKILL the process and reap it."""
        self.signal(signal.SIGKILL)
        self.popen.wait(EXIT_TIMEOUT)

    def wait_exit(self, timeout=EXIT_TIMEOUT):
        """Wait for the process to end; return its exit status."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s did not exit within %ss; its output:\n%s"
                                 % (self.name, timeout, self.tail())) from None

    def wait_output(self, text, timeout=START_TIMEOUT):
        """Wait until ``text`` appears in the output (failing early if the process ends)."""
        wait_for(lambda: text in self.output() or not self.alive(), timeout=timeout,
                 message=lambda: "%s never wrote %r:\n%s" % (self.name, text, self.tail()))
        if text not in self.output():
            raise AssertionError("%s ended (status %s) before writing %r:\n%s"
                                 % (self.name, self.popen.poll(), text, self.tail()))

    def tail(self, chars=4000):
        return self.output()[-chars:]


class Processes:
    """The processes of one test, their logs in ``directory``."""

    def __init__(self, directory, env=None):
        self.directory = str(directory)
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (TESTS_DIR, self.env.get("PYTHONPATH")) if p)
        self.started = []

    def start(self, name, args):
        """Start ``args`` (a list; ``python`` means this interpreter) as ``name``."""
        args = [sys.executable if a == "python" else a for a in args]
        log = os.path.join(self.directory, "%s-%d.log" % (name, len(self.started)))
        with open(log, "wb") as out:
            # A session of its own, so close() reaches the children it forks too (an
            # RQ worker's scheduler outlives a SIGKILLed worker otherwise).
            popen = subprocess.Popen(args, cwd=self.directory, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def worker(self, ini, *options, name="worker"):
        """``python -m tgext.asyncjob worker INI OPTIONS``, returned once it is running
        its loop (it logged its start line)."""
        proc = self.start(name, ["python", "-m", "tgext.asyncjob", "worker", ini, *options])
        proc.wait_output("tgext.asyncjob worker (pid %d" % proc.pid)
        return proc

    def web(self, ini_writer, name="web"):
        """``gearbox serve -c web.ini``; ``ini_writer(path, port)`` writes the .ini.
        Returned with ``url`` set once it answers HTTP."""
        port = free_port()
        ini = ini_writer(os.path.join(self.directory, "%s-%d.ini" % (name, port)), port)
        gearbox = os.path.join(os.path.dirname(sys.executable), "gearbox")
        proc = self.start(name, [gearbox, "serve", "-c", ini])
        proc.url = "http://127.0.0.1:%d" % port
        wait_for(lambda: not proc.alive() or _answers(proc.url), timeout=START_TIMEOUT,
                 message=lambda: "%s did not answer:\n%s" % (name, proc.tail()))
        if not proc.alive():
            raise AssertionError("%s ended at start:\n%s" % (name, proc.tail()))
        return proc

    def close(self):
        """SIGKILL every process still running, and whatever each one forked."""
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the process and all it forked are gone already
            if proc.alive():
                proc.popen.wait(EXIT_TIMEOUT)


def _answers(url):
    try:
        with urllib.request.urlopen(url + "/", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def get_json(url, path, status=200, **params):
    """GET ``url/path?params`` and return the decoded JSON answer (checking its status)."""
    full = "%s/%s?%s" % (url, path, urllib.parse.urlencode(params))
    try:
        with urllib.request.urlopen(full, timeout=60) as response:
            code, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    assert code == status, "GET %s: status %s, expected %s: %s" % (full, code, status, body[:2000])
    return json.loads(body) if code == 200 else body
