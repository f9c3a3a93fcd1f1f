"""Durable queues in the database (issue 12): our ``sqlalchemy`` backend against
procrastinate and a hand-written floor, on the same PostgreSQL; on SQLite, the
sqlalchemy backend with the in-memory threads backend beside it for scale.

Rows (``cfg["row"]``):
* ``floor-pg``: a bare claim loop by hand with psycopg: one table, an INSERT that
  NOTIFYs in the same statement, LISTEN in one thread, and 4 threads each looping
  ``UPDATE .. WHERE id = (SELECT .. FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``, run
  the job, ``UPDATE .. SET state = 'done'`` (autocommit: one round trip each);
* ``procrastinate-pg``: procrastinate from PyPI (its own virtualenv), one worker
  with ``concurrency=4`` (sync tasks run on its thread pool), LISTEN/NOTIFY on; the
  caller defers through a second App on ``SyncPsycopgConnector``;
* ``sqlalchemy-pg`` / ``sqlalchemy-sqlite``: this tree's sqlalchemy backend in a
  TurboGears app (tgapp.py), ``backend.work(threads=4)`` in this process;
* ``floor-sqlite``: the same claim loop by hand on a SQLite file (``BEGIN
  IMMEDIATE`` claims, woken at commit by the enqueuing process, 1 s poll);
* ``threads-sqlite``: the threads backend, 4 threads, memory tracker (no database:
  for scale).

Each process measures, in this order:
1. throughput: ``jobs`` no-op jobs queued in one transaction (workers not started),
   then the 4 workers start; jobs/s from their start until the last job has run;
2. enqueue-to-start latency: one job at a time into idle workers (``stamp(t0)``
   with the caller's perf_counter), p50 / p99;
3. enqueue cost inside a transaction (µs): begin, the request's own statement
   (``SELECT 1``), the timed enqueue, commit; measured first with no worker
   started (those no-op jobs are run by the drain before the batch), and again
   at the end with the 4 workers idle in this process (``_live``).
With ``cfg["rt"]`` the process instead routes every database connection through
rtproxy.py and counts round trips of the enqueue alone (workers not started yet),
then round trips per job of the workers running a batch.
"""
import gc
import json
import os
import tempfile
import threading
import time
from statistics import median

import durablejobs

pc = time.perf_counter
THREADS = 4


def _pg(cfg, dbname, port=None):
    return "postgresql://postgres@%s:%d/%s" % (cfg["pg_host"], port or cfg["pg_port"], dbname)


