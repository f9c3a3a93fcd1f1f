"""A TurboGears application laid out as ``gearbox quickstart`` makes one (SQLAlchemy,
``tm``, an .ini served by ``gearbox serve``), for the tests of worker processes.

:func:`write_ini` writes its ``development.ini``-shaped configuration with the
settings a test wants; the app factory is ``sqlapp.config.middleware:make_app``.
The jobs of :mod:`sqlapp.jobs` write one :class:`~sqlapp.model.JobRun` row per run,
so a test counts runs in the database.
"""

import os

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INI = """\
[DEFAULT]
debug = false

[server:main]
use = egg:gearbox#wsgiref
host = 127.0.0.1
port = {port}
wsgiref.threaded = true

[app:main]
use = call:sqlapp.config.middleware:make_app
full_stack = true
sqlalchemy.url = {db_url}
{settings}

[loggers]
keys = root, sqlapp, asyncjob

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[logger_sqlapp]
level = INFO
handlers =
qualname = sqlapp

[logger_asyncjob]
level = INFO
handlers =
qualname = tgext.asyncjob

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s][%(threadName)s] %(message)s
"""


def write_ini(path, *, db_url, port=8080, settings=None):
    """Write the application's .ini at ``path`` (``settings``: more ``[app:main]``
    keys, e.g. ``{'asyncjob.backend': 'sqlalchemy'}``); return the path as a string."""
    def esc(value):
        return str(value).replace("%", "%%")  # ConfigParser interpolation

    lines = "\n".join("%s = %s" % (k, esc(v)) for k, v in (settings or {}).items())
    with open(path, "w") as f:
        f.write(INI.format(port=port, db_url=esc(db_url), settings=lines))
    return str(path)
