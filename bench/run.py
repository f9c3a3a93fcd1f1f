"""Run the whole benchmark and write bench/RESULTS.md.

    .venv/bin/python bench/run.py            # full run, 5 rounds (~3-5 min)
    .venv/bin/python bench/run.py --quick    # smoke run, 1 small round

Every row of every round runs in its own subprocess (``harness.py``) pinned
to one CPU; the original tgext.asyncjob 0.3.1 runs from its own virtualenv
(bench/.venv-original, created on demand from the package index).  Redis rows
use a private redis-server started here and pinned to the other CPU, so its
INFO commandstats only see this benchmark's traffic.
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ORIG_VENV = os.path.join(HERE, ".venv-original")
ORIG_PY = os.path.join(ORIG_VENV, "bin", "python")
# Same versions of the shared dependencies as the project venv, where known.
ORIG_REQS = ["tgext.asyncjob==0.3.1"]
ORIG_SHARED = ["TurboGears2", "transaction", "redis"]

CORE_ROWS = ["floor", "floor+txn", "ThreadPoolExecutor",
             "original-memory", "original-redis",
             "project-memory", "project-redis", "project-rq"]
POOL_ROWS = ["floor", "ThreadPoolExecutor", "project-memory"]
POOL_JOBS = {1: 100, 16: 320}  # 10 ms sleep jobs: ~1.0 s and ~0.2 s


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def _version(dist, python=sys.executable):
    code = ("import importlib.metadata as m, sys\n"
            "try: print(m.version(sys.argv[1]))\n"
            "except m.PackageNotFoundError: print('-')")
    try:
        # cwd=/ : with -c the cwd is on sys.path, and the repo root holds tgext/
        return subprocess.run([python, "-c", code, dist], capture_output=True, cwd="/",
                              text=True, timeout=60).stdout.strip() or "-"
    except OSError:
        return "-"


def ensure_original_venv():
    if os.path.exists(ORIG_PY) and _version("tgext.asyncjob", ORIG_PY) == "0.3.1":
        return
    log("creating %s (tgext.asyncjob 0.3.1 from the package index)" % ORIG_VENV)
    subprocess.run([sys.executable, "-m", "venv", "--clear", ORIG_VENV], check=True)
    pins = []
    for dist in ORIG_SHARED:
        v = _version(dist)
        pins.append(dist if v == "-" else "%s==%s" % (dist, v))
    subprocess.run([ORIG_PY, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-binary", "tgext.asyncjob"] + ORIG_REQS + pins, check=True)


class PrivateRedis:
    """A throwaway redis-server on a free loopback port, pinned to ``cpu``."""

    def __init__(self, cpu):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        import redis
        r = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                r.ping()
                self.version = r.info("server")["redis_version"]
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def run_one(row, cfg):
    py = ORIG_PY if row.startswith("original-") else sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONHASHSEED"] = "0"
    cfg = dict(cfg, row=row)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([py, os.path.join(HERE, "harness.py"), json.dumps(cfg)],
                           capture_output=True, text=True, timeout=240, cwd=HERE, env=env)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        res = json.loads(lines[-1]) if lines else {"error": "no output: " + p.stderr[-800:]}
        if "error" in res and not res.get("unavailable"):
            res["stderr"] = p.stderr[-2000:]
    except subprocess.TimeoutExpired:
        res = {"error": "timeout"}
    res["seconds"] = time.perf_counter() - t0
    return res


def source_digest():
    """Hash of this project's package sources, to notice edits during a run."""
    import hashlib
    h = hashlib.sha256()
    pkg = os.path.join(ROOT, "tgext", "asyncjob")
    for dirpath, dirnames, filenames in sorted(os.walk(pkg)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name), "rb") as f:
                    h.update(name.encode() + f.read())
    return h.hexdigest()[:12]


