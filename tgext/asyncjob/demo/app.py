"""The demo application: a form that queues jobs writing rows, and the job pages.

Each call of :func:`build_demo` builds an independent application (its own
configurator, SQLAlchemy session, engine and job queue), so tests can build several.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import types
from typing import Any

import sqlalchemy as sa
import tg
from markupsafe import Markup
from sqlalchemy import orm
from tg import FullStackApplicationConfigurator, TGController, expose
from zope.sqlalchemy import register

from .. import (asyncjob_cancelled, asyncjob_perform, asyncjob_running_uid,
                asyncjob_set_progress, current_queue, start_async_worker)
from ..web import AsyncJobController, progress_snippet

MAX_ROWS = 1000
MAX_DELAY = 5.0


class Base(orm.DeclarativeBase):
    """Declarative base of the demo's one table."""


class DemoRow(Base):
    """A row written by a demo job."""

    __tablename__ = 'asyncjob_demo_rows'

    id = sa.Column(sa.Integer, primary_key=True)
    job_id = sa.Column(sa.String(64), nullable=False, index=True)
    number = sa.Column(sa.Integer, nullable=False)


class DemoModel:
    """The ``model`` TurboGears' SQLAlchemy component wants, one per application:
    a module-level session would be shared by every demo app built in a process."""

    def __init__(self) -> None:
        self.DBSession = orm.scoped_session(orm.sessionmaker(autoflush=True))
        register(self.DBSession)  # joins the request's or the job's transaction
        self.metadata = Base.metadata

    def init_model(self, engine: sa.Engine) -> None:
        """Bind the session to the application's engine (called by TurboGears)."""
        self.DBSession.configure(bind=engine)


# -- the jobs ---------------------------------------------------------------------

def write_rows(rows: int, delay: float) -> dict[str, int]:
    """Job: write ``rows`` rows, ``delay`` seconds apart, reporting progress as it goes.

    Uses the application's ``DBSession``: inside a job it is the job's own session,
    in the job's own transaction, committed when the job returns.
    """
    session = tg.config['DBSession']
    jobid = asyncjob_running_uid()
    for number in range(1, rows + 1):
        if asyncjob_cancelled():
            raise RuntimeError(f'cancelled after {number - 1} rows')
        time.sleep(delay)
        session.add(DemoRow(job_id=jobid, number=number))
        session.flush()
        asyncjob_set_progress(number * 100 // rows, {
            'done': number, 'total': rows, 'message': f'Wrote row {number} of {rows}'})
    return {'rows': rows}


def failing_job(steps: int = 3, delay: float = 0.2) -> None:
    """Job: make some progress, then fail on purpose (its rows are rolled back)."""
    session = tg.config['DBSession']
    for number in range(1, steps + 1):
        time.sleep(delay)
        session.add(DemoRow(job_id=asyncjob_running_uid(), number=number))
        session.flush()
        asyncjob_set_progress(number * 100 // (steps * 2),
                              {'message': f'Step {number}, all going well so far'})
    raise RuntimeError('this demo job fails on purpose')


# -- pages ------------------------------------------------------------------------

_INDEX = Markup('''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tgext.asyncjob demo</title>
<link rel="stylesheet" href="{base}/asyncjob/static/asyncjob.css">
<script src="{base}/asyncjob/static/asyncjob.js" defer></script>
</head>
<body class="asyncjob-page">
<main>
<h1>tgext.asyncjob demo</h1>
<p>Jobs run on a worker thread, each in its own database transaction.
{rows} row(s) in the table so far.</p>

<h2>Start a job</h2>
<form method="post" action="{base}/start">
  <p><label for="rows">Rows to write</label>
     <input id="rows" name="rows" type="number" min="1" max="{max_rows}" value="20" required></p>
  <p><label for="delay">Delay between rows (seconds)</label>
     <input id="delay" name="delay" type="number" min="0" max="{max_delay}" step="0.01"
            value="0.1" required></p>
  <p><button type="submit" id="start">Start job</button></p>
</form>
<form method="post" action="{base}/fail">
  <p><button type="submit" id="fail">Start a job that fails</button></p>
</form>

<h2>Recent jobs</h2>
{recent}
<p><a href="{base}/asyncjob/jobs">All recent jobs</a></p>
</main>
</body>
</html>
''')


