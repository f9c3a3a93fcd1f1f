"""Run the whole benchmark and write bench/RESULTS.md + bench/RESULTS.json.

    .venv/bin/python bench/run.py            # full run (~10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke run (~1-2 minutes)

Side by side in ONE run: this tree (``current``), the baseline commit
(``--baseline``, default e8c1c56, installed from ``git archive`` into
bench/.venv-baseline), the original tgext.asyncjob 0.3.1 (bench/.venv-original)
and procrastinate (bench/.venv-procrastinate), each from its own virtualenv,
built on first use from the package index.  Every measurement runs in its own
subprocess (harness.py) pinned to one CPU; the private redis-server is pinned
to the other one.  Rows of a round run in a shuffled order.
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
BASELINE = "e8c1c56"
VENVS = {
    "current": sys.executable,
    "baseline": os.path.join(HERE, ".venv-baseline", "bin", "python"),
    "0.3.1": os.path.join(HERE, ".venv-original", "bin", "python"),
    "procrastinate": os.path.join(HERE, ".venv-procrastinate", "bin", "python"),
}
# Dependencies shared with the project venv: the same versions in every venv.
SHARED = ["TurboGears2", "transaction", "redis", "WebTest", "SQLAlchemy", "zope.sqlalchemy",
          "psycopg", "psycopg-binary"]


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


def _pins():
    return [d if _version(d) == "-" else "%s==%s" % (d, _version(d)) for d in SHARED]


def _make_venv(path, requirements):
    subprocess.run([sys.executable, "-m", "venv", "--clear", path], check=True)
    subprocess.run([os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check"] + requirements, check=True)


def ensure_original_venv():
    """tgext.asyncjob 0.3.1 from its source distribution, shared deps pinned."""
    if _version("tgext.asyncjob", VENVS["0.3.1"]) == "0.3.1":
        return
    log("creating bench/.venv-original (tgext.asyncjob 0.3.1)")
    _make_venv(os.path.dirname(os.path.dirname(VENVS["0.3.1"])),
               ["--no-binary", "tgext.asyncjob", "tgext.asyncjob==0.3.1"] + _pins())


def ensure_baseline_venv(commit):
    """The baseline commit of this repository, installed (not editable) from
    ``git archive <commit>`` unpacked in bench/.baseline-src/<commit>."""
    full = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    venv = os.path.dirname(os.path.dirname(VENVS["baseline"]))
    marker = os.path.join(venv, "COMMIT")
    if os.path.exists(marker) and open(marker).read().strip() == full:
        return full
    src = os.path.join(HERE, ".baseline-src", full[:12])
    log("creating bench/.venv-baseline from %s" % full[:12])
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    archive = subprocess.run(["git", "archive", full], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
    _make_venv(venv, [src + "[redis]"] + _pins())
    with open(marker, "w") as f:
        f.write(full + "\n")
    return full


def ensure_procrastinate_venv():
    if _version("procrastinate", VENVS["procrastinate"]) != "-":
        return
    log("creating bench/.venv-procrastinate (procrastinate from the package index)")
    _make_venv(os.path.dirname(os.path.dirname(VENVS["procrastinate"])),
               ["procrastinate", "psycopg[binary,pool]"])


class PrivateRedis:
    """A throwaway redis-server on a free loopback port, pinned to ``cpu``: its
    INFO counters see this benchmark's traffic only."""

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