def machine_facts(redis_version, redis_where):
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip() or "(no commit yet)"
    if subprocess.run(["git", "status", "--porcelain", "--", "tgext"], cwd=ROOT,
                      capture_output=True, text=True).stdout.strip():
        git += " + uncommitted changes in tgext/"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model, "cores": os.cpu_count(), "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "python_original_venv": subprocess.run(
            [ORIG_PY, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True, text=True).stdout.strip(),
        "packages": {d: _version(d) for d in
                     ("tgext.asyncjob", "TurboGears2", "transaction", "redis", "rq")},
        "packages_original_venv": {d: _version(d, ORIG_PY) for d in
                                   ("tgext.asyncjob", "TurboGears2", "transaction", "redis")},
        "redis_server": "%s (%s)" % (redis_version, redis_where),
        "git": git,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--latency-samples", type=int, default=1000)
    ap.add_argument("--progress-calls", type=int, default=20000, help="in-memory rows")
    ap.add_argument("--redis-progress-calls", type=int, default=2000, help="Redis rows")
    ap.add_argument("--cpu", type=int, default=0, help="CPU every benchmark process is pinned to")
    ap.add_argument("--redis-url", help="use this Redis (host:port) instead of a private server")
    ap.add_argument("--rows", nargs="*", help="subset of rows to run")
    ap.add_argument("--no-pool", action="store_true", help="skip the 16-vs-1 thread pool test")
    ap.add_argument("--quick", action="store_true", help="1 round, 2000 jobs: a smoke run")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.jobs, args.latency_samples = 1, 2000, 200
        args.progress_calls, args.redis_progress_calls = 2000, 200
    started = time.perf_counter()
    load_start = open("/proc/loadavg").read().split()[:3]
    digest_start = source_digest()

    ensure_original_venv()
    cpus = sorted(os.sched_getaffinity(0))
    other = [c for c in cpus if c != args.cpu]
    server = None
    if args.redis_url:
        host, _, port = args.redis_url.partition(":")
        redis_cfg, flush = {"host": host, "port": int(port or 6379), "db": 14}, False
        import redis
        redis_version = redis.Redis(host=host, port=redis_cfg["port"]).info("server")["redis_version"]
        where = "external %s, db 14" % args.redis_url
    else:
        server = PrivateRedis(other[0] if other else args.cpu)
        redis_cfg, flush = {"host": "127.0.0.1", "port": server.port, "db": 0}, True
        redis_version = server.version
        where = "private redis-server on 127.0.0.1, pinned to CPU %s" % (other[0] if other else args.cpu)

    core_rows = [r for r in CORE_ROWS if not args.rows or r in args.rows]
    pool_rows = [] if args.no_pool else [r for r in POOL_ROWS if not args.rows or r in args.rows]
    base = {"cpu": args.cpu, "redis": redis_cfg, "flush_redis": flush}
    core_cfg = dict(base, mode="core", jobs=args.jobs, latency_samples=args.latency_samples,
                    progress_calls=args.progress_calls,
                    redis_progress_calls=args.redis_progress_calls)
    results = {"core": [], "pool": []}
    try:
        for rnd in range(args.rounds):
            order = list(core_rows)
            random.Random(rnd).shuffle(order)  # no row always runs first / last
            res = {}
            for row in order:
                res[row] = run_one(row, core_cfg)
                log("round %d %-20s %5.1fs %s" % (rnd + 1, row, res[row]["seconds"],
                                                  res[row].get("error", "ok")))
            results["core"].append(res)
            pres = {}
            for row in pool_rows:
                for w, n in POOL_JOBS.items():
                    pres["%s|%d" % (row, w)] = run_one(row, dict(base, mode="pool", workers=w, jobs=n))
            if pool_rows:
                log("round %d pool done" % (rnd + 1))
            results["pool"].append(pres)
    finally:
        if server:
            server.close()

    facts = machine_facts(redis_version, where)
    facts["loadavg_start"] = load_start
    facts["sources_changed_during_run"] = source_digest() != digest_start
    if facts["sources_changed_during_run"]:
        log("WARNING: tgext/asyncjob sources changed during the run; rerun for clean numbers")
    facts["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    facts["wall_seconds"] = round(time.perf_counter() - started, 1)
    cmd = ".venv/bin/python bench/run.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    settings = {"rounds": args.rounds, "jobs": args.jobs, "latency_samples": args.latency_samples,
                "progress_calls": args.progress_calls,
                "redis_progress_calls": args.redis_progress_calls, "cpu": args.cpu, "pool_jobs": POOL_JOBS}
    raw = os.path.splitext(args.out)[0] + ".json"
    settings["raw"] = os.path.relpath(raw, ROOT)
    with open(raw, "w") as f:
        json.dump({"command": cmd, "facts": facts, "settings": settings, "results": results},
                  f, indent=1)
    with open(args.out, "w") as f:
        f.write(report.render(results, facts, settings, cmd))
    log("wrote %s in %.0fs" % (args.out, facts["wall_seconds"]))


if __name__ == "__main__":
    main()
