"""The rq backend against a real Redis and PostgreSQL, with real worker processes
started through ``python -m tgext.asyncjob.rqworker``.

Each test gets its own RQ queue name on the test Redis db (``ASYNCJOB_TEST_REDIS_URL``),
and its own PostgreSQL schema (``postgres_db_url``).
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
import transaction

import tgext.asyncjob as aj
from tgext.asyncjob.job import callable_name
from tgext.asyncjob.backends.rq import RQBackend
from tgext.asyncjob.trackers.memory import MemoryProgressTracker
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from rqapp import TESTS_DIR, jobs, write_ini
from rqapp.contract import stop_process_group
from rqapp.controllers import RQRoot
from services import wait_for

WORKER_START_TIMEOUT = 30
WORKER_STOP_TIMEOUT = 15


@pytest.fixture
def rq_redis_url(redis_url):
    """The test Redis (``ASYNCJOB_TEST_REDIS_URL``): RQ's keys are named by the test's
    queue, so they never meet other tests' keys."""
    return redis_url


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
    for key in client.scan_iter(match="*%s*" % queue_name):  # RQ's and the tests' keys
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

    def start(*extra, command=("tgext.asyncjob.rqworker",)):
        index = len(started)
        log = open(rq_setup["tmp_path"] / ("worker-%d.log" % index), "w+")
        name = "w%d-%s" % (index, uuid.uuid4().hex[:8])
        named = ["--name", name] if command == ("tgext.asyncjob.rqworker",) else []
        proc = subprocess.Popen(
            [sys.executable, "-m", *command, rq_setup["ini"], *named, *extra],
            cwd=str(rq_setup["tmp_path"]), env=_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # its process group ends with it (stop_process_group)
        proc.log, proc.worker_name = log, name
        started.append(proc)
        return proc

    start.logs = lambda: "\n".join(_log_of(p) for p in started)
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        stop_process_group(proc)
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
    """The web side: the sample app, plugged with backend='rq', served by WebTest;
    ``backend_options`` add to the backend's Redis URL and queue name."""
    def build(backend_options=None, **options):
        return make_app(rq_setup["db_url"], enable="plug", root=RQRoot, plug_options=dict(
            backend="rq",
            backend_options=dict(redis_url=rq_setup["redis_url"],
                                 queue_name=rq_setup["queue_name"], **(backend_options or {})),
            **options))
    return build


#: Abandoned-job detection made quick for the tests (defaults: 10, 45 and 15 s).
# abandoned_after leaves 5 missed heartbeats of room: a loaded machine may delay a few.
FAST_DEATH = {"heartbeat_interval": 1, "abandoned_after": 6, "cleanup_interval": 0.5}
#: The documented bound (abandoned_after + cleanup_interval) plus room for a loaded machine.
DEATH_NOTICED_TIMEOUT = FAST_DEATH["abandoned_after"] + FAST_DEATH["cleanup_interval"] + 20


def _fast_death_ini(rq_setup):
    """Rewrite the test's .ini with :data:`FAST_DEATH` for the worker processes."""
    write_ini(rq_setup["ini"], db_url=rq_setup["db_url"], redis_url=rq_setup["redis_url"],
              queue_name=rq_setup["queue_name"],
              extra={"asyncjob.backend.%s" % k: v for k, v in FAST_DEATH.items()})


def _descendants(pid):
    """Pids of every process descended from ``pid`` (read from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _kill_9_with_children(proc):
    """SIGKILL a worker process and, at once, its work horse and scheduler."""
    pids = [proc.pid] + _descendants(proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(WORKER_STOP_TIMEOUT)
    return pids


def _running(jobid):
    status = aj.asyncjob_get_status(jobid)
    return status if status.state is aj.JobState.RUNNING else None


class CallableLog:
    """Hook: the callable (``module.qualname``) each failed or cancelled job names."""

    def __init__(self):
        self.failed, self.cancelled = [], []

    def on_failed(self, job, error):
        self.failed.append((job.id, callable_name(job.func)))

    def on_cancelled(self, job):
        self.cancelled.append((job.id, callable_name(job.func)))


def _finished_status(jobid):
    status = aj.asyncjob_get_status(jobid)
    return status if status.finished else None


def _statuses(app, ids):
    return app.post("/statuses", json.dumps(list(ids)),
                    content_type="application/json").json["statuses"]


def _rows(engine):
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT name, count(*) FROM rows GROUP BY name")
                            ).all()


def _scheduled_ids(rq_setup):
    """Ids of the RQ jobs waiting in RQ's scheduled-jobs registry of the test's queue."""
    queue = rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"])
    return set(queue.scheduled_job_registry.get_job_ids())


def _stamps(rq_setup, key):
    """What ``rqapp.jobs.stamp`` recorded on ``key``: one dict per attempt."""
    return [json.loads(v) for v in rq_setup["client"].lrange(key, 0, -1)]


def _finished(app, ids):
    """The statuses of ``ids`` once all are finished, else None (for wait_for)."""
    statuses = _statuses(app, ids)
    done = all(s["state"] in ("succeeded", "failed", "cancelled") for s in statuses.values())
    return statuses if done else None


def _row_count(engine):
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT count(*) FROM rows")).scalar()


# ------------------------------------------------------------------------ tests


def test_thousand_jobs_two_workers(rq_app, rq_setup, workers):
    app = rq_app()
    queue = app.app_globals.asyncjob_queue
    assert isinstance(queue.backend, RQBackend)
    # The default memory tracker was replaced by one on the backend's Redis.
    assert isinstance(queue.store, RedisProgressTracker)

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
        return progress if progress is not None and progress[0] > 0 else None

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
    # A liveness bound, not a speed test: the machine running the suite may be loaded.
    wait_for(lambda: _row_count(app.engine) >= count + 1, timeout=240, interval=0.05,
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

    # The worker command every backend shares runs the rq backend's work().
    worker = workers("--burst", command=("tgext.asyncjob", "worker"))
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


def test_delayed_job_waits_in_redis_and_survives_the_web_process(rq_app, rq_setup, workers):
    """A delayed job queued by a web process that then dies waits in RQ's scheduled
    jobs, never starts before its eta, and runs once on a worker started afterwards."""
    delay = 4
    key = "stamps:%s" % rq_setup["queue_name"]
    params = dict(job="stamp", name="delayed", redis_url=rq_setup["redis_url"], key=key,
                  delay=delay)
    web = subprocess.run([sys.executable, "-m", "rqapp.webproc", rq_setup["ini"], "1",
                          json.dumps(params)], cwd=str(rq_setup["tmp_path"]), env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert web.returncode == -signal.SIGKILL, web.stderr
    [jobid] = json.loads(web.stdout.strip().splitlines()[-1])

    # The web process is gone; the job waits in Redis, not on the queue.
    app = rq_app()
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 0
    assert _scheduled_ids(rq_setup) == {jobid}
    status = _statuses(app, [jobid])[jobid]
    assert status["state"] == "queued" and status["started_at"] is None
    eta = status["enqueued_at"] + delay

    workers()  # its scheduler moves the job to the queue when due

    def succeeded():
        status = _statuses(app, [jobid])[jobid]
        if time.time() < eta:  # read before its eta: it must still be waiting
            assert status["state"] == "queued", status
        return status if status["state"] == "succeeded" else None

    status = wait_for(succeeded, timeout=60, interval=0.05,
                      message=lambda: "delayed job did not run:\n" + workers.logs())
    stamps = _stamps(rq_setup, key)
    assert len(stamps) == 1 and stamps[0]["started"] >= eta
    assert status["started_at"] >= eta and status["attempt"] == 1
    assert dict(_rows(app.engine)) == {"delayed": 1}
    assert not _scheduled_ids(rq_setup)


def test_retries_wait_in_redis_with_backoff(rq_app, rq_setup, workers):
    """Failed attempts are scheduled again in Redis within the Retry policy's bounds;
    the status counts the attempts; an exhausted job ends failed with its last error."""
    name = rq_setup["queue_name"]
    log_key = "retries:%s" % name
    write_ini(rq_setup["ini"], db_url=rq_setup["db_url"], redis_url=rq_setup["redis_url"],
              queue_name=name, extra={"rqapp.retry_log": log_key})  # workers log retries
    app = rq_app()
    url = rq_setup["redis_url"]
    policies = {"flaky": aj.Retry(on=(ValueError,), max_retries=3, backoff=0.5, factor=2.0),
                "doomed": aj.Retry(on=(ValueError,), max_retries=2, backoff=0.4, jitter=False)}
    ids = {
        "flaky": aj.asyncjob_options(retry=policies["flaky"]).perform(
            jobs.stamp, "flaky", url, "stamps:flaky:%s" % name, fails=2),
        "doomed": aj.asyncjob_options(retry=policies["doomed"]).perform(
            jobs.stamp, "doomed", url, "stamps:doomed:%s" % name, fails=99),
    }
    workers()
    statuses = wait_for(lambda: _finished(app, ids.values()), timeout=60, interval=0.05,
                        message=lambda: "retried jobs did not finish:\n" + workers.logs())

    flaky, doomed = statuses[ids["flaky"]], statuses[ids["doomed"]]
    assert flaky["state"] == "succeeded" and flaky["attempt"] == 3, flaky
    assert doomed["state"] == "failed" and doomed["attempt"] == 3, doomed
    assert doomed["error"]["type"] == "ValueError"
    assert doomed["error"]["message"] == "attempt 3 of doomed failed on purpose"
    assert dict(_rows(app.engine)) == {"flaky": 1}

    retries = [json.loads(v) for v in rq_setup["client"].lrange(log_key, 0, -1)]
    for label, jobid in ids.items():
        stamps = _stamps(rq_setup, "stamps:%s:%s" % (label, name))
        assert [s["attempt"] for s in stamps] == [1, 2, 3]  # each attempt ran once
        logged = [r for r in retries if r["job"] == jobid]
        assert [r["attempt"] for r in logged] == [1, 2]
        for n, retry in enumerate(logged, start=1):
            low, high = policies[label].bounds(n)
            assert low <= retry["delay"] <= high
            # Attempt n failed after it started; the next one never starts before
            # that failure + its delay (its eta).
            assert stamps[n]["started"] >= stamps[n - 1]["started"] + retry["delay"]
    assert not _scheduled_ids(rq_setup)
    assert rq.Queue(name, connection=rq_setup["client"]).count == 0


def test_cancelling_delayed_and_retrying_rq_jobs(rq_app, rq_setup, workers):
    app = rq_app()
    url, name = rq_setup["redis_url"], rq_setup["queue_name"]
    key = "stamps:%s" % name
    cancelled = aj.asyncjob_options(delay=2).perform(jobs.stamp, "cancelled", url, key)
    sentinel = aj.asyncjob_options(delay=2).perform(jobs.stamp, "sentinel", url, key)
    assert _scheduled_ids(rq_setup) == {cancelled, sentinel}

    assert aj.asyncjob_cancel(cancelled) is True
    assert aj.asyncjob_cancel(cancelled) is False
    assert aj.asyncjob_get_status(cancelled).state is aj.JobState.CANCELLED
    assert _scheduled_ids(rq_setup) == {sentinel}
    assert not rq.job.Job.exists(cancelled, connection=rq_setup["client"])

    # A job waiting (an hour) to be retried is cancelled the same way.
    retrying = aj.asyncjob_options(retry=aj.Retry(max_retries=1, backoff=3600, jitter=False)
                                   ).perform(jobs.stamp, "retrying", url,
                                             "stamps:retrying:%s" % name, fails=1)
    workers()
    wait_for(lambda: aj.asyncjob_get_status(sentinel).state is aj.JobState.SUCCEEDED,
             timeout=60, message=lambda: "sentinel did not run:\n" + workers.logs())
    status = wait_for(
        lambda: (lambda s: s if s.state is aj.JobState.QUEUED and s.attempt == 1 else None)(
            aj.asyncjob_get_status(retrying)),
        timeout=30, message=lambda: "no retry scheduled:\n" + workers.logs())
    assert status.error.type == "ValueError"
    wait_for(lambda: _scheduled_ids(rq_setup), timeout=10, message="retry not in RQ")
    assert aj.asyncjob_cancel(retrying) is True
    assert aj.asyncjob_get_status(retrying).state is aj.JobState.CANCELLED
    assert not _scheduled_ids(rq_setup)

    # The cancelled job never ran, though the sentinel due after it did.
    assert [s["attempt"] for s in _stamps(rq_setup, key)] == [1]
    assert dict(_rows(app.engine)) == {"sentinel": 1}


def test_delayed_jobs_are_checked_at_the_call_site_and_not_lost_at_stop(rq_app, rq_setup):
    app = rq_app()
    queue = app.app_globals.asyncjob_queue

    class LocalError(Exception):
        pass

    with pytest.raises(TypeError, match="threads"):
        aj.asyncjob_options(delay=60).perform(lambda: None)
    with pytest.raises(TypeError, match="cannot be serialised"):
        aj.asyncjob_options(delay=60, retry=aj.Retry(on=(LocalError,))).perform(
            jobs.write_row, "x")
    assert not _scheduled_ids(rq_setup)

    jobid = aj.asyncjob_options(delay=3600).perform(jobs.write_row, "later")
    # Stopping the web process's queue loses nothing: the job waits in Redis.
    assert queue.stop(1) == []
    assert queue.get_status(jobid).state is aj.JobState.QUEUED
    assert _scheduled_ids(rq_setup) == {jobid}


def test_worker_killed_with_its_work_horse_fails_the_job_within_the_bound(rq_app, rq_setup,
                                                                         workers):
    """kill -9 of a worker and its work horse mid-job: RQ's abandoned-job detection,
    run by the web process, records the job failed (WorkerDied) within
    abandoned_after + cleanup_interval seconds, and RQ no longer says STARTED."""
    _fast_death_ini(rq_setup)
    hook = CallableLog()
    app = rq_app(backend_options=FAST_DEATH, hooks=[hook])
    url, key = rq_setup["redis_url"], "gate-%s" % uuid.uuid4().hex
    jobid = aj.asyncjob_perform(jobs.gate, "killed", url, key)
    worker = workers()
    wait_for(lambda: _running(jobid), timeout=WORKER_START_TIMEOUT,
             message=lambda: "the job never ran:\n" + workers.logs())
    pids = _kill_9_with_children(worker)
    assert len(pids) >= 2  # the worker and its work horse (and its scheduler)

    status = wait_for(lambda: _finished_status(jobid), timeout=DEATH_NOTICED_TIMEOUT,
                      interval=0.1, message=lambda: "the job stayed %s:\n%s" % (
                          aj.asyncjob_get_status(jobid).state, workers.logs()))
    assert status.state is aj.JobState.FAILED
    assert status.error.type == "WorkerDied"
    assert "heartbeat" in status.error.message
    assert status.name == "rqapp.jobs.gate"
    # Hooks of the process that noticed (here the web process) get the real callable.
    assert hook.failed == [(jobid, "rqapp.jobs.gate")]
    assert _statuses(app, [jobid])[jobid]["state"] == "failed"  # as the web pages see it
    # RQ's cleanup records our failure (its failure callback) before it moves the job
    # to its own failed registry: RQ says FAILED a moment later, not at the same instant.
    rq_job = rq.job.Job.fetch(jobid, connection=rq_setup["client"])
    wait_for(lambda: rq_job.get_status() == rq.job.JobStatus.FAILED, timeout=10,
             message=lambda: "RQ still says %s" % rq_job.get_status())
    assert _row_count(app.engine) == 0


def test_simple_worker_killed_mid_job_is_retried_by_its_policy(rq_app, rq_setup, workers):
    """kill -9 of a --simple worker mid-job: the job's retry policy allows another
    attempt, so it is queued again (attempt 1 failed with WorkerDied) and a worker
    started afterwards runs it once. A --simple job longer than abandoned_after is not
    taken for abandoned: the worker heartbeats it while it runs."""
    _fast_death_ini(rq_setup)
    app = rq_app(backend_options=FAST_DEATH)
    url, key = rq_setup["redis_url"], "gate-%s" % uuid.uuid4().hex
    worker = workers("--simple")
    long_job = aj.asyncjob_perform(jobs.slow, "long", FAST_DEATH["abandoned_after"] * 2)
    status = wait_for(lambda: _finished_status(long_job), timeout=60,
                      message=lambda: "the long job did not finish:\n" + workers.logs())
    assert status.state is aj.JobState.SUCCEEDED, workers.logs()

    # No backoff: the retry goes straight to the queue (the dead worker's scheduler
    # lock outlives it by a minute, see docs/backends/rq.rst).
    policy = aj.Retry(max_retries=2, backoff=0, jitter=False)
    jobid = aj.asyncjob_options(retry=policy).perform(jobs.gate, "retried", url, key)
    wait_for(lambda: _running(jobid), timeout=WORKER_START_TIMEOUT,
             message=lambda: "the job never ran:\n" + workers.logs())
    _kill_9_with_children(worker)

    def requeued():
        status = aj.asyncjob_get_status(jobid)
        return status if status.state is aj.JobState.QUEUED and status.attempt == 1 else None

    status = wait_for(requeued, timeout=DEATH_NOTICED_TIMEOUT, interval=0.1,
                      message=lambda: "not queued again: %s\n%s" % (
                          aj.asyncjob_get_status(jobid), workers.logs()))
    assert status.error.type == "WorkerDied"
    rq_setup["client"].rpush(key, "go")  # the next attempt gets through the gate
    workers()
    status = wait_for(lambda: _finished_status(jobid), timeout=60,
                      message=lambda: "the retry did not run:\n" + workers.logs())
    assert status.state is aj.JobState.SUCCEEDED and status.attempt == 2, (status.error, workers.logs())
    assert dict(_rows(app.engine)) == {"long": 1, "retried": 1}


def test_arguments_are_pickled_once_to_check_them_and_once_by_rq(rq_app, rq_setup):
    rq_app()
    before = jobs.CountsPickling.count
    aj.asyncjob_perform(jobs.write_row, "x", value=jobs.CountsPickling())  # never run
    # One dry run at the call site (a TypeError there, not in a worker), one when RQ
    # stores the job.
    assert jobs.CountsPickling.count - before == 2
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 1


def test_cancelled_job_hooks_get_its_real_callable(rq_app, rq_setup):
    hook = CallableLog()
    rq_app(hooks=[hook])
    jobid = aj.asyncjob_perform(jobs.write_row, "never")
    assert aj.asyncjob_cancel(jobid) is True
    assert hook.cancelled == [(jobid, "rqapp.jobs.write_row")]


def test_cancel_of_a_running_job_reaches_its_worker_and_it_is_not_retried(rq_app, rq_setup,
                                                                          workers):
    """Issue 10 case 2 on rq: asyncjob_cancel() of a job running in a worker process
    returns True and turns asyncjob_cancelled() true there; the job then fails with a
    retryable error and is not retried (no job left queued forever)."""
    app = rq_app()
    url, key = rq_setup["redis_url"], "seen-%s" % uuid.uuid4().hex
    policy = aj.Retry(max_retries=3, backoff=0, jitter=False)
    jobid = aj.asyncjob_options(retry=policy).perform(jobs.until_cancelled, "c", url, key)
    workers()
    wait_for(lambda: _running(jobid), timeout=WORKER_START_TIMEOUT,
             message=lambda: "the job never ran:\n" + workers.logs())
    assert aj.asyncjob_cancel(jobid) is True
    status = wait_for(lambda: _finished_status(jobid), timeout=60,
                      message=lambda: "the job did not end:\n" + workers.logs())
    assert rq_setup["client"].lrange(key, 0, -1) == [b"cancelled"], status  # one attempt
    assert status.state is aj.JobState.FAILED and status.attempt == 1, status
    assert status.error.type == "ValueError"
    assert "cancelled while running" in status.detail
    assert aj.asyncjob_cancel(jobid) is False  # finished
    assert not _scheduled_ids(rq_setup)
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 0


def test_async_functions_run_in_workers_and_generators_are_refused(rq_app, rq_setup, workers):
    """Issue 10 case 7 on rq: an ``async def`` job runs to completion in the worker;
    a generator function raises TypeError at the call site, nothing queued."""
    app = rq_app()
    with pytest.raises(TypeError, match="generator"):
        aj.asyncjob_perform(jobs.generator_job, "never")
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 0
    jobid = aj.asyncjob_perform(jobs.async_write, "async")
    worker = workers("--burst")
    assert worker.wait(60) == 0, workers.logs()
    status = aj.asyncjob_get_status(jobid)
    assert status.state is aj.JobState.SUCCEEDED, (status, workers.logs())
    assert status.result["job"] == jobid
    assert dict(_rows(app.engine)) == {"async": 1}


def test_on_commit_delayed_job_committing_after_stop_is_reported_by_stop(rq_app, rq_setup):
    """Issue 10 case 3 on rq: a delayed on_commit job whose transaction commits after
    stop() is in stop()'s list, recorded cancelled, and never reaches Redis."""
    app = rq_app()
    queue = app.app_globals.asyncjob_queue
    with transaction.manager:
        jobid = aj.asyncjob_options(on_commit=True, delay=60).perform(jobs.write_row, "late")
        unrun = queue.stop(1)
    assert unrun == [jobid]
    status = queue.get_status(jobid)
    assert status.state is aj.JobState.CANCELLED and status.detail.startswith("not run:")
    assert not _scheduled_ids(rq_setup)
    assert rq.Queue(rq_setup["queue_name"], connection=rq_setup["client"]).count == 0


def test_the_backend_keeps_records_where_workers_see_them(rq_setup):
    """However the queue is made, a memory tracker (this process only) gives way to a
    Redis tracker on the backend's Redis: the web sees what workers write."""
    q = aj.JobQueue(MemoryProgressTracker(), backend="rq", backend_options=dict(
        redis_url=rq_setup["redis_url"], queue_name=rq_setup["queue_name"]))
    assert isinstance(q.store, RedisProgressTracker)
    kwargs = q.store.redis.connection_pool.connection_kwargs
    assert kwargs == q.backend.connection.connection_pool.connection_kwargs


@pytest.mark.parametrize("option, value", [
    ("heartbeat_interval", 0), ("heartbeat_interval", "nan"), ("abandoned_after", 1),
    ("cleanup_interval", 0), ("cleanup_interval", float("inf"))])
def test_abandoned_job_settings_are_checked_at_start(rq_setup, option, value):
    tracker = RedisProgressTracker(url=rq_setup["redis_url"])
    with pytest.raises(ValueError, match=option):
        aj.JobQueue(tracker, backend="rq", backend_options={
            "redis_url": rq_setup["redis_url"], "queue_name": rq_setup["queue_name"],
            "heartbeat_interval": 1, option: value})


def test_work_runs_one_job_at_a_time_per_process(rq_app, workers):
    queue = rq_app().app_globals.asyncjob_queue
    with pytest.raises(aj.UnsupportedOption, match="worker processes"):
        queue.backend.work(threads=2)
    assert queue.backend.name == "rq"
    assert "worker processes" in queue.backend.description
    # The shared worker command says so and exits with its usage status.
    proc = workers("--threads", "2", command=("tgext.asyncjob", "worker"))
    assert proc.wait(60) == 2
    assert "one job at a time per worker process" in workers.logs()


@pytest.mark.parametrize("simple", [False, True], ids=["forking", "simple"])
def test_stopping_worker_never_parks_its_command_channel_thread(rq_redis_url, simple):
    """A worker's exit cannot hang on RQ's pubsub thread (its command channel).

    RQ sent UNSUBSCRIBE, then cleared the thread's stop flag; a thread that handled the
    reply first looped once more and, left with no subscription, waited in
    ``PubSub.get_message`` for one for ``sleep_time`` (60 s), while ``stop()`` joined
    it: ``worker --burst`` hung after "unsubscribing from channel". Here the reply is
    made to arrive first (the send waits until the thread has handled it); the thread
    must end rather than wait for a subscription. Its waits are recorded, not made.
    """
    from tgext.asyncjob.rqworker import TGSimpleWorker, TGWorker
    client = redis.Redis.from_url(rq_redis_url)
    suffix = uuid.uuid4().hex[:12]
    cls = TGSimpleWorker if simple else TGWorker
    worker = cls([rq.Queue("pubsub-test-%s" % suffix, connection=client)],
                 connection=client, name="pubsub-test-%s" % suffix)
    try:
        worker.subscribe()
        pubsub, thread = worker.pubsub, worker.pubsub_thread
        parked = []  # the timeouts the thread would have waited for a subscription

        class RecordedEvent(threading.Event):
            def wait(self, timeout=None):
                if threading.current_thread() is thread:
                    parked.append(timeout)
                    return self.is_set()
                return super().wait(timeout)

        subscribed = RecordedEvent()
        subscribed.set()  # subscribe() set the original: the subscription is there
        pubsub.subscribed_event = subscribed

        send_unsubscribe = pubsub.unsubscribe

        def unsubscribe(*args):
            result = send_unsubscribe(*args)
            # The thread handles the reply before the worker goes on: it then waits
            # for a subscription (the hang) or ends.
            wait_for(lambda: parked or not thread.is_alive(), timeout=30,
                     message="the pubsub thread neither ended nor waited")
            return result

        pubsub.unsubscribe = unsubscribe
        worker.unsubscribe()
        assert not parked, ("the pubsub thread waited for a subscription at the worker's "
                            "end (%d times, up to %ss each)" % (len(parked), parked[0]))
        assert not thread.is_alive()
    finally:
        if worker.pubsub_thread is not None and worker.pubsub_thread.is_alive():
            worker.pubsub_thread.stop()
        client.close()
