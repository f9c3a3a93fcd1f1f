"""Measure one row in this (fresh) process and print one JSON line.

    python bench/harness.py '{"row": "floor", "mode": "core", ...}'

Run by ``run.py``, once per row per round, with the interpreter of the row's
virtualenv.  The process pins itself (and so every thread it starts, and any
worker process it spawns) to one CPU before anything else happens.
"""
import gc
import json
import os
import sys
import threading
import time
import uuid

pc = time.perf_counter
SETTLE = 0.05  # s to let background (write-behind) Redis writes land before/after counting


def noop():
    pass


class ThreadSync:
    """Signals between the caller and jobs run by threads of this process."""

    noop = staticmethod(noop)

    def signal(self):
        """A job that signals it ran -> (fn, args, wait); wait() returns the stamp."""
        ev, stamp = threading.Event(), []

        def job():
            stamp.append(pc())
            ev.set()

        return job, (), lambda: (ev.wait(), stamp[0])[1]

    def blocker(self):
        """A job that parks the worker -> (fn, args, wait_started, release)."""
        started, release = threading.Event(), threading.Event()

        def job():
            started.set()
            release.wait()

        return job, (), started.wait, release.set

    def progress(self, setter, m, counter=None, reps=1):
        """A job doing m progress sets (best of reps loops) -> (fn, args,
        wait_ready, release); wait_ready() returns (µs per set, round trips
        per set or None)."""
        ready, release, out = threading.Event(), threading.Event(), []

        def job():
            if counter:
                time.sleep(SETTLE)  # writes about this job's start land first
                counter.reset()
            best = float("inf")
            for _ in range(reps):
                t0 = pc()
                for i in range(m):
                    setter(i, "step")
                best = min(best, pc() - t0)
            dt = best / m * 1e6
            if counter:
                time.sleep(SETTLE)  # a write-behind tracker flushes in the background
            out.append((dt, counter.n / m / reps if counter else None))
            ready.set()
            release.wait()

        return job, (), lambda: (ready.wait(), out[0])[1], release.set


class RedisSync:
    """The same signals for jobs run by an RQ worker process (see rqjobs.py)."""

    def __init__(self):
        import rqjobs
        self.jobs, self.r = rqjobs, rqjobs.r()
        self.noop = rqjobs.noop

    def _key(self):
        return "bench:sig:" + uuid.uuid4().hex

    def _pop(self, key):
        return self.r.blpop([key], timeout=60)[1]

    def signal(self):
        key = self._key()
        return self.jobs.signal, (key,), lambda: float(self._pop(key))

    def blocker(self):
        started, release = self._key(), self._key()
        return (self.jobs.block, (started, release), lambda: self._pop(started),
                lambda: self.r.rpush(release, 1))

    def progress(self, setter, m, counter=None, reps=1):
        ready, release = self._key(), self._key()  # the rq row uses reps=1

        def wait():
            set_us, reads = self._pop(ready).split()
            return float(set_us), (float(reads) if counter else None)

        return (self.jobs.progress, (m, ready, release), wait,
                lambda: self.r.rpush(release, 1))


def _drain(a, sync):
    """Wait until every job enqueued so far has run (one worker: FIFO)."""
    fn, args, wait = sync.signal()
    a.enqueue(fn, *args)
    wait()


def _block(a, sync):
    """Park the (single) worker inside a job; return the release callable."""
    fn, args, wait_started, release = sync.blocker()
    a.enqueue(fn, *args)
    wait_started()
    return release


def enqueue_and_drain(a, sync, n):
    """Enqueue cost with the worker parked, then drain rate of that backlog."""
    release = _block(a, sync)
    gc.collect()
    enq, job = a.enqueue, sync.noop
    t0 = pc()
    for _ in range(n):
        enq(job)
    t1 = pc()
    fn, args, wait = sync.signal()
    a.enqueue(fn, *args)
    t2 = pc()
    release()
    wait()
    t3 = pc()
    return {"enqueue_us": (t1 - t0) / n * 1e6, "drain_jobs_s": n / (t3 - t2)}


