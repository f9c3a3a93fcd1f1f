"""The TurboGears application the request and database benchmarks drive.

One module for every virtualenv (this tree, the baseline commit, 0.3.1), so the
same controllers and the same model are measured whatever tgext.asyncjob is
installed.  ``variant`` says who runs the jobs:

* ``floor``: a bare ``queue.Queue`` and one thread calling the job (the database
  floor runs its inserts in the caller thread instead, see suite_db.py);
* ``asyncjob``: the installed tgext.asyncjob, started after the build with
  ``start_async_worker(app_globals, tracker)`` (the 0.3 entry point every version
  has), jobs queued with ``asyncjob_perform`` as an application does.
"""
import queue
import sys
import threading

import tg
from tg import MinimalApplicationConfigurator, TGController, expose


class FloorQueue:
    """queue.Queue + one daemon thread: the least a hand-off to a thread costs."""

    def __init__(self):
        self.q = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        get = self.q.get
        while True:
            fn, args = get()
            fn(*args)

    def perform(self, fn, *args):
        self.q.put((fn, args))
        return "job"


class Model:
    """A quickstart-shaped model: DBSession registered with zope.sqlalchemy, one table."""

    def __init__(self):
        from sqlalchemy import Column, Integer, String
        from sqlalchemy.orm import declarative_base, scoped_session, sessionmaker
        from zope.sqlalchemy import register
        self.DBSession = scoped_session(sessionmaker(autoflush=True))
        register(self.DBSession)
        Base = declarative_base()

        class Row(Base):
            __tablename__ = "bench_rows"
            id = Column(Integer, primary_key=True)
            name = Column(String(40), nullable=False)

        self.Row, self.metadata, self.rows = Row, Base.metadata, Row.__table__

    def init_model(self, engine):
        self.DBSession.configure(bind=engine)

    def insert(self, name):
        """The job of the database benchmark: one row through the app's session."""
        self.DBSession().add(self.Row(name=name))


def build(variant, job, db_url=None, tracker=None, workers=1, extra_controllers=None,
          **start_options):
    """A ``webtest.TestApp`` with ``/plain`` (answers, queues nothing) and ``/queue``
    (the same answer after queueing ``job``), plus ``extra_controllers`` (name: exposed
    method).  Returns (testapp, perform, extras).  ``start_options`` go to
    ``start_async_worker`` (e.g. ``backend='sqlalchemy'``)."""
    import webtest

    holder = {}

    class Root(TGController):
        @expose("json")
        def plain(self):
            return {"jobid": None}

        @expose("json")
        def queue(self):
            return {"jobid": holder["perform"](job)}

    for name, method in (extra_controllers or {}).items():
        setattr(Root, name, method)
    cfg = MinimalApplicationConfigurator()
    # "package": an application's package, so that tgext.asyncjob takes this
    # configuration (DBSession, sqlalchemy.url) as the one its jobs run under.
    cfg.update_blueprint({"root_controller": Root(), "renderers": ["json"],
                          "default_renderer": "json", "package": sys.modules[__name__]})
    model = None
    if db_url:
        from tg.configurator.components.sqlalchemy import SQLAlchemyConfigurationComponent
        from tg.configurator.components.transactions import TransactionManagerConfigurationComponent
        model = Model()
        cfg.register(SQLAlchemyConfigurationComponent)
        cfg.register(TransactionManagerConfigurationComponent)
        cfg.update_blueprint({"use_sqlalchemy": True, "sqlalchemy.url": db_url,
                              "model": model, "DBSession": model.DBSession,
                              "tm.enabled": True})
    wsgi = cfg.make_wsgi_app()
    app_globals = tg.config["tg.app_globals"]
    if model is not None:
        model.metadata.drop_all(app_globals.sa_engine)
        model.metadata.create_all(app_globals.sa_engine)
    if variant == "floor":
        holder["perform"] = FloorQueue().perform
        extras = {}
    else:
        import tgext.asyncjob as aj
        try:  # the bench-proto prototype: hand-off after the response (plug() adds it)
            from tgext.asyncjob.handoff import HandOffAfterResponse
            wsgi = HandOffAfterResponse(wsgi)
        except ImportError:
            pass
        if tracker is None:
            from tgext.asyncjob.trackers.memory import MemoryProgressTracker
            tracker = MemoryProgressTracker()
        kw = dict(start_options, **({"workers": workers} if workers != 1 else {}))
        q = aj.start_async_worker(app_globals, tracker, **kw)
        if not hasattr(q, "perform"):  # 0.3.1 returns its worker thread
            q = app_globals.asyncjob_queue
        holder["perform"] = aj.asyncjob_perform
        extras = {"queue": q}
    extras["model"] = model
    extras["app_globals"] = app_globals
    return webtest.TestApp(wsgi), holder["perform"], extras
