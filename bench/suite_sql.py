"""What loading the library costs the application's own SQL (requests included).

A library that listens to SQLAlchemy's connection events on ``Engine`` sends every
statement of every engine in the process through SQLAlchemy's evented execution
path, whether or not a job runs. This suite measures, in a process with the row's
tgext.asyncjob started (``floor``: none imported), on the bench app's SQLite file:

* ``statement``: one ``SELECT 1`` on a connection of the app's engine (µs, min of
  timeit loops);
* ``request``: a TurboGears GET whose controller runs one query through the app's
  ``DBSession`` inside TG's transaction manager (begin, SELECT, commit; µs, median).

Rows run in separate processes, alternated by run.py; compare them with ``floor``.
"""
import os
import tempfile
import time
import timeit
from statistics import median

pc = time.perf_counter


def run(cfg):
    import logging
    logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
    logging.getLogger("tg").setLevel(logging.ERROR)
    from sqlalchemy import func, select, text
    from tg import expose
    import tgapp
    with tempfile.TemporaryDirectory() as tmpdir:
        url = "sqlite:///" + os.path.join(tmpdir, "bench.sqlite")
        variant = "floor" if cfg["row"] == "floor" else "asyncjob"
        holder = {}

        def count(self):
            model = holder["model"]
            n = model.DBSession.execute(select(func.count()).select_from(model.rows)).scalar()
            return {"rows": n}

        app, _, extras = tgapp.build(variant, None, db_url=url,
                                     extra_controllers={"count": expose("json")(count)})
        holder["model"] = extras["model"]
        engine = extras["app_globals"].sa_engine
        stmt = text("SELECT 1")
        with engine.connect() as conn:
            def statement():
                conn.execute(stmt).scalar()
            statement()
            per_statement = min(timeit.repeat(statement, number=2000, repeat=7)) / 2000
        for _ in range(300):
            app.get("/count")
        times = []
        for _ in range(cfg.get("sql_requests", 3000)):
            t0 = pc()
            app.get("/count")
            times.append(pc() - t0)
        stop = getattr(extras.get("queue"), "stop", None)  # 0.3.1's queue has none
        if stop is not None:
            stop(5)
    return {"statement_us": per_statement * 1e6, "request_us": median(times) * 1e6}, {}


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run({"row": sys.argv[1] if len(sys.argv) > 1 else "current"})[0]))
