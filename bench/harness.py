"""Measure one row in this (fresh) process and print one JSON line.

    python bench/harness.py '{"row": "floor", "mode": "core", ...}'

Run by ``run.py``, once per row per round, with the interpreter of the row's
virtualenv.  The process pins itself (and so every thread it starts) to one
CPU before anything else happens.
"""
import gc
import json
import os
import sys
import threading
import time

pc = time.perf_counter


def noop():
    pass


def _drain(a):
    """Wait until every job enqueued so far has run (workers=1: FIFO)."""
    done = threading.Event()
    a.enqueue(done.set)
    done.wait()


def _block(a):
    """Park the (single) worker inside a job; return the release Event."""
    started, release = threading.Event(), threading.Event()

    def blocker():
        started.set()
        release.wait()

    a.enqueue(blocker)
    started.wait()
    return release


def enqueue_and_drain(a, n):
    """Enqueue cost with the worker parked, then drain rate of that backlog."""
    release = _block(a)
    gc.collect()
    enq = a.enqueue
    t0 = pc()
    for _ in range(n):
        enq(noop)
    t1 = pc()
    done = threading.Event()
    a.enqueue(done.set)
    t2 = pc()
    release.set()
    done.wait()
    t3 = pc()
    return {"enqueue_us": (t1 - t0) / n * 1e6, "drain_jobs_s": n / (t3 - t2)}


def end_to_end(a, n):
    """n no-op jobs enqueued and run with the worker live; clock stops when
    the last one has run."""
    gc.collect()
    enq = a.enqueue
    done = threading.Event()
    t0 = pc()
    for _ in range(n):
        enq(noop)
    enq(done.set)
    done.wait()
    return {"e2e_jobs_s": n / (pc() - t0)}


