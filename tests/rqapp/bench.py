"""Timing the rq backend: ``python tests/rqapp/bench.py [--simple] [--jobs N] [--workers W]``.

:func:`bench_rq` is meant for ``bench/``: it needs a Redis URL (give it its own db)
and returns a dict of figures. Worker processes are started (and their TurboGears
app loaded) before the clock starts; the clock stops when every job's record says
succeeded.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


def bench_rq(redis_url, jobs=1000, workers=2, simple=False, job="noop", db_url=None):
    """Enqueue ``jobs`` calls of ``rqapp.jobs.<job>`` through ``asyncjob_perform`` onto
    ``workers`` rq worker processes; return enqueue cost and end-to-end throughput."""
    import redis
    import rq
    import webtest
    from paste.deploy import loadapp
    from rqapp import write_ini
    from rqapp import jobs as job_module
    import tgext.asyncjob as aj

    tmp = tempfile.mkdtemp(prefix="asyncjob-rqbench-")
    db_url = db_url or "sqlite:///%s" % os.path.join(tmp, "bench.sqlite")
    queue_name = "asyncjob-bench-%s" % uuid.uuid4().hex[:8]
    ini = write_ini(os.path.join(tmp, "app.ini"), db_url=db_url, redis_url=redis_url,
                    queue_name=queue_name)
    from sampleapp.config import create_tables
    create_tables(db_url)
    webtest.TestApp(loadapp("config:%s" % ini))  # the web side: its queue is now current
    env = dict(os.environ, PYTHONPATH=TESTS_DIR)
    names = ["bench-%d-%s" % (i, uuid.uuid4().hex[:6]) for i in range(workers)]
    cmd = [sys.executable, "-m", "tgext.asyncjob.rqworker", ini] + (["--simple"] if simple else [])
    procs = [subprocess.Popen(cmd + ["--name", n, "--logging-level", "WARNING"], env=env, cwd=tmp)
             for n in names]
    client = redis.Redis.from_url(redis_url)
    try:
        queue = rq.Queue(queue_name, connection=client)
        deadline = time.monotonic() + 60
        while not set(names) <= {w.name for w in rq.Worker.all(queue=queue)}:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.05)
        func = getattr(job_module, job)
        args = () if job == "noop" else ("bench",)
        t0 = time.perf_counter()
        ids = [aj.asyncjob_perform(func, *args) for _ in range(jobs)]
        t1 = time.perf_counter()
        pending = ["asyncjob:job:%s" % i for i in ids]
        failed = 0
        while pending:  # only the unfinished ones, every 0.1 s: light on the CPU
            pipe = client.pipeline(transaction=False)
            for key in pending:
                pipe.hget(key, "state")
            states = pipe.execute()
            failed += sum(s == b"failed" for s in states)
            pending = [k for k, s in zip(pending, states) if s not in (b"succeeded", b"failed")]
            if pending:
                time.sleep(0.1)
        t2 = time.perf_counter()
        assert not failed, "%d jobs failed" % failed
        return {"jobs": jobs, "workers": workers, "mode": "simple" if simple else "fork",
                "job": job, "enqueue_us": (t1 - t0) / jobs * 1e6,
                "e2e_s": t2 - t0, "e2e_jobs_s": jobs / (t2 - t0)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        for key in client.scan_iter(match="rq:*%s*" % queue_name):
            client.delete(key)
        aj.stop_all(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--simple", action="store_true")
    parser.add_argument("--job", default="noop", choices=["noop", "write_row"])
    parser.add_argument("--db-url")
    a = parser.parse_args()
    print(json.dumps(bench_rq(a.redis_url, a.jobs, a.workers, a.simple, a.job, a.db_url)))
