"""Global configuration of sqlapp, as a quickstarted ``app_cfg.py``."""

from tg import FullStackApplicationConfigurator
from tgext.pluggable import plug

import sqlapp
from sqlapp import model
from sqlapp.controllers.root import RootController
from sqlapp.lib import app_globals, helpers

base_config = FullStackApplicationConfigurator()
base_config.update_blueprint({
    "package": sqlapp,
    "root_controller": RootController(),
    "app_globals": app_globals.Globals,
    "helpers": helpers,
    "renderers": ["json"],
    "default_renderer": "json",
    "use_sqlalchemy": True,
    "model": model,
    "DBSession": model.DBSession,
    "tm.enabled": True,
    "use_toscawidgets": False,
    "use_toscawidgets2": False,
    "session.enabled": False,
    "cache.enabled": False,
    "errorpage.enabled": False,
    "sa_auth.enabled": False,
    "i18n.enabled": False,
    "serve_static": False,
    "trace_errors.enable": False,
})
plug(base_config, "tgext.asyncjob")
