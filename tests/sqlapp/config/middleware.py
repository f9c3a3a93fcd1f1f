"""WSGI middleware initialization for sqlapp, as quickstarted."""

from sqlapp.config.app_cfg import base_config

__all__ = ["make_app"]


def make_app(global_conf, full_stack=True, **app_conf):
    """The sqlapp WSGI application (PasteDeploy ``call:`` factory)."""
    return base_config.make_wsgi_app(global_conf, app_conf, wrap_app=None)
