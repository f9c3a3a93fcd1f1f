"""The rq backend against a real Redis and PostgreSQL, with real worker processes
started through ``python -m tgext.asyncjob.rqworker``.

Each test gets its own RQ queue name on a dedicated Redis db (13), and its own
PostgreSQL schema (``postgres_db_url``).
"""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis
import rq
import sqlalchemy

import tgext.asyncjob as aj
from tgext.asyncjob.backends.rq import RQBackend
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from rqapp import TESTS_DIR, jobs, write_ini
from rqapp.controllers import RQRoot
from services import wait_for

RQ_DB = 13  # a Redis db of their own: RQ keys never meet other tests' keys
WORKER_START_TIMEOUT = 30
WORKER_STOP_TIMEOUT = 15


@pytest.fixture
def rq_redis_url(redis_url):
    """``redis_url`` on db 13."""
    return redis_url.rsplit("/", 1)[0] + "/%d" % RQ_DB


@pytest.fixture
def rq_setup(tmp_path, postgres_db_url, rq_redis_url):
    """A fresh queue name, an .ini for worker processes, and cleanup of its keys."""
    queue_name = "asyncjob-test-%s" % uuid.uuid4().hex[:12]
    ini = write_ini(tmp_path / "app.ini", db_url=postgres_db_url,
                    redis_url=rq_redis_url, queue_name=queue_name)
    client = redis.Redis.from_url(rq_redis_url)
    setup = dict(queue_name=queue_name, ini=ini, redis_url=rq_redis_url,
                 db_url=postgres_db_url, client=client, tmp_path=tmp_path)
    yield setup
    for key in client.scan_iter(match="rq:*%s*" % queue_name):
        client.delete(key)
    client.close()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.fixture
def workers(rq_setup):
    """``start(*extra_args)`` starts a worker process on the test's .ini; all are
    stopped (SIGTERM: RQ's warm shutdown) at teardown."""
    started = []

    def start(*extra):
        index = len(started)
        log = open(rq_setup["tmp_path"] / ("worker-%d.log" % index), "w+")
        name = "w%d-%s" % (index, uuid.uuid4().hex[:8])
        proc = subprocess.Popen(
            [sys.executable, "-m", "tgext.asyncjob.rqworker", rq_setup["ini"],
             "--name", name, *extra],
            cwd=str(rq_setup["tmp_path"]), env=_env(), stdout=log, stderr=subprocess.STDOUT)
        proc.log, proc.worker_name = log, name
        started.append(proc)
        return proc

    start.logs = lambda: "\n".join(_log_of(p) for p in started)
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WORKER_STOP_TIMEOUT)
        proc.log.close()


def _log_of(proc):
    proc.log.flush()
    proc.log.seek(0)
    return "--- worker %s (exit %s) ---\n%s" % (proc.worker_name, proc.poll(),
                                                proc.log.read()[-4000:])


def _wait_registered(rq_setup, procs, logs):
    """Wait until every worker process is registered on the test's RQ queue."""
    queue = rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"])
    names = {p.worker_name for p in procs}
    wait_for(lambda: names <= {w.name for w in rq.Worker.all(queue=queue)},
             timeout=WORKER_START_TIMEOUT,
             message=lambda: "workers did not register:\n" + logs())


@pytest.fixture
def rq_app(make_app, rq_setup):
    """The web side: the sample app, plugged with backend='rq', served by WebTest."""
    def build(**options):
        return make_app(rq_setup["db_url"], enable="plug", root=RQRoot, plug_options=dict(
            backend="rq",
            backend_options=dict(redis_url=rq_setup["redis_url"],
                                 queue_name=rq_setup["queue_name"]),
            **options))
    return build


def _statuses(app, ids):
    return app.post("/statuses", json.dumps(list(ids)),
                    content_type="application/json").json["statuses"]


def _rows(engine):
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT name, count(*) FROM rows GROUP BY name")
                            ).all()


def _row_count(engine):
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT count(*) FROM rows")).scalar()


# ------------------------------------------------------------------------ tests