def enqueue_direct(a, sync, n):
    """Enqueue cost through the queue object's perform(fn, args, kwargs), i.e.
    without asyncjob_perform's lookup of the current queue."""
    release = _block(a, sync)
    gc.collect()
    perform, job, args, kw = a.direct_perform, sync.noop, (), {}
    t0 = pc()
    for _ in range(n):
        perform(job, args, kw)
    t1 = pc()
    release()
    _drain(a, sync)
    return {"enqueue_direct_us": (t1 - t0) / n * 1e6}


def end_to_end(a, sync, n):
    """n no-op jobs enqueued and run with the worker live; clock stops when
    the last one has run."""
    gc.collect()
    enq, job = a.enqueue, sync.noop
    fn, args, wait = sync.signal()
    t0 = pc()
    for _ in range(n):
        enq(job)
    enq(fn, *args)
    wait()
    return {"e2e_jobs_s": n / (pc() - t0)}


def latency(a, sync, samples, idle=0.001):
    """Enqueue-to-start latency, one job at a time into an idle worker."""
    lat = []
    gc.collect()
    for _ in range(samples):
        time.sleep(idle)  # let the worker finish the previous job and go idle
        fn, args, wait = sync.signal()
        t0 = pc()
        a.enqueue(fn, *args)
        lat.append(wait() - t0)
    lat.sort()
    return {
        "latency_p50_us": lat[len(lat) // 2] * 1e6,
        "latency_p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
    }


def progress(a, sync, setter, getter, m, counter=None, reps=1):
    """m progress sets inside a running job, then m gets of that job's
    progress from the caller while the job is still running; each the best
    of reps loops (in-memory calls take ~1 µs: one preemption would skew)."""
    fn, args, wait_ready, release = sync.progress(setter, m, counter, reps)
    handle = a.enqueue(fn, *args)
    set_us, set_rt = wait_ready()
    if counter:
        counter.reset()
    best = float("inf")
    for _ in range(reps):
        t0 = pc()
        for _ in range(m):
            value = getter(handle)
        best = min(best, pc() - t0)
    out = {"set_us": set_us, "get_us": best / m * 1e6, "value": repr(value)[:80]}
    if counter:
        out["set_rt"], out["get_rt"] = set_rt, counter.n / m / reps
    release()
    _drain(a, sync)
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


class Server:
    """Server-side view, exact on the private server only this benchmark uses:
    commands executed (INFO commandstats, without INFO) and client requests
    read (INFO stats total_reads_processed, without the INFO requests; one
    read per request/pipeline: the round trips of every process)."""

    def __init__(self, redis_cfg):
        import redis
        self.r = redis.Redis(host=redis_cfg["host"], port=redis_cfg["port"])
        self.infos = 0

    def snapshot(self):
        d = self.r.info("all")
        self.infos += 1
        cmds = sum(v["calls"] for k, v in d.items() if k.startswith("cmdstat_") and k != "cmdstat_info")
        return cmds, d["total_reads_processed"] - self.infos


def redis_counts(a, sync, redis_cfg, m=200):
    srv = Server(redis_cfg)
    srv.snapshot()  # connect outside the counted windows
    out = {}
    settle = SETTLE  # let the worker finish its post-job bookkeeping
    with RoundTrips() as rt:
        # per enqueue: worker parked, so only the caller talks to Redis
        release = _block(a, sync)
        time.sleep(settle)
        c0, r0 = srv.snapshot()
        rt.reset()
        for _ in range(m):
            a.enqueue(sync.noop)
        time.sleep(settle)
        out["rt_enqueue"] = rt.n / m
        c1, r1 = srv.snapshot()
        out["cmd_enqueue"], out["srv_rt_enqueue"] = (c1 - c0) / m, (r1 - r0) / m
        release()
        _drain(a, sync)
        time.sleep(settle)

        # per job end to end: (m jobs + sentinel) minus (sentinel alone)
        def run(k):
            c0, r0 = srv.snapshot()
            rt.reset()
            for _ in range(k):
                a.enqueue(sync.noop)
            _drain(a, sync)
            time.sleep(settle)
            n = rt.n
            c1, r1 = srv.snapshot()
            return n, c1 - c0, r1 - r0

        base = run(0)
        full = run(m)
        out["rt_job"], out["cmd_job"], out["srv_rt_job"] = [(f - b) / m for f, b in zip(full, base)]

        p = progress(a, sync, a.set_progress, a.get_progress, m, counter=rt)
        out["rt_progress_set"] = p["set_rt"]
        out["rt_progress_get"] = p["get_rt"]
    return out


def core(a, cfg):
    sync = RedisSync() if getattr(a, "out_of_process", False) else ThreadSync()
    # Slow rows (an RQ worker process runs ~200 jobs/s) get smaller counts.
    n = min(cfg["jobs"], getattr(a, "max_jobs", cfg["jobs"]))
    samples = min(cfg["latency_samples"], getattr(a, "max_latency_samples", cfg["latency_samples"]))
    a.start(1)
    for _ in range(min(500, n // 4)):  # warm-up: connections, thread-locals, caches
        a.enqueue(sync.noop)
    _drain(a, sync)
    gc.collect()
    gc.freeze()
    m = dict(enqueue_and_drain(a, sync, n))
    if hasattr(a, "direct_perform"):
        m.update(enqueue_direct(a, sync, n))
    m.update(end_to_end(a, sync, n))
    m.update(latency(a, sync, samples))
    checks = {"jobs": n, "latency_samples": samples}
    if a.has_progress:
        calls = cfg["redis_progress_calls"] if a.uses_redis else cfg["progress_calls"]
        reps = 1 if a.uses_redis else 5
        p = progress(a, sync, a.set_progress, a.get_progress, calls, reps=reps)
        m["progress_set_us"], m["progress_get_us"] = p["set_us"], p["get_us"]
        checks["progress_value_seen"] = p["value"]
    if cfg["row"] == "floor" and cfg.get("redis"):
        from adapters import RedisFloorProgress
        rf = RedisFloorProgress(cfg["redis"])
        rf.set_progress(0)
        p = progress(a, sync, rf.set_progress, rf.get_progress, cfg["redis_progress_calls"])
        m["redis_progress_set_us"], m["redis_progress_get_us"] = p["set_us"], p["get_us"]
        with RoundTrips() as rt:  # sanity check of the counter: must be 1.0
            p = progress(a, sync, rf.set_progress, rf.get_progress, 100, counter=rt)
        checks["floor_redis_rt_set_get"] = [p["set_rt"], p["get_rt"]]
    if a.uses_redis:
        m.update(redis_counts(a, sync, cfg["redis"]))
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


# mode -> module with run(cfg) -> (metrics, checks)
SUITES = {"request": "suite_request", "db": "suite_db", "redis": "suite_redis",
          "durable": "suite_durable"}


def main():
    cfg = json.loads(sys.argv[1])
    os.sched_setaffinity(0, {cfg["cpu"]})  # inherited by every thread started later
    if cfg.get("redis"):
        rc = cfg["redis"]
        os.environ["BENCH_REDIS_URL"] = "redis://%s:%d/%d" % (rc["host"], rc["port"], rc["db"])
        if cfg.get("flush_redis"):
            import redis
            redis.Redis(host=rc["host"], port=rc["port"], db=rc["db"]).flushdb()
    if cfg["mode"] in SUITES:
        import importlib
        metrics, checks = importlib.import_module(SUITES[cfg["mode"]]).run(cfg)
    else:
        import adapters
        a = adapters.make(cfg["row"], cfg.get("redis"))
        try:
            metrics, checks = (pool if cfg["mode"] == "pool" else core)(a, cfg)
        finally:
            if hasattr(a, "kill"):
                a.kill()
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
