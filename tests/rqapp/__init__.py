"""An .ini-loadable sample application for the RQ backend tests.

``make_wsgi_app`` is a PasteDeploy factory (``use = call:rqapp:make_wsgi_app``): the
sample application (``sampleapp``) with :class:`rqapp.controllers.RQRoot` as root
and tgext.asyncjob plugged in, configured by the ``[app:main]`` keys of the .ini
(``sqlalchemy.url``, ``asyncjob.backend = rq``, ``asyncjob.backend.redis_url``,
``asyncjob.backend.queue_name``). Worker processes load it with
``python -m tgext.asyncjob.rqworker app.ini``; :func:`write_ini` writes such a file.
With ``rqapp.retry_log = KEY`` the queue gets a :class:`RetryLog` hook.
"""

import json
import os


class RetryLog:
    """Hook: RPUSH each retry decision (job id, failed attempt, delay) onto a Redis key."""

    def __init__(self, redis_url, key):
        import redis
        self.client, self.key = redis.Redis.from_url(redis_url), key

    def on_retrying(self, job, error, delay):
        self.client.rpush(self.key, json.dumps(
            {"job": job.id, "attempt": job.attempt, "delay": delay}))


def make_wsgi_app(global_conf=None, **app_conf):
    """PasteDeploy app factory."""
    from tgext.pluggable import plug
    from sampleapp.config import make_base_config
    from rqapp.controllers import RQRoot

    base_config = make_base_config(app_conf["sqlalchemy.url"], root=RQRoot)
    hooks = []
    if app_conf.get("rqapp.retry_log"):
        hooks.append(RetryLog(app_conf["asyncjob.backend.redis_url"],
                              app_conf["rqapp.retry_log"]))
    plug(base_config, "tgext.asyncjob", hooks=hooks)
    return base_config.make_wsgi_app(global_conf or {}, app_conf)


def write_ini(path, *, db_url, redis_url, queue_name, extra=None):
    """Write an .ini for :func:`make_wsgi_app` at ``path``; return ``path``."""
    def esc(value):
        return str(value).replace("%", "%%")  # ConfigParser interpolation

    lines = [
        "[app:main]",
        "use = call:rqapp:make_wsgi_app",
        "sqlalchemy.url = %s" % esc(db_url),
        "asyncjob.backend = rq",
        "asyncjob.backend.redis_url = %s" % esc(redis_url),
        "asyncjob.backend.queue_name = %s" % esc(queue_name),
    ]
    lines += ["%s = %s" % (k, esc(v)) for k, v in (extra or {}).items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
