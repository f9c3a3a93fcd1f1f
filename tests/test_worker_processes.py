"""The worker command with real processes: ``python -m tgext.asyncjob worker`` and
``gearbox asyncjob-worker`` next to a web process served by ``gearbox serve``.

The application is :mod:`sqlapp` (laid out as a quickstart, configured by an .ini);
its jobs write one ``job_runs`` row per run that commits, so "exactly once" is
counted in the database. Every process is started by :class:`processes.Processes`
and SIGKILLed at teardown if still running.
"""

import concurrent.futures
import os
import signal
import sys
import time
import uuid

import pytest
import sqlalchemy as sa

import processes
from processes import get_json
from services import mariadb_server_url, wait_for

# A short lease for the kill -9 test, so a dead worker's jobs are rescued within seconds
# (still several heartbeats long: a loaded machine must not make a live worker look dead).
LEASE = {"asyncjob.backend.lease_timeout": "5", "asyncjob.backend.heartbeat_interval": "0.5",
         "asyncjob.backend.rescue_interval": "1"}
# Seconds allowed for a rescue: the lease, the rescuing duty's period, a loaded machine.
RESCUE_TIMEOUT = 45
# Seconds allowed for the 10,000 jobs to be done (measured: see the test's output).
BULK_TIMEOUT = 600



class SqlApp:
    """sqlapp on one database: its .ini files, processes and ``job_runs`` rows."""

    def __init__(self, db_url, directory, settings=None):
        import sqlapp
        from sqlapp.model import create_tables
        self.db_url, self.directory = db_url, str(directory)
        self.settings = {"asyncjob.backend": "sqlalchemy", **(settings or {})}
        self.procs = processes.Processes(directory)
        self.write_ini = sqlapp.write_ini
        create_tables(db_url)
        self.engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)

    def ini(self, name="app", port=8080, **settings):
        """Write ``name.ini`` with the app's settings plus ``settings``; return its path."""
        return self.write_ini(os.path.join(self.directory, name + ".ini"), db_url=self.db_url,
                              port=port, settings={**self.settings, **settings})

    def web(self, **settings):
        """A started ``gearbox serve`` of the app (``url`` attribute)."""
        return self.procs.web(lambda path, port: self.write_ini(
            path, db_url=self.db_url, port=port, settings={**self.settings, **settings}))

    def worker(self, *options, **settings):
        """A started ``python -m tgext.asyncjob worker`` of the app."""
        return self.procs.worker(self.ini("worker-" + uuid.uuid4().hex[:6], **settings),
                                 *options)

    def runs(self):
        """``{key: number of committed runs}``."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.text(
                "SELECT job_key, COUNT(*) FROM job_runs GROUP BY job_key")).all())

    def total_runs(self):
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT COUNT(*) FROM job_runs")).scalar()

    def jobs_rows(self):
        """The rows of the sqlalchemy backend's jobs table, for failure messages."""
        with self.engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT name, state, worker_id, attempt, started_at FROM asyncjob_jobs")).all()

    def pids(self):
        with self.engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT DISTINCT pid FROM job_runs")).scalars())

    def close(self):
        try:
            self.procs.close()
        finally:
            self.engine.dispose()


