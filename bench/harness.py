"""Measure one row in this (fresh) process and print one JSON line.

    python bench/harness.py '{"mode": "request", "row": "current", "cpu": 0, ...}'

Run by ``run.py``, once per row per round, with the interpreter of the row's
virtualenv; ``mode`` names the suite module (SUITES) whose ``run(cfg)`` measures.
The process pins itself (and so every thread it starts) to one CPU before
anything else happens.  Also home of the Redis round-trip counters used by
suite_redis.py.
"""
import gc
import json
import os
import sys
import threading
import time

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


# mode -> module with run(cfg) -> (metrics, checks)
SUITES = {"request": "suite_request", "parts": "suite_parts", "cpu": "profile_perform", "sql": "suite_sql", "db": "suite_db", "redis": "suite_redis",
          "durable": "suite_durable"}


def main():
    cfg = json.loads(sys.argv[1])
    if cfg["cpu"] >= 0:  # -1: every CPU (as a web server runs), else one
        os.sched_setaffinity(0, {cfg["cpu"]})  # inherited by every thread started later
    if cfg.get("redis"):
        rc = cfg["redis"]
        os.environ["BENCH_REDIS_URL"] = "redis://%s:%d/%d" % (rc["host"], rc["port"], rc["db"])
        if cfg.get("flush_redis"):
            import redis
            redis.Redis(host=rc["host"], port=rc["port"], db=rc["db"]).flushdb()
    import importlib
    metrics, checks = importlib.import_module(SUITES[cfg["mode"]]).run(cfg)
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