def test_thousand_jobs_two_workers(rq_app, rq_setup, workers):
    app = rq_app()
    queue = app.app_globals.asyncjob_queue
    assert isinstance(queue.backend, RQBackend)
    # The default memory tracker was replaced by one on the backend's Redis.
    assert isinstance(queue.tracker, RedisProgressTracker)

    # One worker forks a child per job (the default), the other runs them itself.
    procs = [workers(), workers("--simple")]
    _wait_registered(rq_setup, procs, workers.logs)

    # Progress of a running job, written by a worker process, read by the web process.
    gate_key = "gate-%s" % uuid.uuid4().hex
    gate = app.get("/queue", params={"job": "gate", "name": "gate",
                                     "redis_url": rq_setup["redis_url"],
                                     "key": gate_key}).json["jobid"]
    def gate_progress():
        progress = app.get("/progress", params={"jobid": gate}).json["progress"]
        return progress if progress not in (None, [-1, None]) else None

    progress = wait_for(gate_progress, timeout=30,
                        message=lambda: "gate job never ran:\n" + workers.logs())
    assert progress == [42, {"waiting": "gate"}]
    assert _statuses(app, [gate])[gate]["state"] == "running"
    rq_setup["client"].rpush(gate_key, "go")

    count = 1000
    t0 = time.perf_counter()
    ids = [app.get("/queue", params={"name": "job-%04d" % i}).json["jobid"]
           for i in range(count)]
    t_queued = time.perf_counter()
    wait_for(lambda: _row_count(app.engine) >= count + 1, timeout=90, interval=0.05,
             message=lambda: "%d rows of %d\n%s" % (_row_count(app.engine), count + 1,
                                                    workers.logs()))
    statuses = wait_for(
        lambda: (lambda s: s if all(v["state"] == "succeeded" for v in s.values()) else None)(
            _statuses(app, ids + [gate])),
        timeout=30, interval=0.1, message="not every job is recorded as succeeded")
    elapsed = time.perf_counter() - t0
    print("\n1,000 jobs, 2 rq workers (fork + simple): queued in %.2f s (WebTest requests), "
          "all run and recorded in %.2f s" % (t_queued - t0, elapsed))

    # Every job ran exactly once and wrote its row.
    rows = dict(_rows(app.engine))
    assert rows == {**{"job-%04d" % i: 1 for i in range(count)}, "gate": 1}
    assert len(set(ids)) == count
    ran_by = set()
    for jobid in ids:
        status = statuses[jobid]
        assert status["attempt"] == 1
        assert status["result"]["job"] == jobid  # our id is the job's id in the worker
        assert status["progress"] == 100 and status["data"]["done"] is True
        assert status["name"] == "rqapp.jobs.write_row"
        ran_by.add(status["result"]["worker"])
    for jobid in ids[:10]:  # finished: the 0.3 answer is None
        assert app.get("/progress", params={"jobid": jobid}).json["progress"] is None
    assert ran_by == {p.worker_name for p in procs}
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 0


def test_jobs_survive_the_web_process(rq_app, rq_setup, workers):
    count = 20
    env = _env()
    web = subprocess.run([sys.executable, "-m", "rqapp.webproc", rq_setup["ini"], str(count)],
                         cwd=str(rq_setup["tmp_path"]), env=env, capture_output=True,
                         text=True, timeout=60)
    assert web.returncode == -signal.SIGKILL, web.stderr
    ids = json.loads(web.stdout.strip().splitlines()[-1])
    assert len(ids) == count

    # The web process is gone; the jobs wait in Redis.
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == count
    app = rq_app()  # another web process's view (same Redis, same database)
    assert {s["state"] for s in _statuses(app, ids).values()} == {"queued"}
    assert _row_count(app.engine) == 0

    worker = workers("--burst")
    assert worker.wait(60) == 0, workers.logs()
    statuses = _statuses(app, ids)
    assert {s["state"] for s in statuses.values()} == {"succeeded"}, workers.logs()
    assert dict(_rows(app.engine)) == {"durable-%d" % i: 1 for i in range(count)}


