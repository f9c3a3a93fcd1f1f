"""The jobs command with real processes: ``python -m tgext.asyncjob jobs`` and
``gearbox asyncjob-jobs`` against :mod:`sqlapp` configured by its .ini, next to real
worker processes (the sqlalchemy backend on SQLite and PostgreSQL, rq with a real RQ
worker) and the threads backend with the Redis tracker.

Jobs are queued by a queue in the test process on the same database or Redis (it runs
none itself); each command is a fresh process whose stdout (the table, or ``--json``)
and exit status the test reads.
"""

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from services import free_port, wait_for
from test_worker_processes import LEASE, SqlApp
from tgext.asyncjob import JobQueue, JobState
from tgext.asyncjob.jobscli import duration
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

GEARBOX = os.path.join(os.path.dirname(sys.executable), "gearbox")
#: Seconds one command may take (it loads the whole application).
COMMAND_TIMEOUT = 120


def jobs(app, ini, *args, gearbox=False):
    """Run the jobs command; return ``(status, stdout, stderr)``."""
    command = ([GEARBOX, "asyncjob-jobs", "-c", ini] if gearbox
               else [sys.executable, "-m", "tgext.asyncjob", "jobs", "-c", ini])
    done = subprocess.run(command + list(args), cwd=app.directory, env=app.procs.env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    return done.returncode, done.stdout, done.stderr


def jobs_json(app, ini, *args, **kwargs):
    status, out, err = jobs(app, ini, *args, "--json", **kwargs)
    assert status == 0, err
    return json.loads(out)


def wait_state(q, jobid, state, timeout=60):
    wait_for(lambda: q.get_status(jobid).state is state, timeout=timeout,
             message=lambda: "job %s is %s, not %s" % (jobid, q.get_status(jobid), state))


def worker_rows(app):
    with app.engine.connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM asyncjob_workers")).scalar()


@pytest.fixture(params=["sqlite", "postgresql"])
def sqlapp_db(request, tmp_path):
    url = request.getfixturevalue("postgres_db_url" if request.param == "postgresql"
                                  else "sqlite_db_url")
    app = SqlApp(url, tmp_path, settings=LEASE)
    try:
        yield app
    finally:
        app.close()


def test_jobs_command_on_the_sqlalchemy_backend(sqlapp_db, tmp_path):
    from sqlapp import jobs as sqljobs
    app = sqlapp_db
    ini = app.ini()
    q = JobQueue(backend="sqlalchemy", backend_options={"url": app.db_url, "in_process": False})
    try:
        early = q.perform(sqljobs.count, ("early",))
        status, out, err = jobs(app, ini, "health")
        assert status == 1 and out.startswith("FAIL")
        assert "no worker is alive for the sqlalchemy backend" in err
        # The command itself ran nothing and is no worker.
        assert q.get_status(early).state is JobState.QUEUED and worker_rows(app) == 0

        worker = app.worker()
        wait_state(q, early, JobState.SUCCEEDED)
        health = jobs_json(app, ini, "health", gearbox=True)
        assert health["ok"] is True and len(health["workers"]) == 1
        assert health["backend"] == "sqlalchemy"

        marker = str(tmp_path / "flaky-marker")
        bad = q.perform(sqljobs.flaky, ("f", marker))
        wait_state(q, bad, JobState.FAILED)
        status, out, _ = jobs(app, ini, "list")
        lines = out.splitlines()
        assert status == 0 and lines[0].split()[:3] == ["ID", "STATE", "NAME"]
        assert lines[1].split()[:3] == [bad, "failed", "sqlapp.jobs.flaky"]
        assert lines[2].split()[:3] == [early, "succeeded", "sqlapp.jobs.count"]
        assert "kept: queued 0, running 0, succeeded 1, failed 1, cancelled 0" in lines[-1]
        listed = jobs_json(app, ini, "list", "--state", "failed")
        assert [j["id"] for j in listed["jobs"]] == [bad] and listed["counts"]["failed"] == 1
        named = jobs_json(app, ini, "list", "--name", "sqlapp.jobs.count", "--limit", "5")
        assert [j["id"] for j in named["jobs"]] == [early]
        assert jobs_json(app, ini, "list", "--offset", "1")["jobs"][0]["id"] == early

        shown = jobs_json(app, ini, "show", bad)
        assert (shown["args"], shown["error"]["type"]) == (["f", marker], "ValueError")
        assert "first run of f fails on purpose" in shown["error"]["traceback"]
        status, out, _ = jobs(app, ini, "show", bad)
        assert status == 0 and "ValueError: first run of f fails on purpose" in out

        retried = jobs_json(app, ini, "retry", bad)
        assert retried["retry_of"] == bad
        wait_state(q, retried["id"], JobState.SUCCEEDED)
        assert app.runs() == {"early": 1, "f": 1}
        assert jobs_json(app, ini, "show", bad)["retried_as"] == retried["id"]
        assert jobs_json(app, ini, "show", retried["id"])["retry_of"] == bad
        status, _, err = jobs(app, ini, "retry", bad)
        assert status == 1 and "retried already" in err

        later = q.perform(sqljobs.count, ("later",), delay=3600)
        status, _, err = jobs(app, ini, "delete", later)
        assert status == 1 and "is queued: only finished jobs can be deleted" in err
        status, out, _ = jobs(app, ini, "cancel", later, gearbox=True)
        assert status == 0 and out.strip() == "%s: cancelled" % later
        status, _, err = jobs(app, ini, "cancel", later)
        assert status == 1 and "is cancelled" in err
        assert jobs_json(app, ini, "delete", early) == {"deleted": early}
        status, _, err = jobs(app, ini, "show", early)
        assert status == 1 and "no job %s" % early in err

        assert jobs_json(app, ini, "purge", "--older-than", "1h")["purged"] == 0
        status, out, _ = jobs(app, ini, "purge", "--older-than", "0")
        assert status == 0 and out.startswith("purged 3 finished job(s)")
        assert jobs_json(app, ini, "counts") == dict.fromkeys(
            ["queued", "running", "succeeded", "failed", "cancelled"], 0)

        worker.kill()  # SIGKILL: its row stays, its heartbeat ages past the lease
        wait_for(lambda: jobs(app, ini, "health")[0] == 1, timeout=90,
                 message="health still OK after the only worker was killed")
    finally:
        q.stop(5)
        q.backend.engines.dispose()


def test_jobs_command_on_the_rq_backend(sqlite_db_url, redis_client, redis_url, tmp_path):
    from sqlapp import jobs as sqljobs
    queue_name = "jobscmd-%s" % uuid.uuid4().hex[:8]
    app = SqlApp(sqlite_db_url, tmp_path, settings={
        "asyncjob.backend": "rq", "asyncjob.backend.redis_url": redis_url,
        "asyncjob.backend.queue_name": queue_name})
    q = JobQueue(RedisProgressTracker(url=redis_url), backend="rq",
                 backend_options={"redis_url": redis_url, "queue_name": queue_name})
    try:
        ini = app.ini()
        status, _, err = jobs(app, ini, "health")
        assert status == 1 and "no worker is alive for the rq backend" in err
        worker = app.worker()
        wait_for(lambda: jobs(app, ini, "health")[0] == 0, timeout=60,
                 message="health never OK with an RQ worker running")
        assert len(jobs_json(app, ini, "health")["workers"]) == 1

        marker = str(tmp_path / "flaky-marker")
        bad = q.perform(sqljobs.flaky, ("r", marker))
        wait_state(q, bad, JobState.FAILED)
        listed = jobs_json(app, ini, "list", "--state", "failed")
        assert [j["id"] for j in listed["jobs"]] == [bad]
        assert listed["jobs"][0]["args"] == ["r", marker]
        new = jobs_json(app, ini, "retry", bad)["id"]
        wait_state(q, new, JobState.SUCCEEDED)
        assert app.runs() == {"r": 1}
        assert jobs_json(app, ini, "counts")["succeeded"] == 1

        worker.signal(signal.SIGTERM)  # RQ deregisters a worker that stops
        assert worker.wait_exit() == 0, worker.tail()
        status, _, err = jobs(app, ini, "health")
        assert status == 1 and "no worker is alive for the rq backend" in err
    finally:
        q.stop(5)
        app.close()


def fails():
    raise ValueError("fails in the test process")


def test_jobs_command_with_the_threads_backend_reads_the_redis_tracker(
        sqlite_db_url, redis_client, redis_url, tmp_path, started):
    app = SqlApp(sqlite_db_url, tmp_path, settings={"asyncjob.backend": "threads",
                                                   "asyncjob.tracker": redis_url})
    try:
        q = started(RedisProgressTracker(url=redis_url))
        jobid = q.perform(fails)
        wait_state(q, jobid, JobState.FAILED)
        ini = app.ini()
        status, out, _ = jobs(app, ini, "health")
        assert status == 0 and "only the tracker was checked" in out
        assert [j["id"] for j in jobs_json(app, ini, "list")["jobs"]] == [jobid]
        for action in ("retry", "cancel"):
            status, _, err = jobs(app, ini, action, jobid)
            assert status == 1 and "threads backend runs jobs in the web process" in err

        down = app.ini("down", **{"asyncjob.tracker": "redis://127.0.0.1:%d/5" % free_port()})
        status, out, err = jobs(app, down, "health", "--timeout", "0.5")
        assert status == 1 and "the tracker is unreachable" in err
        memory = app.ini("memory", **{"asyncjob.tracker": "memory"})
        status, _, err = jobs(app, memory, "list")
        assert status == 1 and "memory tracker keeps job records in the memory" in err
    finally:
        app.close()


def test_command_line_mistakes_exit_2(tmp_path):
    import processes
    procs = processes.Processes(tmp_path)
    done = subprocess.run([sys.executable, "-m", "tgext.asyncjob", "jobs", "-c", "nope.ini",
                           "list"], cwd=str(tmp_path), env=procs.env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT)
    assert done.returncode == 2 and "no such configuration file" in done.stderr
    done = subprocess.run([sys.executable, "-m", "tgext.asyncjob", "jobs", "purge",
                           "--older-than", "soon"], cwd=str(tmp_path), env=procs.env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert done.returncode == 2 and "not a duration: 'soon'" in done.stderr


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800),
                                           ("12h", 43200), ("7d", 604800), ("2w", 1209600),
                                           ("1d12h", 129600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "7 days", "-1d", "1d-2h", "12x"])
def test_bad_durations_are_refused(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_an_application_loaded_to_operate_on_jobs_runs_nothing(make_app, sqlite_db_url):
    """What the jobs command loads the application under: the queue is built (its
    records readable), its worker threads and periodic jobs are not started."""
    from tgext.asyncjob import periodic
    from tgext.asyncjob.tgwiring import operating_only
    options = {"periodic": [("* * * * * *", "periodicjobs:record")]}
    with operating_only("a test"):
        quiet = make_app(sqlite_db_url, plug_options=options)
    q = quiet.app_globals.asyncjob_queue
    assert q.backend.threads == [] and q not in periodic.RUNNERS
    assert q.get_status("0" * 32).state is JobState.NOT_FOUND
    q.stop(5)
    busy = make_app(sqlite_db_url, plug_options=options)  # the same, outside the command
    q = busy.app_globals.asyncjob_queue
    assert len(q.backend.threads) == 1 and q in periodic.RUNNERS