class DemoRootController(TGController):
    """The demo's pages; the job pages are mounted by hand at ``/asyncjob``."""

    asyncjob = AsyncJobController()

    @expose()
    def index(self, **params: Any) -> str:
        """The form, and live progress of the last few jobs (``progress_snippet``)."""
        count = tg.config['DBSession'].query(sa.func.count(DemoRow.id)).scalar()
        base = tg.request.script_name
        recent = [Markup('<h3><a href="{base}/asyncjob/progress/{id}"><code>{short}</code></a> '
                         '{name}</h3>\n').format(base=base, id=s.id, short=s.id[:12],
                                                  name=(s.name or '').rsplit('.', 1)[-1])
                  + progress_snippet(s.id, f'{base}/asyncjob', include_assets=False)
                  for s in current_queue().recent(5)]
        tg.response.headers['Cache-Control'] = 'no-store'
        return str(_INDEX.format(base=base, rows=count, max_rows=MAX_ROWS, max_delay=MAX_DELAY,
                                 recent=Markup('').join(recent) or Markup('<p>None yet.</p>')))

    @expose()
    def start(self, rows: str = '20', delay: str = '0.1', **params: Any) -> None:
        """POST: queue :func:`write_rows`, then show its progress page."""
        self._post_only()
        try:
            n = int(rows)
            pause = float(delay)
        except ValueError:
            tg.abort(400, 'rows must be an integer and delay a number')
        if not (1 <= n <= MAX_ROWS and 0 <= pause <= MAX_DELAY):
            tg.abort(400, f'rows must be 1..{MAX_ROWS} and delay 0..{MAX_DELAY} s')
        self._go(asyncjob_perform(write_rows, n, pause))

    @expose()
    def fail(self, **params: Any) -> None:
        """POST: queue :func:`failing_job`, then show its progress page."""
        self._post_only()
        self._go(asyncjob_perform(failing_job))

    @staticmethod
    def _post_only() -> None:
        # Starting a job changes state: a crawler following links must not start any.
        if tg.request.method != 'POST':
            tg.abort(405, 'use POST', headers={'Allow': 'POST'})

    @staticmethod
    def _go(jobid: str) -> None:
        # 303: the browser follows with a GET, so reloading the page does not resubmit.
        tg.redirect(f'/asyncjob/progress/{jobid}', redirect_with=tg.exceptions.HTTPSeeOther)


# -- building the application -------------------------------------------------------

@dataclasses.dataclass
class DemoApp:
    """A built demo application and what tests need to drive and tear it down."""

    wsgi_app: Any
    conf: Any
    configurator: FullStackApplicationConfigurator
    model: DemoModel

    @property
    def app_globals(self) -> Any:
        """The application's globals (``asyncjob_queue`` lives there)."""
        return self.conf['tg.app_globals']

    @property
    def engine(self) -> sa.Engine:
        """The application's SQLAlchemy engine."""
        return self.app_globals.sa_engine

    @property
    def dbsession(self) -> orm.scoped_session:
        """The application's scoped session."""
        return self.model.DBSession


def _renderers() -> list[str]:
    """The demo renders no template, but TurboGears resolves the ``@expose`` of every
    controller imported so far when the first app of a process is built: other
    controllers' Kajiki templates must find Kajiki enabled (as in a quickstart)."""
    try:
        import kajiki  # noqa: F401
    except ImportError:
        return ['json']
    return ['json', 'kajiki']


def build_demo(db_url: str, tracker: Any = None, *, debug: bool = True, use_plug: bool = True,
               extra_config: dict[str, Any] | None = None, **options: Any) -> DemoApp:
    """Build a demo application on ``db_url``; its tables are created if missing.

    ``tracker`` is the progress tracker (default: in memory). ``options`` are the
    ``start_async_worker`` settings (``workers``, ``immediate``...). With ``use_plug``
    the queue is started by ``plug(base_config, 'tgext.asyncjob')``, falling back to
    ``start_async_worker`` when tgext.pluggable is not installed.
    """
    package = sys.modules[__package__]  # TG derives paths and names from it
    model = DemoModel()

    class Globals:
        """This application's ``app_globals`` (a class per app: TG instantiates it)."""

    base_config = FullStackApplicationConfigurator()
    base_config.update_blueprint({
        'package': package,
        'root_controller': DemoRootController(),
        'app_globals': Globals,
        'helpers': types.SimpleNamespace(),  # tgext.pluggable adds to it
        'renderers': _renderers(),
        'default_renderer': 'json',
        'use_sqlalchemy': True,
        'sqlalchemy.url': db_url,
        'model': model,
        'DBSession': model.DBSession,
        'tm.enabled': True,
        # The demo needs none of these; each would want files, tables or packages.
        'use_toscawidgets': False,
        'use_toscawidgets2': False,
        'session.enabled': False,
        'cache.enabled': False,
        'errorpage.enabled': False,
        'sa_auth.enabled': False,
        'i18n.enabled': False,
        'serve_static': False,
        'trace_errors.enable': False,
        # debug allows the job list and tracebacks (see tgext.asyncjob.web).
        'debug': debug,
    })
    if extra_config:
        base_config.update_blueprint(dict(extra_config))

    plugged = False
    if use_plug:
        try:
            from tgext.pluggable import plug
        except ImportError:
            pass
        else:
            plug(base_config, 'tgext.asyncjob', progress_tracker=tracker, **options)
            plugged = True

    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()

    wsgi_app = base_config.make_wsgi_app()
    # configure() made this app's config the process config: take it before anything
    # else builds another application.
    conf = tg.config._current_obj()
    # The config keeps only a weak reference to its configurator: keep it alive.
    conf['asyncjob.demo.configurator'] = base_config
    if not plugged:
        start_async_worker(conf['tg.app_globals'], tracker, conf=conf, **options)
    return DemoApp(wsgi_app, conf, base_config, model)


def make_demo_app(db_url: str, tracker: Any = None, **options: Any) -> Any:
    """The demo as a WSGI application (see :func:`build_demo` for the arguments)."""
    return build_demo(db_url, tracker, **options).wsgi_app