@pytest.fixture
def pg(postgres_db_url, tmp_path):
    """sqlapp on a fresh PostgreSQL schema; its processes are killed before it is dropped."""
    app = SqlApp(postgres_db_url, tmp_path)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def mariadb(tmp_path):
    """sqlapp on the local MariaDB (``$ASYNCJOB_TEST_MARIADB_URL``), in a database of
    its own (made here, dropped after): test runs side by side never share tables."""
    server_url = mariadb_server_url()
    name = "test_workercmd_%s" % uuid.uuid4().hex[:12]
    server = sa.create_engine(server_url, poolclass=sa.pool.NullPool)
    try:
        with server.begin() as conn:
            conn.execute(sa.text("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % name))
    except sa.exc.OperationalError as exc:
        server.dispose()
        pytest.fail("MariaDB is not reachable at %s (set ASYNCJOB_TEST_MARIADB_URL): %s"
                    % (server_url, exc), pytrace=False)
    app = SqlApp("%s%s?charset=utf8mb4" % (server_url, name), tmp_path)
    try:
        yield app
    finally:
        try:
            app.close()
        finally:
            with server.begin() as conn:
                conn.execute(sa.text("DROP DATABASE `%s`" % name))
            server.dispose()


def status(web, jobid):
    return get_json(web.url, "status", jobid=jobid)


def wait_state(web, jobid, state, timeout=30):
    """Wait until the web process reports ``state`` for ``jobid``; return the status."""
    return wait_for(lambda: (lambda s: s if s["state"] == state else None)(status(web, jobid)),
                    timeout=timeout,
                    message=lambda: "job %s is %s, not %s" % (jobid, status(web, jobid), state))


# -- the command itself ---------------------------------------------------------------

COMMANDS = {
    "python -m": lambda ini: ["python", "-m", "tgext.asyncjob", "worker", ini],
    "gearbox": lambda ini: [os.path.join(os.path.dirname(sys.executable), "gearbox"),
                            "asyncjob-worker", "-c", ini],
}


def test_command_line_has_subcommands(capsys):
    from tgext.asyncjob import cli
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "worker" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["worker", "app.ini", "--threads", "0"])
    assert exc.value.code == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_threads_backend_is_refused(command, tmp_path):
    import sqlapp
    ini = sqlapp.write_ini(str(tmp_path / "app.ini"), db_url="sqlite:///%s" % (tmp_path / "a.db"))
    procs = processes.Processes(tmp_path)
    try:
        proc = procs.start("worker", COMMANDS[command](ini))
        assert proc.wait_exit() == 2
        assert "asyncjob.backend = threads" in proc.output()
        assert "only in its threads" in proc.output()
    finally:
        procs.close()


def test_application_without_queue_is_refused(tmp_path):
    import sqlapp
    ini = sqlapp.write_ini(str(tmp_path / "app.ini"), db_url="sqlite:///%s" % (tmp_path / "a.db"),
                           settings={"asyncjob.enabled": "false"})
    procs = processes.Processes(tmp_path)
    try:
        proc = procs.start("worker", COMMANDS["python -m"](ini))
        assert proc.wait_exit() == 2
        assert "no running asyncjob queue" in proc.output()
    finally:
        procs.close()


def test_missing_ini_and_bad_app_are_clear_errors(tmp_path):
    procs = processes.Processes(tmp_path)
    try:
        missing = procs.start("w1", ["python", "-m", "tgext.asyncjob", "worker", "nope.ini"])
        bad = procs.start("w2", ["python", "-m", "tgext.asyncjob", "worker", "--app", "sqlapp"])
        neither = procs.start("w3", ["python", "-m", "tgext.asyncjob", "worker"])
        assert [p.wait_exit() for p in (missing, bad, neither)] == [2, 2, 2]
        assert "no such configuration file" in missing.output()
        assert "--app wants module:factory" in bad.output()
        assert "an .ini file, or --app module:factory" in neither.output()
    finally:
        procs.close()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_rq_backend_runs_an_rq_worker(command, sqlite_db_url, redis_client, redis_url,
                                      tmp_path):
    queue_name = "workercmd-%s" % uuid.uuid4().hex[:8]
    app = SqlApp(sqlite_db_url, tmp_path, settings={
        "asyncjob.backend": "rq", "asyncjob.backend.redis_url": redis_url,
        "asyncjob.backend.queue_name": queue_name})
    try:
        web = app.web()
        jobid = get_json(web.url, "queue", key="by-rq")["jobid"]
        threads = app.procs.start("worker", COMMANDS[command](app.ini()) + ["--threads", "2"])
        assert threads.wait_exit() == 2
        assert "one job at a time per worker process" in threads.output()
        proc = app.procs.start("worker", COMMANDS[command](app.ini()) + ["--burst"])
        assert proc.wait_exit() == 0, proc.tail()
        assert app.runs() == {"by-rq": 1}
        assert status(web, jobid)["state"] == "succeeded"
        assert "rq backend" in proc.output()
    finally:
        app.close()


# -- the sqlalchemy backend in worker processes ---------------------------------------

def test_app_factory_worker_runs_jobs(pg):
    web = pg.web(**{"asyncjob.backend.in_process": "false"})
    jobid = get_json(web.url, "queue", key="by-factory")["jobid"]
    pg.procs.env["SQLAPP_SETTINGS"] = __import__("json").dumps(
        {"sqlalchemy.url": pg.db_url, **pg.settings})
    proc = pg.procs.start("worker", ["python", "-m", "tgext.asyncjob", "worker",
                                     "--app", "sqlapp.wsgi:make_app", "--burst"])
    assert proc.wait_exit() == 0, proc.tail()
    assert pg.runs() == {"by-factory": 1}
    assert status(web, jobid)["state"] == "succeeded"


def test_worker_keeps_its_app_from_running_jobs_in_process(pg):
    # The .ini says the app runs jobs in its own threads too; the worker command
    # overrides it: the job runs in the work() loop only, i.e. once, after the gate.
    started, gate = os.path.join(pg.directory, "started"), os.path.join(pg.directory, "gate")
    web = pg.web(**{"asyncjob.backend.in_process": "false"})
    worker = pg.worker("--threads", "1", **{"asyncjob.backend.in_process": "true",
                                             "asyncjob.workers": "4"})
    first = get_json(web.url, "queue", job="gate", key="gated", started=started,
                     gate=gate)["jobid"]
    second = get_json(web.url, "queue", key="after")["jobid"]
    wait_for(lambda: os.path.exists(started), timeout=30, message="the gated job never started")
    # One thread: the second job waits for the first; extra in-process threads would
    # have run it already.
    assert status(web, second)["state"] == "queued", (
        status(web, first), status(web, second), pg.jobs_rows(), worker.tail())
    open(gate, "w").close()
    wait_state(web, second, "succeeded")
    assert status(web, first)["state"] == "succeeded"
    assert pg.runs() == {"gated": 1, "after": 1}
    assert pg.pids() == {worker.pid}


def gated_job_then_sigterm(pg, key, stop_timeout):
    """A web process without threads of its own, a worker with ``stop_timeout``, a
    ``gate`` job running in it, then SIGTERM to the worker. Returns ``(web, worker,
    jobid, open_gate)``."""
    started, gate = os.path.join(pg.directory, "started"), os.path.join(pg.directory, "gate")
    web = pg.web(**{"asyncjob.backend.in_process": "false"})
    worker = pg.worker(**{"asyncjob.stop_timeout": str(stop_timeout)})
    jobid = get_json(web.url, "queue", job="gate", key=key, started=started,
                     gate=gate)["jobid"]
    wait_for(lambda: os.path.exists(started), timeout=30, message="the job never started")
    worker.signal(signal.SIGTERM)
    worker.wait_output("SIGTERM, stopping")
    return web, worker, jobid, lambda: open(gate, "w").close()


def test_sigterm_lets_the_running_job_finish(pg):
    web, worker, jobid, open_gate = gated_job_then_sigterm(pg, "graceful", stop_timeout=60)
    open_gate()
    assert worker.wait_exit() == 0, worker.tail()
    assert pg.runs() == {"graceful": 1}
    assert status(web, jobid)["state"] == "succeeded"


def test_sigterm_hands_a_job_still_running_at_stop_timeout_back(pg):
    web, worker, jobid, open_gate = gated_job_then_sigterm(pg, "handed-back", stop_timeout=1)
    # The job would wait a minute for its gate: the worker does not wait for it.
    assert worker.wait_exit(timeout=30) == 0, worker.tail()
    assert status(web, jobid)["state"] == "queued"
    open_gate()
    pg.worker()
    wait_state(web, jobid, "succeeded")
    assert pg.runs() == {"handed-back": 1}


def test_burst_worker_exits_when_no_job_is_left(pg):
    web = pg.web(**{"asyncjob.backend.in_process": "false"})
    get_json(web.url, "queue_many", prefix="burst", count="20")
    proc = pg.procs.start("worker", ["python", "-m", "tgext.asyncjob", "worker",
                                     pg.ini(), "--burst", "--threads", "3"])
    assert proc.wait_exit() == 0, proc.tail()
    assert pg.runs() == {"burst-%d" % n: 1 for n in range(20)}


def test_queue_option_selects_the_jobs_a_worker_runs(pg):
    web = pg.web(**{"asyncjob.backend.in_process": "false",
                    "asyncjob.backend.queue_name": "mail"})
    jobid = get_json(web.url, "queue", key="mailed")["jobid"]
    ini = pg.ini()

    def burst(*queues):
        options = [a for q in queues for a in ("--queue", q)]
        proc = pg.procs.start("worker", ["python", "-m", "tgext.asyncjob", "worker", ini,
                                         "--burst", *options])
        assert proc.wait_exit() == 0, proc.tail()

    burst("reports")
    assert pg.runs() == {} and status(web, jobid)["state"] == "queued"
    burst("reports", "mail")
    assert pg.runs() == {"mailed": 1}


def queue_concurrently(web, prefix, total, batch, requests=4):
    """Queue ``count(prefix-N)`` for N < ``total``: ``batch`` jobs per request, up to
    ``requests`` requests at a time (the web server runs a thread per request)."""
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        answers = pool.map(lambda start: get_json(web.url, "queue_many", prefix=prefix,
                                                  start=start, count=batch),
                           range(0, total, batch))
        assert sum(len(a["jobids"]) for a in answers) == total


def test_10000_jobs_over_three_workers_and_the_web_threads(pg):
    """Each of 10,000 jobs succeeds exactly once, run by 3 worker processes and the
    web process's own threads."""
    total, batch = 10000, 500
    web = pg.web(**{"asyncjob.workers": "2"})
    workers = [pg.worker("--threads", "2") for _ in range(3)]
    began = time.monotonic()
    queue_concurrently(web, "bulk", total, batch)
    queued = time.monotonic()
    wait_for(lambda: pg.total_runs() >= total, timeout=BULK_TIMEOUT, interval=0.2,
             message=lambda: "%d of %d jobs ran" % (pg.total_runs(), total))
    done = time.monotonic()
    print("\n10,000 jobs, 3 worker processes x 2 threads + 2 web threads: queued in %.1f s, "
          "all done %.1f s after the first was queued" % (queued - began, done - began))
    runs = pg.runs()
    assert len(runs) == total
    assert set(runs.values()) == {1}, {k: n for k, n in runs.items() if n != 1}
    assert {w.pid for w in workers} <= pg.pids()
    assert web.pid in pg.pids()
    assert all(w.alive() for w in workers)


def test_kill_9_of_a_worker_mid_job_is_rescued_by_another(pg):
    marker = os.path.join(pg.directory, "held")
    web = pg.web(**{"asyncjob.backend.in_process": "false"})
    pg.settings.update(LEASE)
    first = pg.worker()
    jobid = get_json(web.url, "queue", job="hold", key="held", marker=marker,
                     retries="1", backoff="0")["jobid"]
    wait_for(lambda: os.path.exists(marker), timeout=30, message="the job never started")
    with open(marker) as f:
        assert int(f.read()) == first.pid
    first.kill()
    pg.worker()
    wait_state(web, jobid, "succeeded", timeout=RESCUE_TIMEOUT)
    # The killed run's row was flushed in its transaction, never committed.
    assert pg.runs() == {"held": 1}


def test_request_that_aborts_after_queueing_leaves_no_job(pg):
    web = pg.web()  # its own threads would run the job if it existed
    get_json(web.url, "queue_then_fail", status=500, key="aborted")
    after = get_json(web.url, "queue", key="committed")["jobid"]
    wait_state(web, after, "succeeded")
    proc = pg.procs.start("worker", ["python", "-m", "tgext.asyncjob", "worker",
                                     pg.ini(), "--burst"])
    assert proc.wait_exit() == 0, proc.tail()
    assert pg.runs() == {"committed": 1}


def test_job_committed_then_web_sigkilled_runs_on_a_later_worker(pg):
    web = pg.web(**{"asyncjob.backend.in_process": "false"})
    jobid = get_json(web.url, "queue", key="survivor")["jobid"]
    web.kill()  # at once: no atexit, no clean shutdown
    proc = pg.procs.start("worker", ["python", "-m", "tgext.asyncjob", "worker",
                                     pg.ini(), "--burst"])
    assert proc.wait_exit() == 0, proc.tail()
    assert pg.runs() == {"survivor": 1}
    assert status(pg.web(), jobid)["state"] == "succeeded"


def test_delayed_jobs_and_retries_survive_a_restart_of_every_process(pg):
    marker = os.path.join(pg.directory, "flaky")
    web = pg.web()
    worker = pg.worker()
    delayed = get_json(web.url, "queue", key="delayed", delay="6")["jobid"]
    retried = get_json(web.url, "queue", job="flaky", key="retried", marker=marker,
                       retries="1", backoff="6")["jobid"]
    wait_for(lambda: os.path.exists(marker), timeout=30, message="the flaky job never ran")
    wait_state(web, retried, "queued")  # its retry waits in the database
    web.kill()
    worker.kill()
    web = pg.web()
    pg.worker()
    wait_state(web, delayed, "succeeded")
    wait_state(web, retried, "succeeded")
    assert pg.runs() == {"delayed": 1, "retried": 1}


def test_mariadb_each_job_once_over_two_processes(mariadb):
    total = 2000
    web = mariadb.web(**{"asyncjob.backend.in_process": "false"})
    workers = [mariadb.worker("--threads", "2") for _ in range(2)]
    queue_concurrently(web, "maria", total, 500)
    wait_for(lambda: mariadb.total_runs() >= total, timeout=BULK_TIMEOUT, interval=0.2,
             message=lambda: "%d of %d jobs ran" % (mariadb.total_runs(), total))
    runs = mariadb.runs()
    assert len(runs) == total and set(runs.values()) == {1}
    assert mariadb.pids() == {w.pid for w in workers}
