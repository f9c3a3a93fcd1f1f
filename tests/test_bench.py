"""Smoke test of the benchmark harness (bench/): each suite runs on tiny counts in
a subprocess, as run.py runs it, and the report renders from what they return.
Nothing here looks at a timing: the numbers only have to exist."""

import json
import os
import subprocess
import sys
from urllib.parse import urlparse

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)


def harness(cfg):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, os.path.join(BENCH, "harness.py"),
                        json.dumps(dict({"cpu": sorted(os.sched_getaffinity(0))[0]}, **cfg))],
                       capture_output=True, text=True, timeout=120, cwd=BENCH, env=env)
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert "metrics" in res, res.get("error", "") + p.stderr[-2000:]
    return res


@pytest.fixture(scope="module")
def results(redis_url, tmp_path_factory):
    r = urlparse(redis_url)
    redis_cfg = {"host": r.hostname, "port": r.port or 6379, "db": int(r.path.strip("/") or 0)}
    out = {}
    for row in ("floor", "current"):
        out.setdefault("request", {})[row] = [harness({"mode": "request", "row": row,
                                                       "requests": 10})]
    out["parts"] = {"current": [harness({"mode": "parts", "row": "current", "requests": 5})]}
    out["sql"] = {row: [harness({"mode": "sql", "row": row, "sql_requests": 10})]
                  for row in ("floor", "current")}
    out["db:sqlite"] = {"current": [harness({"mode": "db", "row": "current", "db": "sqlite",
                                             "db_jobs": 10, "pairs": 2})]}
    out["redis"] = {"current": [harness({"mode": "redis", "row": "current", "redis": redis_cfg,
                                         "flush_redis": True, "redis_calls": 20})]}
    out["durable"] = {"threads-sqlite": [harness({
        "mode": "durable", "row": "threads-sqlite", "durable_jobs": 50, "latency_samples": 5,
        "enqueue_samples": 5, "pg_host": "127.0.0.1", "pg_port": 5432, "pg_db": "test"})]}
    return out


def test_every_suite_reports_its_figures(results):
    assert results["request"]["current"][0]["metrics"]["webtest_plain_us"] > 0
    assert "body_deferred_us" in results["parts"]["current"][0]["metrics"]
    assert results["sql"]["current"][0]["metrics"]["statement_us"] > 0
    assert results["db:sqlite"]["current"][0]["checks"]["rows_checked"] > 0
    assert results["redis"]["current"][0]["metrics"]["rt_enqueue"] >= 1
    assert results["durable"]["threads-sqlite"][0]["metrics"]["jobs_s"] > 0


def test_report_renders_from_the_results(results):
    import report
    facts = {"date": "today", "git": "abc", "baseline": "e8c1c56", "cpu": "cpu", "cores": 2,
             "kernel": "k", "python": "3", "postgresql": "15", "redis_server": "7",
             "loadavg_start": ["0"], "loadavg_end": ["0"], "wall_seconds": 1,
             "packages": {"procrastinate": {"procrastinate": "-"}}}
    settings = {"cpu": 0, "raw": "bench/RESULTS.json", "requests": 10, "rounds": 1,
                "db_jobs": 10, "durable_jobs": 50, "latency_samples": 5}
    md = report.render(results, facts, settings, "bench/run.py")
    assert "## Issue 10: summary" in md and "threads" in md
    assert "costs the application's own SQL" in md