def latency(a, samples, idle=0.001):
    """Enqueue-to-start latency, one job at a time into an idle worker."""
    ev = threading.Event()
    started = []

    def job():
        started.append(pc())
        ev.set()

    lat = []
    gc.collect()
    for _ in range(samples):
        time.sleep(idle)  # let the worker finish the previous job and go idle
        ev.clear()
        t0 = pc()
        a.enqueue(job)
        ev.wait()
        lat.append(started[-1] - t0)
    lat.sort()
    return {
        "latency_p50_us": lat[len(lat) // 2] * 1e6,
        "latency_p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
    }


def progress(a, setter, getter, m, counter=None):
    """m progress sets inside a running job, then m gets of that job's
    progress from the caller while the job is still running."""
    ready, release = threading.Event(), threading.Event()
    out = {}

    def job():
        if counter:
            counter.reset()
        t0 = pc()
        for i in range(m):
            setter(i, "step")
        out["set_us"] = (pc() - t0) / m * 1e6
        if counter:
            out["set_rt"] = counter.n / m
        ready.set()
        release.wait()

    handle = a.enqueue(job)
    ready.wait()
    if counter:
        counter.reset()
    t0 = pc()
    for _ in range(m):
        value = getter(handle)
    out["get_us"] = (pc() - t0) / m * 1e6
    if counter:
        out["get_rt"] = counter.n / m
    out["value"] = repr(value)[:80]
    release.set()
    _drain(a)
    return out


class RoundTrips:
    """Count Redis round trips made by this process, client side: every
    request written to a socket goes through
    ``redis.connection.AbstractConnection.send_packed_command`` once (a
    pipeline is one call), and each one waits for a reply."""

    def __init__(self):
        from redis.connection import AbstractConnection
        self.cls = AbstractConnection
        self.orig = AbstractConnection.send_packed_command
        self.lock = threading.Lock()
        self.n = 0

    def reset(self):
        with self.lock:
            self.n = 0

    def __enter__(self):
        orig, counter = self.orig, self

        def send_packed_command(conn, *args, **kw):
            with counter.lock:
                counter.n += 1
            return orig(conn, *args, **kw)

        self.cls.send_packed_command = send_packed_command
        return self

    def __exit__(self, *exc):
        self.cls.send_packed_command = self.orig


class ServerCommands:
    """Server-side cross-check: commands executed (INFO commandstats),
    excluding the INFO calls themselves.  Exact only on a private server."""

    def __init__(self, redis_cfg):
        import redis
        self.r = redis.Redis(host=redis_cfg["host"], port=redis_cfg["port"])

    def total(self):
        stats = self.r.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def redis_counts(a, redis_cfg, m=200):
    srv = ServerCommands(redis_cfg)
    srv.total()  # connect outside the counted window
    out = {}
    settle = 0.05  # let the worker finish its post-job bookkeeping
    with RoundTrips() as rt:
        # per enqueue: worker parked, so only the caller talks to Redis
        release = _block(a)
        s0 = srv.total()  # snapshot before reset: INFO is not counted
        rt.reset()
        for _ in range(m):
            a.enqueue(noop)
        out["rt_enqueue"] = rt.n / m
        out["cmd_enqueue"] = (srv.total() - s0) / m
        release.set()
        _drain(a)
        time.sleep(settle)

        # per job end to end: (m jobs + sentinel) minus (sentinel alone)
        def run(k):
            s0 = srv.total()
            rt.reset()
            for _ in range(k):
                a.enqueue(noop)
            _drain(a)
            time.sleep(settle)
            n = rt.n
            return n, srv.total() - s0

        base_rt, base_cmd = run(0)
        all_rt, all_cmd = run(m)
        out["rt_job"] = (all_rt - base_rt) / m
        out["cmd_job"] = (all_cmd - base_cmd) / m

        p = progress(a, a.set_progress, a.get_progress, m, counter=rt)
        out["rt_progress_set"] = p["set_rt"]
        out["rt_progress_get"] = p["get_rt"]
    return out


def core(a, cfg):
    n = cfg["jobs"]
    a.start(1)
    for _ in range(500):  # warm-up: connections, thread-locals, caches
        a.enqueue(noop)
    _drain(a)
    gc.collect()
    gc.freeze()
    m = dict(enqueue_and_drain(a, n))
    m.update(end_to_end(a, n))
    m.update(latency(a, cfg["latency_samples"]))
    checks = {}
    if a.has_progress:
        p = progress(a, a.set_progress, a.get_progress, cfg["progress_calls"])
        m["progress_set_us"], m["progress_get_us"] = p["set_us"], p["get_us"]
        checks["progress_value_seen"] = p["value"]
    if cfg["row"] == "floor" and cfg.get("redis"):
        from adapters import RedisFloorProgress
        rf = RedisFloorProgress(cfg["redis"])
        rf.set_progress(0)
        p = progress(a, rf.set_progress, rf.get_progress, cfg["progress_calls"])
        m["redis_progress_set_us"], m["redis_progress_get_us"] = p["set_us"], p["get_us"]
        with RoundTrips() as rt:  # sanity check of the counter: must be 1.0
            p = progress(a, rf.set_progress, rf.get_progress, 100, counter=rt)
        checks["floor_redis_rt_set_get"] = [p["set_rt"], p["get_rt"]]
    if a.uses_redis:
        m.update(redis_counts(a, cfg["redis"]))
    a.stop()
    return m, checks


def pool(a, cfg):
    workers, n = cfg["workers"], cfg["jobs"]
    a.start(workers)
    lock, done, count = threading.Lock(), threading.Event(), [0]

    def sleeper():
        time.sleep(0.01)
        with lock:
            count[0] += 1
            if count[0] == target:
                done.set()

    target = workers  # warm-up: one job per worker
    for _ in range(workers):
        a.enqueue(sleeper)
    done.wait()
    done.clear()
    count[0], target = 0, n
    t0 = pc()
    for _ in range(n):
        a.enqueue(sleeper)
    done.wait()
    rate = n / (pc() - t0)
    a.stop()
    return {"sleep_jobs_s": rate}, {}


def main():
    cfg = json.loads(sys.argv[1])
    os.sched_setaffinity(0, {cfg["cpu"]})  # inherited by every thread started later
    import adapters
    a = adapters.make(cfg["row"], cfg.get("redis"))
    if cfg.get("redis") and cfg.get("flush_redis"):
        import redis
        rc = cfg["redis"]
        redis.Redis(host=rc["host"], port=rc["port"], db=rc["db"]).flushdb()
    metrics, checks = (pool if cfg["mode"] == "pool" else core)(a, cfg)
    mod = sys.modules.get("tgext.asyncjob")
    if mod is not None:  # which tgext.asyncjob this row really ran
        checks["tgext.asyncjob"] = os.path.relpath(mod.__file__, os.path.dirname(os.path.dirname(__file__)))
    sys.stdout.write("\n" + json.dumps({"metrics": metrics, "checks": checks}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # don't wait on daemon worker threads of rows without stop()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        import traceback
        traceback.print_exc()
        unavailable = type(e).__name__ == "Unavailable"
        sys.stdout.write("\n" + json.dumps({"error": "%s: %s" % (type(e).__name__, e),
                                            "unavailable": unavailable}) + "\n")
        sys.stdout.flush()
        os._exit(3)