def run_one(venv, cfg, timeout=300, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:  # --tree: measure another checkout with this venv
        env["PYTHONPATH"] = pythonpath
    env["PYTHONHASHSEED"] = "0"
    t0 = time.perf_counter()
    try:
        p = subprocess.run([VENVS[venv], os.path.join(HERE, "harness.py"), json.dumps(cfg)],
                           capture_output=True, text=True, timeout=timeout, cwd=HERE, env=env)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        res = json.loads(lines[-1]) if lines else {"error": "no output: " + p.stderr[-800:]}
        if "error" in res and not res.get("unavailable"):
            res["stderr"] = p.stderr[-2000:]
    except subprocess.TimeoutExpired:
        res = {"error": "timeout after %d s" % timeout}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def plan(args, redis_cfg):
    """(suite, row, venv, cfg, rounds) for every measurement of the run."""
    base = {"cpu": args.cpu}
    pg = {"pg_host": "127.0.0.1", "pg_port": 5432, "pg_db": args.pg_db}
    out = []
    for row in ("floor", "0.3.1", "baseline", "current") + (("proto",) if args.proto else ()):
        venv = row if row in VENVS else "current"
        out.append(("request", row, venv, dict(base, mode="request", row=row,
                                               requests=args.requests), args.rounds))
    for row in ("floor", "baseline", "current") + (("proto",) if args.proto else ()):
        # Unpinned (cpu -1: both CPUs, as a web server runs): the woken worker can
        # take the GIL on the other CPU while the request still runs.
        venv = row if row in VENVS else "current"
        out.append(("request", row + ":unpinned", venv,
                    dict(base, mode="request", row=row, cpu=-1, requests=args.requests), 1))
    for row in ("baseline", "current"):
        out.append(("parts", row, row, dict(base, mode="parts", row=row,
                                            requests=args.requests // 3), args.rounds))
        out.append(("parts", row + ":unpinned", row, dict(base, mode="parts", row=row, cpu=-1,
                                                          requests=args.requests // 3), 1))
        out.append(("cpu", row, row, dict(base, mode="cpu", row=row), 1))
    for row in ("floor", "0.3.1", "baseline", "current"):
        venv = row if row in VENVS else "current"
        out.append(("sql", row, venv, dict(base, mode="sql", row=row,
                                           sql_requests=args.requests * 2), args.rounds * 2))
    for db in ("sqlite", "pg"):
        for fsync in (True, False):
            for row in ("0.3.1", "baseline", "current"):
                key = "%s%s" % (db, "" if fsync else "-nosync")
                out.append(("db:" + key, row, row,
                            dict(base, **pg, mode="db", row=row, db=db, fsync=fsync,
                                 pg_url="postgresql+psycopg://postgres@127.0.0.1:5432/" + args.pg_db,
                                 db_jobs=args.db_jobs, pairs=5), args.db_rounds))
    for row in ("0.3.1", "baseline", "current"):
        out.append(("redis", row, row, dict(base, mode="redis", row=row, redis=redis_cfg,
                                            flush_redis=True), 1))
    for row in ("floor-pg", "procrastinate-pg", "sqlalchemy-pg", "floor-sqlite",
                "sqlalchemy-sqlite", "threads-sqlite"):
        venv = "procrastinate" if row.startswith("procrastinate") else "current"
        jobs = args.sqlite_jobs if row in ("sqlalchemy-sqlite", "floor-sqlite") else args.durable_jobs
        cfg = dict(base, **pg, mode="durable", row=row, durable_jobs=jobs,
                   latency_samples=args.latency_samples)
        out.append(("durable", row, venv, cfg, 1))
        if row.endswith("-pg"):
            out.append(("durable-rt", row, venv, dict(cfg, rt=True), 1))
    if args.suites:
        out = [p for p in out if p[0].split(":")[0] in args.suites]
    return out


def machine_facts(redis_version, baseline):
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
    try:
        import psycopg
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as c:
            pg = c.execute("SHOW server_version").fetchone()[0]
    except Exception as e:  # the report says it could not tell
        pg = "? (%s)" % type(e).__name__
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model, "cores": os.cpu_count(), "kernel": os.uname().release,
        "python": sys.version.split()[0], "git": git, "baseline": baseline,
        "packages": {v: {d: _version(d, py) for d in
                         ("tgext.asyncjob", "TurboGears2", "transaction", "SQLAlchemy",
                          "redis", "procrastinate", "psycopg")}
                     for v, py in VENVS.items()},
        "redis_server": redis_version, "postgresql": pg,
    }


def source_digest(root):
    import hashlib
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(root, "tgext", "asyncjob"))):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name), "rb") as f:
                    h.update(name.encode() + f.read())
    return h.hexdigest()[:12]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the request suites")
    ap.add_argument("--db-rounds", type=int, default=1, help="processes per database row")
    ap.add_argument("--requests", type=int, default=1500, help="request pairs per clock")
    ap.add_argument("--db-jobs", type=int, default=500, help="insert jobs per database row")
    ap.add_argument("--durable-jobs", type=int, default=10000)
    ap.add_argument("--sqlite-jobs", type=int, default=1000,
                    help="jobs for the sqlalchemy backend and the floor on SQLite (tens of "
                    "jobs/s: 10,000 would take the whole run)")
    ap.add_argument("--latency-samples", type=int, default=300)
    ap.add_argument("--baseline", default=BASELINE, help="commit to compare with")
    ap.add_argument("--tree", help="measure this checkout's tgext/ (PYTHONPATH) as 'current'")
    ap.add_argument("--proto", help="also measure this checkout (a library prototype) in the "
                    "request suite, as row 'proto', with the current venv")
    ap.add_argument("--durable-tree", help="checkout whose tgext/ the durable (issue 12) rows "
                    "of this venv measure, e.g. a throwaway merge holding the sqlalchemy backend")
    ap.add_argument("--pg-db", default="bench", help="PostgreSQL database (created if missing)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU every benchmark process is pinned to")
    ap.add_argument("--suites", nargs="*", help="request parts cpu sql db redis durable durable-rt")
    ap.add_argument("--quick", action="store_true", help="small counts, one round: a smoke run")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests, args.db_jobs = 1, 200, 100
        args.durable_jobs, args.sqlite_jobs, args.latency_samples = 300, 100, 30
    started = time.perf_counter()
    load_start = open("/proc/loadavg").read().split()[:3]
    tree = os.path.abspath(args.tree) if args.tree else ROOT
    digest = source_digest(tree)

    baseline = ensure_baseline_venv(args.baseline)
    ensure_original_venv()
    ensure_procrastinate_venv()
    subprocess.run(["createdb", "-U", "postgres", "-h", "127.0.0.1", args.pg_db],
                   capture_output=True)  # fails harmlessly when it exists
    cpus = sorted(os.sched_getaffinity(0))
    other = [c for c in cpus if c != args.cpu] or [args.cpu]
    server = PrivateRedis(other[0])
    redis_cfg = {"host": "127.0.0.1", "port": server.port, "db": 0}
    results = {}
    try:
        todo = plan(args, redis_cfg)
        rounds = max(p[4] for p in todo)
        for rnd in range(rounds):
            batch = [p for p in todo if p[4] > rnd]
            random.Random(rnd).shuffle(batch)  # no row always runs first / last
            for suite, row, venv, cfg, _ in batch:
                pp = tree if (venv == "current" and args.tree) else None
                if row == "proto":
                    pp = os.path.abspath(args.proto)
                if suite.startswith("durable") and venv == "current" and args.durable_tree:
                    pp = os.path.abspath(args.durable_tree)
                res = run_one(venv, cfg, timeout=400 if suite == "durable" else 240,
                              pythonpath=pp)
                results.setdefault(suite, {}).setdefault(row, []).append(res)
                log("round %d %-16s %-18s %6.1fs %s" % (rnd + 1, suite, row, res["seconds"],
                                                       res.get("error", "ok")))
    finally:
        server.close()

    facts = machine_facts(server.version + " (private, pinned to CPU %d)" % other[0], baseline)
    if args.tree:
        facts["tree"] = tree
        facts["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                                      capture_output=True, text=True).stdout.strip() + \
            " (--tree %s)" % tree
    if args.durable_tree:
        dt = os.path.abspath(args.durable_tree)
        facts["durable_tree"] = "%s at %s" % (dt, subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], cwd=dt, capture_output=True,
            text=True).stdout.strip())
    if args.proto:
        pt = os.path.abspath(args.proto)
        facts["proto"] = "%s at %s" % (pt, subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], cwd=pt, capture_output=True,
            text=True).stdout.strip())
    facts["loadavg_start"] = load_start
    facts["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    facts["sources_changed_during_run"] = source_digest(tree) != digest
    facts["wall_seconds"] = round(time.perf_counter() - started, 1)
    cmd = ".venv/bin/python bench/run.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    settings = {k: v for k, v in vars(args).items() if k != "out"}
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
