"""End to end: N jobs, each inserting one row through the application's DBSession.

The app is the bench TurboGears app with SQLAlchemy and the transaction manager
(tgapp.py); its table is dropped and created for every process.  A job is
``model.insert(name)``: one INSERT through the app's scoped, zope.sqlalchemy
-registered session; the library runs it in its own transaction.  The N jobs are
queued from this (main) thread with the queue's ``perform(fn, args, kwargs)``;
the clock stops when a last sentinel job has run (one worker: FIFO, so every
insert before it has committed).

The floor does the same inserts in one thread, by hand: ``transaction.begin()``,
the same insert, ``transaction.commit()``.
"""
import gc
import os
import tempfile
import threading
import time

pc = time.perf_counter


def _db_url(cfg, tmpdir):
    if cfg["db"] == "sqlite":
        return "sqlite:///" + os.path.join(tmpdir, "bench.sqlite")
    url = cfg["pg_url"]
    if not cfg.get("fsync", True):
        url += ("&" if "?" in url else "?") + "options=-csynchronous_commit%3Doff"
    return url


def _no_sqlite_sync(engine):
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def connect(dbapi_conn, record):
        dbapi_conn.execute("PRAGMA synchronous=OFF")


def _count(model):
    import transaction
    from sqlalchemy import func, select
    with transaction.manager:
        n = model.DBSession().execute(select(func.count()).select_from(model.rows)).scalar()
    model.DBSession.remove()
    return n


def run(cfg):
    """Floor and library batches alternate in this one process (``pairs`` times
    ``db_jobs // pairs`` jobs each) so that the disk's and the machine's drift hits
    both alike; the ratio is taken per pair."""
    import logging
    logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
    logging.getLogger("tg").setLevel(logging.ERROR)
    import transaction
    import tgapp
    pairs = cfg.get("pairs", 5)
    k = max(1, cfg["db_jobs"] // pairs)
    with tempfile.TemporaryDirectory() as tmpdir:
        _, _, extras = tgapp.build("asyncjob", None, db_url=_db_url(cfg, tmpdir))
        model, q = extras["model"], extras["queue"]
        engine = extras["app_globals"].sa_engine
        if cfg["db"] == "sqlite" and not cfg.get("fsync", True):
            _no_sqlite_sync(engine)
            engine.dispose()
        insert, perform = model.insert, q.perform
        done = threading.Event()

        def floor(k, tag):
            t0 = pc()
            for i in range(k):
                transaction.begin()
                insert("%s%d" % (tag, i))
                transaction.commit()
            return pc() - t0

        def jobs(k, tag):
            done.clear()
            t0 = pc()
            for i in range(k):
                perform(insert, ("%s%d" % (tag, i),), {})
            perform(done.set, (), {})
            if not done.wait(600):
                raise RuntimeError("jobs did not finish")
            return pc() - t0

        warm = max(10, k // 5)  # connections, statement caches, first calls
        floor(warm, "wf")
        jobs(warm, "wj")
        gc.collect()
        f_rates, j_rates, ratios = [], [], []
        for p in range(pairs):
            order = (floor, jobs) if p % 2 else (jobs, floor)
            dts = {fn: fn(k, "%s%d-" % (fn.__name__, p)) for fn in order}
            f_rates.append(k / dts[floor])
            j_rates.append(k / dts[jobs])
            ratios.append(dts[floor] / dts[jobs])
        rows = _count(model)
        expected = 2 * warm + 2 * pairs * k
        if rows != expected:
            raise RuntimeError("expected %d rows, found %d" % (expected, rows))
        if hasattr(q, "stop"):
            q.stop(5)
        engine.dispose()
    from statistics import median
    return ({"floor_jobs_s": median(f_rates), "jobs_s": median(j_rates),
             "ratio": median(ratios), "ratios": ratios},
            {"db_jobs": k * pairs, "pairs": pairs, "rows_checked": rows})