class FloorPG:
    """The hand-written SKIP LOCKED claim loop (see module docstring)."""

    name = "floor"

    def __init__(self, cfg, port=None):
        import psycopg
        self.psycopg = psycopg
        self.dsn = _pg(cfg, cfg["pg_db"], port)
        self.conn = psycopg.connect(self.dsn, autocommit=False)
        with psycopg.connect(_pg(cfg, cfg["pg_db"]), autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS bench_floor_jobs")
            c.execute("CREATE TABLE bench_floor_jobs (id bigserial PRIMARY KEY, task text NOT NULL,"
                      " args jsonb NOT NULL, state text NOT NULL DEFAULT 'queued')")
            c.execute("CREATE INDEX ON bench_floor_jobs (id) WHERE state = 'queued'")
        self.wake = threading.Event()

    INSERT = ("WITH j AS (INSERT INTO bench_floor_jobs (task, args) VALUES (%s, %s) RETURNING id)"
              " SELECT id, pg_notify('bench_floor_jobs', '') FROM j")

    def enqueue(self, conn, task, args):
        return conn.execute(self.INSERT, (task, json.dumps(args))).fetchone()[0]

    def batch(self, n):
        with self.conn.transaction():
            with self.conn.cursor() as cur:
                cur.executemany("INSERT INTO bench_floor_jobs (task, args) VALUES (%s, %s)",
                                [("tick", "[]")] * n)
            self.conn.execute("SELECT pg_notify('bench_floor_jobs', '')")
        self.conn.commit()

    def in_txn(self):
        conn = self.conn
        conn.execute("SELECT 1")
        return lambda: self.enqueue(conn, "noop", []), conn.commit

    def one(self, t0):
        self.enqueue(self.conn, "stamp", [t0])
        self.conn.commit()

    def start(self):
        threading.Thread(target=self._listen, daemon=True).start()
        for _ in range(THREADS):
            threading.Thread(target=self._work, daemon=True).start()

    def _listen(self):
        conn = self.psycopg.connect(self.dsn, autocommit=True)
        conn.execute("LISTEN bench_floor_jobs")
        for _ in conn.notifies():
            self.wake.set()

    def _work(self):
        conn = self.psycopg.connect(self.dsn, autocommit=True)
        claim = ("UPDATE bench_floor_jobs SET state = 'running' WHERE id = (SELECT id FROM"
                 " bench_floor_jobs WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE"
                 " SKIP LOCKED) RETURNING id, task, args")
        while True:
            self.wake.clear()
            row = conn.execute(claim).fetchone()
            if row is None:
                self.wake.wait(1.0)
                continue
            getattr(durablejobs, row[1])(*row[2])
            conn.execute("UPDATE bench_floor_jobs SET state = 'done' WHERE id = %s", (row[0],))


class FloorSQLite:
    """The same claim loop by hand on a SQLite file (stdlib sqlite3): ``BEGIN
    IMMEDIATE`` claims (one writer at a time), the enqueuing process wakes its own
    workers at commit (an Event), a 1 s poll otherwise."""

    name = "floor"

    def __init__(self, cfg, port=None):
        import sqlite3
        self.sqlite3 = sqlite3
        self.path = os.path.join(tempfile.mkdtemp(), "floor.sqlite")
        self.conn = self._connect()
        self.conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, task TEXT NOT NULL,"
                          " args TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'queued')")
        self.conn.execute("CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued'")
        self.wake = threading.Event()

    def _connect(self):
        conn = self.sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                    check_same_thread=False)
        return conn

    def batch(self, n):
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO jobs (task, args) VALUES (?, ?)", [("tick", "[]")] * n)
        self.conn.execute("COMMIT")
        self.wake.set()

    def in_txn(self):
        conn = self.conn
        conn.execute("BEGIN")
        conn.execute("SELECT 1")

        def commit():
            conn.execute("COMMIT")
            self.wake.set()

        return lambda: conn.execute("INSERT INTO jobs (task, args) VALUES (?, ?)",
                                    ("noop", "[]")), commit

    def one(self, t0):
        self.conn.execute("INSERT INTO jobs (task, args) VALUES (?, ?)", ("stamp", json.dumps([t0])))
        self.wake.set()

    def start(self):
        for _ in range(THREADS):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self):
        conn = self._connect()
        while True:
            self.wake.clear()
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT id, task, args FROM jobs WHERE state = 'queued'"
                               " ORDER BY id LIMIT 1").fetchone()
            if row is not None:
                conn.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (row[0],))
            conn.execute("COMMIT")
            if row is None:
                self.wake.wait(1.0)
                continue
            getattr(durablejobs, row[1])(*json.loads(row[2]))
            conn.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (row[0],))


