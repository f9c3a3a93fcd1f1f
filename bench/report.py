"""Turn the results of run.py into RESULTS.md (markdown).

Re-render from saved raw numbers:  python bench/report.py bench/RESULTS.json
"""
import json
import os
import sys
from statistics import median

REQ_ROWS = ["floor", "0.3.1", "baseline", "current", "proto"]
UNPINNED = [r + ":unpinned" for r in ("floor", "baseline", "current", "proto")]
VERSIONS = ["0.3.1", "baseline", "current"]
DB_KEYS = [("sqlite", "SQLite file"), ("pg", "PostgreSQL"),
           ("sqlite-nosync", "SQLite, synchronous=OFF"),
           ("pg-nosync", "PostgreSQL, synchronous_commit=off")]
RT = [("rt_enqueue", "per enqueue", 1.0), ("rt_job", "per job end to end", 1.5),
      ("rt_progress_set", "per progress set", 1.0), ("rt_progress_get", "per progress get", 1.0)]
PARTS = [("floor", "bare Queue.put to an idle thread"),
         ("floor_nowake", "bare Queue.put, no thread waiting"),
         ("lookup", "current_queue() alone"),
         ("direct", "queue.perform() (no lookup)"),
         ("perform", "asyncjob_perform()"),
         ("no_handoff", "asyncjob_perform() without the hand-off to the worker"),
         ("deferred", "asyncjob_perform(), hand-off deferred to close() (prototype)")]


def _fmt(v, unit=""):
    if v is None:
        return "–"
    a = abs(v)
    s = ("{:,.0f}".format(v) if a >= 1000 else "%.0f" % v if a >= 100 else
         "%.1f" % v if a >= 10 else "%.2f" % v)
    return s + unit


def _rt(v):
    return "–" if v is None else ("%.3f" % v).rstrip("0").rstrip(".")


def _pct(v):
    return "–" if v is None else "%+.1f%%" % (v * 100)


def _mark(ok):
    return "" if ok is None else (" ✅" if ok else " ❌")


def _runs(results, suite, row):
    return [r for r in results.get(suite, {}).get(row, []) if "metrics" in r]


def _med(results, suite, row, metric):
    vals = [r["metrics"][metric] for r in _runs(results, suite, row) if metric in r["metrics"]]
    return median(vals) if vals else None


def _vs(cur, base, higher_is_better):
    """'current vs baseline' cell: relative change, ✅ unless worse by more than 10%."""
    if cur is None or base is None or base == 0:
        return "–"
    change = cur / base - 1
    worse = -change if higher_is_better else change
    return "%s%s" % (_pct(change), _mark(worse <= 0.10))


def _added(results, row, clock):
    q = _med(results, "request", row, "%s_queue_us" % clock)
    p = _med(results, "request", row, "%s_plain_us" % clock)
    return None if q is None or p is None else q - p


