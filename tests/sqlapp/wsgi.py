"""``--app sqlapp.wsgi:make_app``: the application built by a factory with no
arguments, its ``[app:main]`` settings a JSON object in ``$SQLAPP_SETTINGS``."""

import json
import os

from sqlapp.config.middleware import make_app as _make_app


def make_app():
    """The sqlapp WSGI application, configured from ``$SQLAPP_SETTINGS``."""
    return _make_app({}, **json.loads(os.environ["SQLAPP_SETTINGS"]))
