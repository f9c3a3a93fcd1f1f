"""Configuration and factory of the Ming sample application.

:func:`make_base_config` configures a NEW ``FullStackApplicationConfigurator`` the way
``gearbox quickstart --ming`` writes ``app_cfg.py`` and ``development.ini``
(``use_ming``, ``ming.url``/``ming.db``, ``tm.enabled = false``), on Ming's in-memory
MongoDB. The ``make_ming_app`` fixture of the tests builds and tears these down.
"""
import uuid

import tg
import webtest
from tg import FullStackApplicationConfigurator

import mingapp
from mingapp import model
from mingapp.controllers.root import RootController
from mingapp.lib.app_globals import Globals


def make_base_config(*, sqlalchemy_url=None, root=None, extra_config=None):
    """A configurator shaped like a Ming quickstart; with ``sqlalchemy_url`` the app
    also uses SQLAlchemy, with ``tm`` on (an app using both)."""
    base_config = FullStackApplicationConfigurator()
    root = root or RootController
    base_config.update_blueprint({
        'package': mingapp,
        'root_controller': root() if isinstance(root, type) else root,
        'app_globals': Globals,
        'renderers': ['json'],
        'default_renderer': 'json',
        'use_ming': True,
        # A database of its own per app: mim:// keeps every database in one process.
        'ming.url': 'mim:///',
        'ming.db': 'test_%s' % uuid.uuid4().hex[:12],
        'model': model,
        'DBSession': model.DBSession,
        'use_sqlalchemy': False,
        'tm.enabled': False,
        'use_toscawidgets': False,
        'use_toscawidgets2': False,
        'session.enabled': False,
        'cache.enabled': False,
        'errorpage.enabled': False,
        'sa_auth.enabled': False,
        'i18n.enabled': False,
        'serve_static': False,
        'debug': False,
        'trace_errors.enable': False,
    })
    if sqlalchemy_url is not None:
        base_config.update_blueprint({
            'use_sqlalchemy': True,
            'sqlalchemy.url': sqlalchemy_url,
            'DBSession': model.SQLASession,
            'tm.enabled': True,
        })
    if extra_config:
        base_config.update_blueprint(dict(extra_config))
    return base_config


def make_app(*, plug_options=None, **kwargs):
    """Build the app with tgext.asyncjob plugged; return a :class:`MingTestApp`."""
    from tgext.pluggable import plug
    base_config = make_base_config(**kwargs)
    plug(base_config, 'tgext.asyncjob', **(plug_options or {}))
    wsgi_app = base_config.make_wsgi_app()
    conf = tg.config.current_conf()
    if conf.get('tg.configurator', lambda: None)() is not base_config:
        raise RuntimeError('could not find the configuration of the new app')
    if conf.get('use_sqlalchemy'):
        model.Base.metadata.create_all(conf['tg.app_globals'].sa_engine)
    return MingTestApp(wsgi_app, conf=conf, configurator=base_config)


class MingTestApp(webtest.TestApp):
    """A ``webtest.TestApp`` keeping the app's config and configurator."""

    def __init__(self, wsgi_app, *, conf, configurator):
        super().__init__(wsgi_app)
        self.config = conf
        self.configurator = configurator

    @property
    def queue(self):
        return self.config['tg.app_globals'].asyncjob_queue

    def documents(self):
        return [(d['name'], d['value']) for d in self.get('/documents').json['documents']]