def test_worker_semantics_failure_death_cancel(rq_app, rq_setup, workers):
    app = rq_app()
    ok = app.get("/queue", params={"name": "ok"}).json["jobid"]
    failed = app.get("/queue", params={"job": "fail", "name": "failed"}).json["jobid"]
    died = app.get("/queue", params={"job": "die", "name": "died"}).json["jobid"]
    cancelled = app.get("/queue", params={"name": "cancelled"}).json["jobid"]

    assert app.get("/cancel", params={"jobid": cancelled}).json["cancelled"] is True
    assert app.get("/cancel", params={"jobid": cancelled}).json["cancelled"] is False
    assert app.get("/cancel", params={"jobid": "0" * 32}).json["cancelled"] is False
    assert app.get("/cancel", params={"jobid": "not-ours"}).json["cancelled"] is False
    assert _statuses(app, [cancelled])[cancelled]["state"] == "cancelled"

    worker = workers("--burst")
    assert worker.wait(60) == 0, workers.logs()
    statuses = _statuses(app, [ok, failed, died, cancelled])
    assert statuses[ok]["state"] == "succeeded"
    assert statuses[failed]["state"] == "failed"
    assert statuses[failed]["error"]["type"] == "ValueError"
    assert statuses[died]["state"] == "failed"
    assert statuses[died]["error"]["type"] == "WorkerDied"
    assert statuses[cancelled]["state"] == "cancelled"
    assert statuses[cancelled]["started_at"] is None
    # Only the job that returned committed its row: failures and deaths were aborted.
    assert dict(_rows(app.engine)) == {"ok": 1}
    # A finished job cannot be cancelled.
    assert app.get("/cancel", params={"jobid": ok}).json["cancelled"] is False


def _closure_job():
    secret = 42

    def inner():
        return secret
    return inner


def test_bad_callables_and_arguments_raise_at_the_call_site(rq_app, rq_setup):
    app = rq_app()
    queue = app.app_globals.asyncjob_queue
    tracked_before = {s.id for s in queue.recent(10000)}

    def nested(name):
        return name

    class Local:
        def method(self, name):
            return name

    bad_callables = [
        lambda name: name,
        _closure_job(),
        nested,
        Local().method,
        jobs.tasks.method,  # bound method of a module-level instance
        functools.partial(jobs.write_row),
    ]
    for func in bad_callables:
        with pytest.raises(TypeError, match=r"threads") as info:
            aj.asyncjob_perform(func, "x")
        assert "rq backend" in str(info.value)

    unpicklable = [(threading.Lock(),), ((x for x in ()),), (lambda: None,)]
    for args in unpicklable:
        with pytest.raises(TypeError, match=r"cannot be serialised.*threads"):
            aj.asyncjob_perform(jobs.write_row, *args)
    with pytest.raises(TypeError, match=r"cannot be serialised"):
        aj.asyncjob_perform(jobs.write_row, "x", value=threading.Event())

    # Nothing reached Redis: no RQ job, no tracker record left behind.
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 0
    assert {s.id for s in queue.recent(10000)} == tracked_before

    # What workers can import is accepted.
    good = [aj.asyncjob_perform(f, "good") for f in
            (jobs.write_row, jobs.Tasks.static, jobs.Tasks.klass)]
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 3
    assert [aj.asyncjob_get_status(i).name for i in good] == [
        "rqapp.jobs.write_row", "rqapp.jobs.Tasks.static", "rqapp.jobs.Tasks.klass"]
    assert [aj.asyncjob_get_progress(i) for i in good] == [(-1, None)] * 3


def test_immediate_mode_runs_in_process_with_the_same_checks(rq_app, rq_setup):
    app = rq_app(immediate=True)
    jobid = app.get("/queue", params={"name": "now"}).json["jobid"]
    status = _statuses(app, [jobid])[jobid]
    assert status["state"] == "succeeded"
    assert status["progress"] == 100
    assert dict(_rows(app.engine)) == {"now": 1}
    with pytest.raises(TypeError, match="threads"):
        aj.asyncjob_perform(lambda: None)
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 0
