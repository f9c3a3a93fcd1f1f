"""Turn the per-round results of run.py into RESULTS.md (markdown).

Re-render from saved raw numbers:  python bench/report.py bench/RESULTS.json
"""
import json
import os
import sys
from statistics import median

# metric -> (label, unit, kind, floor metric, target ratio or None)
# kind "cost": lower is better, ratio = row / floor;
# kind "rate": higher is better, ratio = floor / row (= cost per job vs floor).
METRICS = [
    ("enqueue_us", "enqueue cost", "µs", "cost", "enqueue_us", 1.5),
    ("enqueue_direct_us", "enqueue via queue.perform()", "µs", "cost", "enqueue_us", None),
    ("e2e_jobs_s", "end to end, 1 txn per job", "jobs/s", "rate", "e2e_jobs_s", 5.0),
    ("drain_jobs_s", "drain of a queued backlog", "jobs/s", "rate", "drain_jobs_s", None),
    ("latency_p50_us", "enqueue-to-start p50", "µs", "cost", "latency_p50_us", 1.5),
    ("latency_p99_us", "enqueue-to-start p99", "µs", "cost", "latency_p99_us", None),
    ("progress_set_us", "progress set", "µs", "cost", "progress_set_us", 1.5),
    ("progress_get_us", "progress get", "µs", "cost", "progress_get_us", 1.5),
]
# Redis rows compare progress with raw redis-py SET/GET (measured in the floor
# process) and have no ratio target: their target is the round-trip count.
REDIS_PROGRESS_FLOOR = {"progress_set_us": "redis_progress_set_us",
                        "progress_get_us": "redis_progress_get_us"}

RT_METRICS = [  # metric, label, target predicate, target text
    ("rt_enqueue", "round trips / enqueue", lambda v: v <= 1.0, "≤ 1"),
    ("rt_job", "round trips / job end to end", lambda v: v <= 1.5, "≤ 1.5"),
    ("rt_progress_set", "round trips / progress set", lambda v: 0 < v <= 1.0, "≤ 1"),
    ("rt_progress_get", "round trips / progress get", lambda v: v == 1.0, "= 1"),
    ("srv_rt_enqueue", "server: requests read / enqueue", None, ""),
    ("srv_rt_job", "server: requests read / job", None, ""),
    ("cmd_enqueue", "server: commands / enqueue", None, ""),
    ("cmd_job", "server: commands / job", None, ""),
]
# Rows whose jobs run in another process: the client-side counter only sees
# the enqueuing process, so their per-job figure is the server-side one.
OUT_OF_PROCESS = {"project-rq": {"rt_job": "srv_rt_job"}}
POOL_TARGET = 14.0


def _fmt(v):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    return "%.2f" % v


def _rt(v):
    return ("%.3f" % v).rstrip("0").rstrip(".") if v % 1 else "%d" % v


def _is_redis(row):
    return row.endswith(("redis", "rq"))


def _mark(ok):
    return "–" if ok is None else ("✅" if ok else "❌")


def _rows(results):
    seen = []
    for rnd in results["core"]:
        for row in rnd:
            if row not in seen:
                seen.append(row)
    order = ["floor", "floor+txn", "ThreadPoolExecutor", "original-memory", "original-redis",
             "project-memory", "project-redis", "project-rq"]
    return sorted(seen, key=lambda r: order.index(r) if r in order else 99)


def _series(results, row, metric, floor_metric, kind, base="floor"):
    """Per-round values and per-round ratios to the floor of the same round."""
    vals, ratios = [], []
    for rnd in results["core"]:
        m = rnd.get(row, {}).get("metrics", {})
        f = rnd.get(base, {}).get("metrics", {})
        if metric not in m:
            continue
        vals.append(m[metric])
        if floor_metric in f and m[metric] and f[floor_metric]:
            ratios.append(m[metric] / f[floor_metric] if kind == "cost" else f[floor_metric] / m[metric])
    return vals, ratios


def _spread(ratios):
    return (max(ratios) - min(ratios)) / median(ratios) * 100 if len(ratios) > 1 else 0.0


