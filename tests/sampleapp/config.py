"""Configuration and factory of the sample application.

A quickstarted project has one module-level ``base_config``; tests need many
independent applications in one process, so :func:`make_base_config` builds a
NEW ``FullStackApplicationConfigurator`` configured the quickstart way, and
:func:`make_app` turns it into a ``webtest.TestApp``.

Process-wide TurboGears state (milestones, ``tg.hooks``, the process config)
is NOT reset here: the ``make_app`` pytest fixture does it after each test.
Use the fixture in tests rather than calling :func:`make_app` directly.
"""

import sqlalchemy
import tg
import webtest
from tg import FullStackApplicationConfigurator

import sampleapp
from sampleapp import model
from sampleapp.controllers.root import RootController
from sampleapp.lib import helpers
from sampleapp.lib.app_globals import Globals

__all__ = ["ENABLE_MODES", "SampleTestApp", "make_app", "make_base_config"]

ENABLE_MODES = ("plug", "globals", "globals-autodetect", "after", "none")


def make_base_config(db_url, *, root=None, globals_class=None, dbsession=None,
                     extra_config=None):
    """Return a fresh configurator set up like a quickstarted ``app_cfg.py``.

    ``extra_config`` is applied last, so it can override anything (e.g.
    ``{'debug': True}`` or ``asyncjob.*`` options).
    """
    base_config = FullStackApplicationConfigurator()
    if dbsession is None:
        dbsession, app_model = model.DBSession, model
    else:
        app_model = _AppModel(dbsession)
    if root is None:
        root = RootController
    if isinstance(root, type):
        root = root()

    base_config.update_blueprint({
        "package": sampleapp,
        "root_controller": root,
        "app_globals": globals_class or Globals,
        "helpers": helpers,
        # Rendering
        "renderers": ["json", "kajiki"],
        "default_renderer": "kajiki",
        # SQLAlchemy + transaction manager, as quickstarted
        "use_sqlalchemy": True,
        "sqlalchemy.url": db_url,
        "model": app_model,
        "DBSession": dbsession,
        "tm.enabled": True,
        # Not needed by the tests and they would want files or extra setup:
        # sessions/cache want a data dir, error pages want an ``error``
        # controller on every test root, auth wants user tables.
        "use_toscawidgets": False,
        "use_toscawidgets2": False,
        "session.enabled": False,
        "cache.enabled": False,
        "errorpage.enabled": False,
        "sa_auth.enabled": False,
        "i18n.enabled": False,
        "serve_static": False,
        "debug": False,
        # Let exceptions of the app reach WebTest instead of error mails.
        "trace_errors.enable": False,
    })
    if extra_config:
        base_config.update_blueprint(dict(extra_config))
    return base_config


def make_app(db_url, *, enable="plug", plug_options=None, globals_class=None,
             root=None, extra_config=None, dbsession=None):
    """Build a new, independent sample application; return a :class:`SampleTestApp`.

    ``db_url``
        SQLAlchemy URL.  Tables of ``sampleapp.model`` are created before the
        app is built (so a worker started during startup finds them) and
        again after it (to include tables a pluggable merged in).
    ``enable``
        How tgext.asyncjob is wired in:

        * ``'plug'``: ``plug(base_config, 'tgext.asyncjob', **plug_options)``.
        * ``'globals'``: the Globals ``__init__`` calls
          ``tgext.asyncjob.start_async_worker(self, **plug_options)``.
        * ``'globals-autodetect'``: the Globals ``__init__`` calls
          ``tgext.asyncjob.start_async_worker()``.
        * ``'after'``: after the build,
          ``tgext.asyncjob.start_async_worker(app_globals, **plug_options)``.
        * ``'none'``: no asyncjob (``globals_class`` may still wire it itself).
    ``globals_class``
        Globals class to use (default ``sampleapp.lib.app_globals.Globals``);
        in the ``globals*`` modes it is subclassed to add the start call.
    ``root``
        Root controller class or instance (default ``RootController``).
    ``extra_config``
        Blueprint options applied last.
    ``dbsession``
        ``None`` uses the module-level ``sampleapp.model.DBSession`` (bound to
        this app's engine by ``init_model``, as in a quickstart).  A second app
        alive at the same time must get its own: pass
        ``sampleapp.model.new_session()``; the app's ``model`` is then a view
        of ``sampleapp.model`` whose ``DBSession`` is that session.
    """
    if enable not in ENABLE_MODES:
        raise ValueError("enable must be one of %r, not %r" % (ENABLE_MODES, enable))
    plug_options = dict(plug_options or {})

    if enable in ("globals", "globals-autodetect"):
        kwargs = plug_options if enable == "globals" else None
        globals_class = _starting_globals(globals_class or Globals, kwargs)

    base_config = make_base_config(
        db_url, root=root, globals_class=globals_class, dbsession=dbsession,
        extra_config=extra_config,
    )
    if enable == "plug":
        from tgext.pluggable import plug
        plug(base_config, "tgext.asyncjob", **plug_options)

    create_tables(db_url)
    wsgi_app = base_config.make_wsgi_app()
    # configure() pushed this app's config as the process config; take it
    # now, before anything else builds another app.
    conf = tg.config._current_obj()
    if conf.get("tg.configurator", lambda: None)() is not base_config:
        raise RuntimeError("could not find the configuration of the new app")

    app = SampleTestApp(wsgi_app, conf=conf, configurator=base_config, enable=enable)
    if getattr(app.app_globals, "sa_engine", None) is not None:
        model.metadata.create_all(app.engine)
    if enable == "after":
        import tgext.asyncjob
        tgext.asyncjob.start_async_worker(app.app_globals, **plug_options)
    return app


def create_tables(db_url):
    """Create the ``sampleapp.model`` tables at ``db_url`` (idempotent)."""
    engine = sqlalchemy.create_engine(db_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        model.metadata.create_all(engine)
    finally:
        engine.dispose()


class SampleTestApp(webtest.TestApp):
    """A ``webtest.TestApp`` that keeps handles on the app it wraps.

    Attributes: ``config`` (the app's TG config dict), ``configurator`` (kept
    alive on purpose: the config only holds a weakref to it), ``enable``,
    and the properties ``app_globals``, ``engine``, ``dbsession``.
    """

    def __init__(self, wsgi_app, *, conf, configurator, enable):
        super().__init__(wsgi_app)
        self.config = conf
        self.configurator = configurator
        self.enable = enable

    @property
    def app_globals(self):
        return self.config["tg.app_globals"]

    @property
    def engine(self):
        return self.app_globals.sa_engine

    @property
    def dbsession(self):
        return self.config["DBSession"]


class _AppModel(object):
    """``sampleapp.model`` as seen by an app with its own session.

    Same tables and metadata; ``DBSession``/``init_model`` use the given
    session so two apps never share one.
    """

    def __init__(self, dbsession):
        self.DBSession = dbsession

    def init_model(self, engine):
        self.DBSession.configure(bind=engine)

    def __getattr__(self, name):
        return getattr(model, name)


def _starting_globals(base, kwargs):
    """Subclass the Globals class ``base`` so that it starts the async worker.

    ``kwargs`` None means "call start_async_worker() with no arguments"
    (the autodetect mode); otherwise it is called as
    ``start_async_worker(self, **kwargs)``.
    """
    import tgext.asyncjob

    class Globals(base):
        def __init__(self):
            super().__init__()
            if kwargs is None:
                tgext.asyncjob.start_async_worker()
            else:
                tgext.asyncjob.start_async_worker(self, **kwargs)

    return Globals