class Procrastinate:
    """procrastinate's App with its psycopg connector; a worker thread runs its loop."""

    name = "procrastinate"

    def __init__(self, cfg, port=None):
        import psycopg
        import procrastinate
        admin = _pg(cfg, cfg["pg_db"])
        db = cfg["pg_db"] + "_procrastinate"
        with psycopg.connect(admin, autocommit=True) as c:
            if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                c.execute("CREATE DATABASE %s" % db)
        with psycopg.connect(_pg(cfg, db), autocommit=True) as c:
            # a previous run's connections (its process just ended) must not hold locks
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
            c.execute("DROP SCHEMA public CASCADE")
            c.execute("CREATE SCHEMA public")
        self.dsn = _pg(cfg, db, port)
        # Two Apps, as a sync web process and a worker have (procrastinate's advice):
        # the caller defers through SyncPsycopgConnector; the worker runs on the async
        # PsycopgConnector in its event loop. (One async App used from sync code sends
        # every defer through asgiref's async_to_sync: ~10 ms each.)
        self.app = procrastinate.App(
            connector=procrastinate.SyncPsycopgConnector(conninfo=self.dsn))
        self.worker_app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=self.dsn))
        self.tasks = {name: self.app.task(name=name)(getattr(durablejobs, name))
                      for name in ("tick", "stamp", "noop")}
        for name in self.tasks:
            self.worker_app.task(name=name)(getattr(durablejobs, name))
        self.app.open()
        if port is None:
            self.app.schema_manager.apply_schema()
        else:
            procrastinate.App(connector=procrastinate.PsycopgConnector(
                conninfo=_pg(cfg, db))).open().schema_manager.apply_schema()

    def batch(self, n):
        self.tasks["tick"].batch_defer(*([{}] * n))

    def in_txn(self):
        # procrastinate's psycopg connector defers on its own pooled connection: it
        # cannot join the caller's transaction (only its Django integration can).
        return lambda: self.tasks["noop"].defer(), lambda: None

    def one(self, t0):
        self.tasks["stamp"].defer(t0=t0)

    def start(self):
        import asyncio

        async def work():
            async with self.worker_app.open_async():
                await self.worker_app.run_worker_async(concurrency=THREADS, wait=True,
                                                install_signal_handlers=False,
                                                listen_notify=True)

        threading.Thread(target=asyncio.run, args=(work(),), daemon=True).start()


class Ours:
    """This tree's sqlalchemy backend (or the threads backend) in the bench TG app."""

    def __init__(self, cfg, port=None, backend="sqlalchemy"):
        import logging
        logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
        logging.getLogger("tg").setLevel(logging.ERROR)
        import transaction
        import tgapp
        self.transaction = transaction
        self.name = backend
        self.tmp = tempfile.mkdtemp()
        if cfg["row"].endswith("sqlite"):
            url = "sqlite:///" + os.path.join(self.tmp, "jobs.sqlite")
        else:
            url = "postgresql+psycopg://postgres@%s:%d/%s" % (
                cfg["pg_host"], port or cfg["pg_port"], cfg["pg_db"])
        if backend == "sqlalchemy":
            try:
                from tgext.asyncjob.backends.sqlalchemy import SQLAlchemyBackend, metadata
            except ImportError as e:
                raise _unavailable("this tree has no sqlalchemy backend: %s" % e)
            import sqlalchemy
            eng = sqlalchemy.create_engine(url.replace(":%d/" % (port or 0), ":%d/" % cfg["pg_port"])
                                           if port else url)
            metadata.drop_all(eng)
            eng.dispose()
            # By name; where the settings refuse the name, the class as a backend factory.
            choices = [("name", "sqlalchemy"), ("class", SQLAlchemyBackend)]
        else:
            choices = [(None, None)]
        for how, value in choices:
            opts = {} if value is None else {"backend": value,
                                             "backend_options": {"in_process": False}}
            try:
                _, _, extras = tgapp.build("asyncjob", None, db_url=url, workers=THREADS,
                                           **opts)
            except ValueError as e:
                if how != "name":
                    raise
                refused = e
                continue
            if how == "class":
                self.backend_by = "class (the name was refused: %s)" % refused
            elif how == "name":
                self.backend_by = "name"
            break
        self.q, self.model = extras["queue"], extras["model"]
        if backend == "threads":
            self._park()

    def _park(self):
        # Threads backend: hold its 4 workers until start(), so that the batch is
        # queued before any runs, as for the database rows.
        self.release = threading.Event()
        parked = threading.Semaphore(0)

        def hold():
            parked.release()
            self.release.wait()

        for _ in range(THREADS):
            self.q.perform(hold, (), {})
        for _ in range(THREADS):
            parked.acquire()

    def batch(self, n):
        perform, tick = self.q.perform, durablejobs.tick
        with self.transaction.manager:
            for _ in range(n):
                perform(tick, (), {})

    def in_txn(self):
        from sqlalchemy import text
        self.transaction.begin()
        self.model.DBSession().execute(text("SELECT 1"))

        def commit():
            self.transaction.commit()
            self.model.DBSession.remove()

        return lambda: self.q.perform(durablejobs.noop, (), {}), commit

    def one(self, t0):
        self.q.perform(durablejobs.stamp, (t0,), {})

    def start(self):
        if self.name == "threads":
            self.release.set()
        else:
            threading.Thread(target=self.q.backend.work, kwargs={"threads": THREADS},
                             daemon=True).start()