def render(results, facts, settings, cmd):
    rows = _rows(results)
    pool_jobs = {int(k): v for k, v in settings["pool_jobs"].items()}  # JSON keys are str
    out = []
    w = out.append
    w("# tgext.asyncjob benchmark results\n")
    w("Command (from the repository root; creates `bench/.venv-original` on first use):\n")
    w("```\n%s\n```\n" % cmd)
    w("Run on %s, %d rounds, %s s wall time. Raw per-round numbers: `%s`.\n"
      % (facts["date"], settings["rounds"], facts["wall_seconds"], settings["raw"]))

    if facts.get("sources_changed_during_run"):
        w("**Warning: tgext/asyncjob sources changed while this ran; rounds may "
          "mix versions. Rerun for clean numbers.**\n")

    # ---- errors / skipped rows
    problems = []
    for i, rnd in enumerate(results["core"] + results["pool"]):
        for row, r in rnd.items():
            if "error" in r:
                problems.append((row, r["error"]))
    if problems:
        w("**Rows not measured:**\n")
        for row, err in sorted(set(problems)):
            w("- `%s`: %s" % (row, err))
        w("")

    # ---- summary
    w("## Summary: median ratio to the floor of the same round\n")
    w("The **floor** is a bare `queue.Queue` plus one thread calling the same no-op "
      "callable (no transaction). Every ratio is *times the floor's cost*: for times "
      "(µs) row / floor, for rates (jobs/s) floor / row, computed per round against "
      "that round's floor, then the median over rounds is shown. ✅/❌: target met "
      "(judged on the median ratio); targets are for `project-*` rows, other rows are "
      "marked for comparison. Redis rows compare progress calls with raw redis-py "
      "SET/GET (no ratio target; their target is the round-trip count below).\n")
    hdr = ["row"] + ["%s%s" % (label, "" if t is None else " (≤ %g×)" % t)
                     for _, label, _, _, _, t in METRICS]
    w("| " + " | ".join(hdr) + " |")
    w("|" + "---|" * len(hdr))
    for row in rows:
        cells = [row]
        for metric, label, unit, kind, fmetric, target in METRICS:
            if _is_redis(row) and metric in REDIS_PROGRESS_FLOOR:
                fmetric, target = REDIS_PROGRESS_FLOOR[metric], None
            vals, ratios = _series(results, row, metric, fmetric, kind)
            if not ratios:
                cells.append("–")
                continue
            r = median(ratios)
            cells.append("%s×%s" % (_fmt(r), "" if target is None else " " + _mark(r <= target)))
        w("| " + " | ".join(cells) + " |")
    w("")

    # ---- detail per metric
    w("## Detail per metric\n")
    w("median and best (min time / max rate) over rounds of the raw value; ratio "
      "median, min and spread ((max−min)/median of the per-round ratios).\n")
    for metric, label, unit, kind, fmetric0, target0 in METRICS:
        w("### %s (%s)\n" % (label, unit))
        w("| row | median | best | ratio median | ratio min | ratio spread | target | met? |")
        w("|---|---|---|---|---|---|---|---|")
        for row in rows:
            fmetric, target = fmetric0, target0
            if _is_redis(row) and metric in REDIS_PROGRESS_FLOOR:
                fmetric, target = REDIS_PROGRESS_FLOOR[metric], None
            vals, ratios = _series(results, row, metric, fmetric, kind)
            if not vals:
                continue
            best = min(vals) if kind == "cost" else max(vals)
            rm = median(ratios) if ratios else None
            w("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                row, _fmt(median(vals)), _fmt(best),
                _fmt(rm) + "×" if rm else "–", _fmt(min(ratios)) + "×" if ratios else "–",
                "%.0f%%" % _spread(ratios) if ratios else "–",
                "≤ %g×" % target if target else ("vs raw redis" if fmetric != fmetric0 else "–"),
                _mark(rm <= target) if (target and rm) else "–"))
        if metric == "e2e_jobs_s":
            txn = []
            for row in rows:
                _, r = _series(results, row, metric, metric, kind, base="floor+txn")
                if r and row not in ("floor", "floor+txn", "ThreadPoolExecutor"):
                    txn.append("%s %s×" % (row, _fmt(median(r))))
            if txn:
                w("\nSame rows against `floor+txn` (the floor thread also doing "
                  "`transaction.begin()`/`commit()`), median ratio: %s." % ", ".join(txn))
        if metric in REDIS_PROGRESS_FLOOR:
            vals, _ = _series(results, "floor", REDIS_PROGRESS_FLOOR[metric], metric, "cost")
            if vals:
                w("| *raw redis-py floor* | %s | %s | 1.00× | | | | |" % (_fmt(median(vals)), _fmt(min(vals))))
        w("")

    # ---- Redis round trips
    redis_rows = [r for r in rows if _is_redis(r)]
    if redis_rows:
        w("## Redis round trips\n")
        w("Counted for real, client side: every request the benchmark process writes to "
          "a Redis socket goes through `redis.connection.AbstractConnection.send_packed_command` "
          "once (a pipeline is one call) and waits for its reply; the harness wraps that "
          "method and counts calls over 200 enqueues (worker parked), over 200 jobs end to end "
          "(minus a sentinel-only run) and over 200 progress set / get calls. Cross-check, "
          "server side: `INFO commandstats` delta (all commands except INFO) on the private "
          "server, which only this benchmark uses (commands ≠ round trips when pipelined), "
          "and `INFO stats` `total_reads_processed` delta (requests read from all clients, "
          "i.e. round trips of every process; INFO's own reads removed). "
          "`project-rq` runs its jobs in an RQ worker process, which the client-side "
          "counter does not see: its round trips per job and per progress set are the "
          "server-side requests read. A progress set may cost less than one round "
          "trip when the tracker batches worker-side writes (write-behind), so its target is "
          "shown as ≤ 1 (the brief: exactly 1, i.e. never more). Counting windows wait 50 ms "
          "before and after, so background writes land inside the right window. Values are the "
          "median over rounds (a range is shown "
          "when rounds differed).\n")
        hdr = ["row"] + ["%s%s" % (label, " (%s)" % t if t else "") for _, label, _, t in RT_METRICS]
        w("| " + " | ".join(hdr) + " |")
        w("|" + "---|" * len(hdr))
        for row in redis_rows:
            cells = [row]
            for metric, label, pred, t in RT_METRICS:
                src = OUT_OF_PROCESS.get(row, {}).get(metric, metric)
                vals, _ = _series(results, row, src, src, "cost")
                if not vals:
                    cells.append("–")
                    continue
                m = median(vals)
                lo, hi = _rt(min(vals)), _rt(max(vals))
                txt = _rt(m) if lo == hi else "%s (%s–%s)" % (_rt(m), lo, hi)
                cells.append(txt + ("" if pred is None else " " + _mark(pred(m))))
            w("| " + " | ".join(cells) + " |")
        fchk = [r.get("floor", {}).get("checks", {}).get("floor_redis_rt_set_get") for r in results["core"]]
        fchk = [c for c in fchk if c]
        if fchk:
            w("\nCounter sanity check: raw redis-py SET / GET in the floor process counted "
              "%s round trips per call." % " / ".join("%.2f" % v for v in fchk[0]))
        w("")

    # ---- pool
    if any(results["pool"]):
        w("## Pool: 16 threads vs 1 thread, 10 ms I/O-bound jobs (`time.sleep(0.01)`)\n")
        w("jobs/s with 1 worker thread (%d jobs) and with 16 (%d jobs); speedup = "
          "rate(16) / rate(1) of the same round; target ≥ %g×. The ideal is 16×; "
          "each job sleeps slightly longer than 10 ms.\n"
          % (pool_jobs[1], pool_jobs[16], POOL_TARGET))
        w("| row | 1 thread jobs/s | 16 threads jobs/s | speedup median | speedup min | spread | met? |")
        w("|---|---|---|---|---|---|---|")
        prow = []
        for rnd in results["pool"]:
            for k in rnd:
                r = k.split("|")[0]
                if r not in prow:
                    prow.append(r)
        for row in prow:
            one, six, sp = [], [], []
            for rnd in results["pool"]:
                a = rnd.get(row + "|1", {}).get("metrics", {}).get("sleep_jobs_s")
                b = rnd.get(row + "|16", {}).get("metrics", {}).get("sleep_jobs_s")
                if a and b:
                    one.append(a)
                    six.append(b)
                    sp.append(b / a)
            if not sp:
                w("| %s | – | – | – | – | – | – |" % row)
                continue
            w("| %s | %.1f | %.1f | %.2f× | %.2f× | %.0f%% | %s |" % (
                row, median(one), median(six), median(sp), min(sp), _spread(sp),
                _mark(median(sp) >= POOL_TARGET) if row.startswith("project") else "–"))
        w("\n`original-*` is absent: 0.3.1 has exactly one worker thread.\n")

    # ---- facts and method
    w("## Machine and software\n")
    p, po = facts["packages"], facts["packages_original_venv"]
    w("- CPU: %s, %d cores (`os.cpu_count()`), kernel %s" % (facts["cpu"], facts["cores"], facts["kernel"]))
    w("- Python %s (project venv `.venv`), %s (`bench/.venv-original`)"
      % (facts["python"], facts["python_original_venv"]))
    w("- project venv: tgext.asyncjob %s (this checkout, git %s), TurboGears2 %s, transaction %s, redis-py %s, rq %s"
      % (p["tgext.asyncjob"], facts["git"], p["TurboGears2"], p["transaction"], p["redis"], p["rq"]))
    w("- original venv: tgext.asyncjob %s (sdist from the package index), TurboGears2 %s, transaction %s, redis-py %s"
      % (po["tgext.asyncjob"], po["TurboGears2"], po["transaction"], po["redis"]))
    mods = sorted({"%s → `%s`" % (row.split("-")[0], r["checks"]["tgext.asyncjob"])
                   for rnd in results["core"] for row, r in rnd.items()
                   if "tgext.asyncjob" in r.get("checks", {})})
    if mods:
        w("- tgext.asyncjob module actually imported: %s" % "; ".join(mods))
    w("- Redis server %s" % facts["redis_server"])
    w("- load average at start / end: %s / %s (other work on the machine adds noise; see the spreads)"
      % (" ".join(facts["loadavg_start"]), " ".join(facts["loadavg_end"])))
    w("- date: %s\n" % facts["date"])
    w("## Method\n")
    w("""- Each row of each round is a fresh subprocess (`bench/harness.py`); project rows run in
  `.venv`, `original-*` rows in `bench/.venv-original` (same import name, so never in one process).
  Row order is shuffled per round (fixed seeds) so no row always runs first.
- CPU placement: every benchmark process calls `os.sched_setaffinity(0, {%(cpu)d})` before it
  starts any thread, so the caller and all worker threads of every row share CPU %(cpu)d; the
  private redis-server is pinned to the other CPU.
- GC: default thresholds, enabled; `gc.collect()` before each timed phase and `gc.freeze()`
  after warm-up (500 no-op jobs). `PYTHONHASHSEED=0`.
- One worker thread everywhere except the pool test. Jobs are the same module-level no-op function.
- **enqueue cost**: the worker is parked inside a blocking job, then %(jobs)d enqueues are timed in
  the caller (`asyncjob_perform(noop)` for this project and 0.3.1, `queue.put` for the floor,
  `executor.submit` for ThreadPoolExecutor).
- **enqueue via queue.perform()**: the same, calling the queue object's `perform(fn, args, kwargs)`
  directly (`app_globals.asyncjob_queue.perform` in 0.3.1, the `JobQueue` returned by
  `start_async_worker` here): the cost without `asyncjob_perform`'s lookup of the current
  queue. For this project, `asyncjob_perform` runs outside any request/TG context (no TG
  context pushed); for 0.3.1 a TG context is pushed, since its lookup needs one.
- **drain**: that backlog of %(jobs)d jobs is released; time until a final sentinel job has run.
- **end to end**: %(jobs)d enqueues with the worker live, clock stops when a sentinel job after them
  has run. Each job runs in its own `transaction` transaction in this project, in 0.3.1 and in
  `floor+txn` (same worker thread doing `transaction.begin()` / `commit()` around the call);
  the bare floor and ThreadPoolExecutor run no transaction. The ratio is always to the bare floor.
- **latency**: %(latency_samples)d single jobs into an idle worker (1 ms pause between them);
  time from just before the enqueue call to the first line of the job.
- **progress**: %(progress_calls)d (Redis rows: %(redis_progress_calls)d) `asyncjob_set_progress(i, "step")`
  calls timed inside a running job, then as many `asyncjob_get_progress(job_id)` calls from the
  caller while that job is still running. In-memory rows: best of 5 such loops (a call is
  ~1 µs, so one preemption would skew a loop); Redis rows: one loop.
  Floor: a dict guarded by a `threading.Lock`; Redis floor: raw redis-py `SET`/`GET` of the JSON value.
- **project-rq**: `start_async_worker(..., backend="rq")` in the benchmark process, which
  only enqueues; one worker process `python -m tgext.asyncjob.rqworker --app rqjobs:make_app
  --simple` (RQ SimpleWorker: no fork per job) runs the jobs, pinned to the same CPU. Its jobs
  (bench/rqjobs.py) signal through Redis lists and stamp `time.perf_counter()` (CLOCK_MONOTONIC,
  comparable across processes). Being ~200 jobs/s, it uses 500 jobs and 200 latency samples.
- 0.3.1 is driven through its public API: a minimal TG app is built with
  `tg.MinimalApplicationConfigurator` and a TG context holding its `app_globals` is pushed on the
  caller thread, so `asyncjob_perform` (which reads `tg.app_globals.asyncjob_queue`) works outside a request.
- Targets are judged on the median ratio over rounds; min and spread show how stable it was.
""" % settings)
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
    if os.path.exists(notes):  # prose kept apart from the code that draws the tables
        with open(notes) as f:
            out.append("\n" + f.read())
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raw = sys.argv[1]
    with open(raw) as f:
        d = json.load(f)
    with open(os.path.splitext(raw)[0] + ".md", "w") as f:
        f.write(render(d["results"], d["facts"], d["settings"], d["command"]))