def render(results, facts, settings, cmd):
    out = []
    w = out.append
    base = facts.get("baseline", "?")[:7]
    w("# tgext.asyncjob benchmark results\n")
    w("Run on **%s**, tree `%s` (`current`) against baseline `%s` (`baseline`), 0.3.1 from "
      "PyPI and procrastinate %s, all in this one run (%s s wall time). Command, from the "
      "repository root:\n" % (facts["date"], facts["git"], base,
                              facts["packages"]["procrastinate"].get("procrastinate", "?"),
                              facts["wall_seconds"]))
    w("```\n%s\n```\n" % cmd)
    w("Conditions: %s, %d cores, Linux %s, Python %s, PostgreSQL %s, Redis %s. Every "
      "measuring process pinned to CPU %d (its threads too); PostgreSQL is the machine's "
      "shared server, not pinned. Load average %s at the start, %s at the end: "
      "**other work was running on this 2-core machine, so absolute figures are noisy**; "
      "every comparison below is between rows of this same run, interleaved or "
      "alternated, and the ratios are what to read. Raw numbers: `%s`.\n" % (
          facts["cpu"], facts["cores"], facts["kernel"], facts["python"], facts["postgresql"],
          facts["redis_server"], settings["cpu"], " ".join(facts["loadavg_start"]),
          " ".join(facts["loadavg_end"]), settings["raw"]))
    if facts.get("durable_tree"):
        w("The issue 12 rows of `current` (sqlalchemy, threads) ran from `%s` "
          "(`--durable-tree`: main had no sqlalchemy backend yet).\n" % facts["durable_tree"])
    if facts.get("proto"):
        w("Row `proto`: the library prototype of bench/NOTES.md, `%s` (`--proto`).\n"
          % facts["proto"])
    if facts.get("sources_changed_during_run"):
        w("**Warning: tgext/asyncjob sources changed while this ran. Rerun.**\n")

    problems = sorted({(s, row, r["error"].splitlines()[0][:200])
                       for s, rows in results.items() for row, rs in rows.items()
                       for r in rs if "error" in r})
    if problems:
        w("**Not measured in this run:**\n")
        for s, row, err in problems:
            w("- %s / `%s`: %s" % (s, row, err))
        w("")

    # ------------------------------------------------------------------ summary
    w("## Issue 10: summary\n")
    w("`current` vs `baseline`: relative change of the figure; ✅ unless it got worse "
      "by more than 10% (the issue's rule). Target marks are for `current`.\n")
    w("| figure | target | floor | 0.3.1 | baseline %s | current | current vs baseline |" % base)
    w("|---|---|---|---|---|---|---|")
    for clock, label in (("webtest", "perform's share of a request (WebTest GET)"),
                         ("body", "perform's share of a request (time to response body)")):
        cells = [_med(results, "request", r, "%s_share" % clock) for r in REQ_ROWS]
        cur = cells[3]
        w("| %s | ≤ 1%% | %s | %s | %s | %s%s | %s |" % (
            label, _pct(cells[0]), _pct(cells[1]), _pct(cells[2]), _pct(cur),
            _mark(cur <= 0.01) if cur is not None else "",
            _vs(_added(results, "current", clock), _added(results, "baseline", clock), False)
            + " (added µs)"))
    for clock, label in (("webtest", "same, unpinned (both CPUs), WebTest"),
                         ("body", "same, unpinned (both CPUs), time to body")):
        cells = [_med(results, "request", r + ":unpinned", "%s_share" % clock)
                 for r in ("floor", "baseline", "current")]
        if cells[2] is None:
            continue
        added = [None if _med(results, "request", r, "%s_queue_us" % clock) is None else
                 _med(results, "request", r, "%s_queue_us" % clock)
                 - _med(results, "request", r, "%s_plain_us" % clock)
                 for r in ("baseline:unpinned", "current:unpinned")]
        w("| %s | ≤ 1%% | %s | – | %s | %s%s | %s |" % (
            label, _pct(cells[0]), _pct(cells[1]), _pct(cells[2]), _mark(cells[2] <= 0.01),
            _vs(added[1], added[0], False) + " (added µs)"))
    if _runs(results, "request", "proto"):
        w("| *prototype `proto`: hand-off after the response* (WebTest / body; unpinned) "
          "| ≤ 1%% | | | | %s / %s; %s / %s | |" % (
              _pct(_med(results, "request", "proto", "webtest_share")),
              _pct(_med(results, "request", "proto", "body_share")),
              _pct(_med(results, "request", "proto:unpinned", "webtest_share")),
              _pct(_med(results, "request", "proto:unpinned", "body_share"))))
    for key, label in DB_KEYS:
        suite = "db:" + key
        cells = [_med(results, suite, r, "ratio") for r in VERSIONS]
        cur = cells[2]
        w("| end to end, 1 insert per job, %s: rate / floor's | ≥ 0.8 | 1 | %s | %s | %s%s | %s |" % (
            label, _fmt(cells[0]), _fmt(cells[1]), _fmt(cur),
            _mark(cur >= 0.8) if cur is not None else "", _vs(cur, cells[1], True)))
    for metric, label, target in RT:
        cells = [_med(results, "redis", r, metric) for r in VERSIONS]
        cur = cells[2]
        w("| Redis round trips %s | ≤ %g | – | %s | %s | %s%s | %s |" % (
            label, target, _rt(cells[0]), _rt(cells[1]), _rt(cur),
            _mark(cur <= target) if cur is not None else "", _vs(cur, cells[1], False)))
    w("")

    # ------------------------------------------------------------------ request
    w("## Cost of asyncjob_perform inside a minimal TurboGears request\n")
    w("A `MinimalApplicationConfigurator` app with a JSON controller `/queue` that calls "
      "`asyncjob_perform(job)` (floor: a bare `queue.Queue.put` to one thread) and the same "
      "controller `/plain` without it, in one process, requests interleaved (%d pairs per "
      "clock per round, %d rounds, median per round then median of rounds). Before each "
      "request the job has run and the worker waits again (0.5 ms idle). Two clocks: "
      "**WebTest** `TestApp.get` (lint off) and **body**: a bare WSGI call timed until the "
      "response body is complete, before `close()` (what a client behind a real server "
      "waits for). Rows `:unpinned` run one round on both CPUs instead of one.\n"
      % (settings["requests"], settings["rounds"]))
    w("| row | clock | plain request µs | with one job µs | added µs | share | rounds |")
    w("|---|---|---|---|---|---|---|")
    for row in REQ_ROWS + UNPINNED:
        for clock in ("webtest", "body"):
            runs = _runs(results, "request", row)
            if not runs:
                continue
            w("| %s | %s | %s | %s | %s | %s | %s |" % (
                row, clock, _fmt(_med(results, "request", row, clock + "_plain_us")),
                _fmt(_med(results, "request", row, clock + "_queue_us")),
                _fmt(_added(results, row, clock)),
                _pct(_med(results, "request", row, clock + "_share")),
                ", ".join(_pct(r["metrics"][clock + "_share"]) for r in runs)))
    w("")

    if results.get("parts"):
        w("## Where the time goes inside the request\n")
        w("µs added to the same `/plain` request by each piece, measured in one process per "
          "round with every piece interleaved in a shuffled order (median per round, median "
          "of rounds). See bench/NOTES.md for what it means.\n")
        for suffix, title in (("", "pinned to one CPU"),
                              (":unpinned", "unpinned, both CPUs (as a web server runs)")):
            rows = [r + suffix for r in ("baseline", "current")]
            if not any(_runs(results, "parts", r) for r in rows):
                continue
            w("*%s:*\n" % (title[0].upper() + title[1:]))
            w("| piece | baseline WebTest | current WebTest | baseline body | current body |")
            w("|---|---|---|---|---|")
            for key, label in PARTS:
                cells = [_med(results, "parts", row, "%s_%s_us" % (clock, key))
                         for clock in ("webtest", "body") for row in rows]
                w("| %s (`%s`) | %s |" % (label, key, " | ".join(_fmt(c) for c in cells)))
            w("| *the plain request itself* | %s |" % " | ".join(
                _fmt(_med(results, "parts", row, "%s_plain_us" % clock))
                for clock in ("webtest", "body") for row in rows))
            w("")

    if results.get("cpu"):
        w("CPU cost of the pieces on the caller's thread, outside a request, worker parked "
          "(bench/profile_perform.py: min of 7 timeit loops, µs):\n")
        w("| piece | baseline | current |")
        w("|---|---|---|")
        keys = []
        for row in ("baseline", "current"):
            for r in _runs(results, "cpu", row):
                keys += [k for k in r["metrics"] if k not in keys]
        for k in keys:
            w("| %s | %s |" % (k, " | ".join(_fmt(_med(results, "cpu", row, k))
                                           for row in ("baseline", "current"))))
        w("")

    if results.get("sql"):
        _sql(w, results)

    # ------------------------------------------------------------------ database
    w("## End to end: jobs inserting one row through the app's DBSession\n")
    w("The bench app with SQLAlchemy and the transaction manager; a job is "
      "`DBSession.add(Row(name=...))`, run by the library in its own transaction; jobs are "
      "queued from the main thread with `queue.perform(fn, args, kwargs)`, one worker; the "
      "clock stops when a sentinel queued last has run. The **floor** is the same insert "
      "done in one thread by hand: `transaction.begin()`, the insert, "
      "`transaction.commit()`. Floor and jobs alternate in the same process (5 pairs of "
      "%d jobs), so the ratio (jobs' rate / floor's rate) is taken per pair; median shown. "
      "The `nosync` variants take the disk's fsync out, leaving the CPU cost.\n"
      % max(1, settings["db_jobs"] // 5))
    w("| database | row | floor jobs/s | jobs/s | ratio (≥ 0.8) | ratios per pair |")
    w("|---|---|---|---|---|---|")
    for key, label in DB_KEYS:
        for row in VERSIONS:
            runs = _runs(results, "db:" + key, row)
            if not runs:
                continue
            ratio = _med(results, "db:" + key, row, "ratio")
            w("| %s | %s | %s | %s | %s%s | %s |" % (
                label, row, _fmt(_med(results, "db:" + key, row, "floor_jobs_s")),
                _fmt(_med(results, "db:" + key, row, "jobs_s")), _fmt(ratio),
                _mark(ratio >= 0.8) if row == "current" else "",
                " ".join(_fmt(x) for r in runs for x in r["metrics"]["ratios"])))
    w("")

    # ------------------------------------------------------------------ redis
    if results.get("redis"):
        w("## Redis round trips\n")
        w("Redis tracker, one worker thread, private redis-server. Client side: every "
          "request redis-py writes to a socket (`send_packed_command`; a pipeline is one), "
          "over 200 enqueues with the worker parked, 200 jobs end to end (minus a "
          "sentinel-only run, the worker's write-behind included), 200 progress sets and "
          "gets. Server side, as a cross-check: requests read and commands executed "
          "(`INFO stats` / `commandstats`, on a server only this process uses).\n")
        w("| row | per enqueue (≤ 1) | per job (≤ 1.5) | progress set (≤ 1) | progress get (≤ 1) "
          "| server: requests / enqueue | server: requests / job | commands / enqueue | "
          "commands / job |")
        w("|---|---|---|---|---|---|---|---|---|")
        for row in VERSIONS:
            if not _runs(results, "redis", row):
                continue
            w("| %s | %s |" % (row, " | ".join(_rt(_med(results, "redis", row, m)) for m in (
                "rt_enqueue", "rt_job", "rt_progress_set", "rt_progress_get", "srv_rt_enqueue",
                "srv_rt_job", "cmd_enqueue", "cmd_job"))))
        w("")

    # ------------------------------------------------------------------ durable
    if results.get("durable"):
        _durable(w, results, settings)
    return "\n".join(out) + "\n"


def _sql(w, results):
    w("## What loading the library costs the application's own SQL\n")
    w("The bench app on a SQLite file, in a process where the row's library is started "
      "(`floor`: none imported), no job running (bench/suite_sql.py): one `SELECT 1` on a "
      "connection of the app's engine (min of 7 timeit loops), and a GET whose controller "
      "runs one query through `DBSession` in TG's transaction (median). A connection "
      "event listener on `Engine`, anywhere in the process, sends every statement through "
      "SQLAlchemy's evented path. Rows run in separate processes, alternated; "
      "µs, with the change against `floor`.\n")
    w("| row | SELECT 1 µs | vs floor | request with one query µs | vs floor |")
    w("|---|---|---|---|---|")
    base = {m: _med(results, "sql", "floor", m) for m in ("statement_us", "request_us")}
    for row in ("floor", "0.3.1", "baseline", "current"):
        if not _runs(results, "sql", row):
            continue
        cells = []
        for m in ("statement_us", "request_us"):
            v = _med(results, "sql", row, m)
            cells += [_fmt(v), "–" if row == "floor" or not base[m] else _pct(v / base[m] - 1)]
        w("| %s | %s |" % (row, " | ".join(cells)))
    w("")


def _durable(w, results, settings):
    g = lambda row, m, s="durable": _med(results, s, row, m)  # noqa: E731
    w("## Issue 12: durable queues in the database\n")
    w("Same PostgreSQL, %d no-op jobs queued in one transaction before the workers start, "
      "then 4 workers in one process; jobs/s from their start until the last job ran. "
      "Latency: one job at a time into idle workers, %d samples, enqueue-to-start. "
      "Enqueue cost inside a transaction: begin, the request's own `SELECT 1`, the timed "
      "enqueue, commit (median of 200), first with no worker running, then (`live`) with "
      "the 4 workers idle in the same process. Round trips: counted by a TCP proxy "
      "(bench/rtproxy.py) in a separate process, each time the client speaks again after "
      "the server answered.\n" % (settings["durable_jobs"], settings["latency_samples"]))
    w("- **floor**: a bare claim loop by hand (psycopg): INSERT + `pg_notify` in one "
      "statement, LISTEN in one thread, 4 threads `UPDATE .. WHERE id = (SELECT .. FOR "
      "UPDATE SKIP LOCKED LIMIT 1) RETURNING`, run, mark done (autocommit).")
    w("- **procrastinate**: `App(PsycopgConnector)`, one worker `concurrency=4` (sync tasks "
      "on its thread pool), LISTEN/NOTIFY on; its enqueue is `task.defer()` on its own "
      "pooled connection: it cannot join the caller's transaction (only its Django "
      "integration can), so its in-transaction figure is a defer beside the transaction.")
    w("- **sqlalchemy**: this tree's backend in the bench TG app (`in_process = false`, "
      "then `backend.work(threads=4)` in this process); the enqueue goes through the app's "
      "DBSession inside `transaction.manager`. Its worker claims for every free thread in "
      "one statement and, jobs being this short, ahead (up to 8 per thread), and writes "
      "jobs' ends behind, several per transaction: so it can exceed the floor, which "
      "pays two statements per job, as the issue defines it.\n")
    by = sorted({r["checks"].get("backend_by") for row in ("sqlalchemy-pg", "sqlalchemy-sqlite")
                 for r in _runs(results, "durable", row) if r["checks"].get("backend_by")})
    if by:
        w("The sqlalchemy backend was selected by %s.\n" % "; ".join(by))
    floor, proc = g("floor-pg", "jobs_s"), g("procrastinate-pg", "jobs_s")
    w("| PostgreSQL | jobs/s | / floor (≥ 0.7) | / procrastinate (≥ 1) | enqueue in txn µs | "
      "live µs | round trips / enqueue (1) | round trips / job (workers) | latency p50 ms (≤ 5) "
      "| p99 ms |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for row in ("floor-pg", "procrastinate-pg", "sqlalchemy-pg"):
        rate = g(row, "jobs_s")
        if rate is None and not _runs(results, "durable-rt", row):
            continue
        ours = row == "sqlalchemy-pg"
        rf = rate / floor if rate and floor else None
        rp = rate / proc if rate and proc else None
        rt = g(row, "enqueue_txn_rt", "durable-rt")
        p50 = g(row, "latency_p50_ms")
        w("| %s | %s | %s%s | %s%s | %s | %s | %s%s | %s | %s%s | %s |" % (
            row.replace("-pg", ""), _fmt(rate), _fmt(rf), _mark(rf >= 0.7) if ours and rf else "",
            _fmt(rp), _mark(rp >= 1) if ours and rp else "", _fmt(g(row, "enqueue_txn_us")),
            _fmt(g(row, "enqueue_txn_live_us")), _rt(rt), _mark(rt <= 1) if ours and rt else "",
            _rt(g(row, "job_rt", "durable-rt")),
            _fmt(p50), _mark(p50 <= 5) if ours and p50 else "", _fmt(g(row, "latency_p99_ms"))))
    w("")
    w("SQLite: the same measurements on a SQLite file, %s jobs for the sqlalchemy backend "
      "and the floor (`--sqlite-jobs`), %s for the threads backend. The floor here is the "
      "same loop by hand with sqlite3: `BEGIN IMMEDIATE` claims, the enqueuing process "
      "wakes its workers at commit.\n" % (settings.get("sqlite_jobs", "?"),
                                            settings["durable_jobs"]))
    sfloor = g("floor-sqlite", "jobs_s")
    w("| SQLite file | jobs/s | / floor | enqueue in txn µs | live µs | latency p50 ms | p99 ms |")
    w("|---|---|---|---|---|---|---|")
    for row in ("floor-sqlite", "sqlalchemy-sqlite", "threads-sqlite"):
        if g(row, "jobs_s") is None:
            continue
        rate = g(row, "jobs_s")
        w("| %s | %s | %s | %s |" % (
            row.replace("-sqlite", ""), _fmt(rate), _fmt(rate / sfloor) if sfloor else "–",
            " | ".join(_fmt(g(row, m)) for m in ("enqueue_txn_us", "enqueue_txn_live_us",
                                                 "latency_p50_ms", "latency_p99_ms"))))
    w("\nThe threads backend keeps jobs in memory (no database: nothing durable); it is "
      "there to show what the database costs.\n")


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "RESULTS.json")
    with open(path) as f:
        data = json.load(f)
    md = os.path.splitext(path)[0] + ".md"
    with open(md, "w") as f:
        f.write(render(data["results"], data["facts"], data["settings"], data["command"]))
    print("wrote", md)