def _unavailable(msg):
    class Unavailable(RuntimeError):
        pass
    return Unavailable(msg)


def make(cfg, port=None):
    row = cfg["row"]
    if row == "floor-pg":
        return FloorPG(cfg, port)
    if row == "floor-sqlite":
        return FloorSQLite(cfg, port)
    if row == "procrastinate-pg":
        return Procrastinate(cfg, port)
    if row in ("sqlalchemy-pg", "sqlalchemy-sqlite"):
        return Ours(cfg, port)
    if row == "threads-sqlite":
        return Ours(cfg, port, backend="threads")
    raise KeyError(row)


def round_trips(cfg):
    import rtproxy
    proxy = rtproxy.RoundTripProxy(cfg["pg_host"], cfg["pg_port"])
    impl = make(cfg, proxy.port)
    counts = []
    for _ in range(cfg.get("rt_samples", 20)):
        enqueue, commit = impl.in_txn()
        proxy.reset()
        enqueue()
        counts.append(proxy.turns)
        commit()
    # Per job on the worker side: m jobs queued in one transaction (not counted), then
    # the 4 workers start and run them (and the jobs queued above); every turn of
    # every connection counts (claims, completion, listener, polls, heartbeats).
    m = cfg.get("rt_jobs", 500)
    durablejobs.expect(m)
    impl.batch(m)
    proxy.reset()
    impl.start()
    if not durablejobs.all_done.wait(300):
        raise RuntimeError("only %d of %d jobs ran" % (durablejobs.count, m))
    per_job = proxy.turns / (m + len(counts))
    return {"enqueue_txn_rt": median(counts), "enqueue_txn_rt_max": max(counts),
            "job_rt": per_job}, {"rt_samples": len(counts), "rt_jobs": m + len(counts)}


def enqueue_costs(impl, k):
    costs = []
    for _ in range(k):
        enqueue, commit = impl.in_txn()
        t0 = pc()
        enqueue()
        costs.append(pc() - t0)
        commit()
    return median(costs) * 1e6


def run(cfg):
    if cfg.get("rt"):
        return round_trips(cfg)
    n, samples = cfg["durable_jobs"], cfg["latency_samples"]
    k = cfg.get("enqueue_samples", 200)
    impl = make(cfg)
    gc.collect()
    # Enqueue cost before any worker runs (the no-op jobs wait for the drain below).
    cost_alone = enqueue_costs(impl, k)
    durablejobs.expect(n)
    t0 = pc()
    impl.batch(n)
    batch_s = pc() - t0
    t0 = pc()
    impl.start()
    if not durablejobs.all_done.wait(300):
        raise RuntimeError("only %d of %d jobs ran" % (durablejobs.count, n))
    rate = (n + k) / (pc() - t0)  # the k no-op jobs queued above ran first
    time.sleep(0.2)  # every worker idle, waiting
    lat = durablejobs.latencies
    del lat[:]
    for _ in range(samples):
        time.sleep(cfg.get("latency_idle", 0.005))
        durablejobs.started.clear()
        impl.one(pc())
        if not durablejobs.started.wait(30):
            raise RuntimeError("a latency job did not start")
    lat = sorted(lat)
    cost_live = enqueue_costs(impl, k)  # now with the 4 workers idle in this process
    return {"jobs_s": rate, "batch_enqueue_jobs_s": n / batch_s,
            "latency_p50_ms": lat[len(lat) // 2] * 1e3,
            "latency_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
            "enqueue_txn_us": cost_alone, "enqueue_txn_live_us": cost_live}, {
        "jobs": n + k, "latency_samples": len(lat), "threads": THREADS, "impl": impl.name,
        "backend_by": getattr(impl, "backend_by", None)}
