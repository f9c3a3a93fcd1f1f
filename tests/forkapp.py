"""A TurboGears app for gunicorn ``--preload``: the fork-safety test serves it.

``ASYNCJOB_FORK_DB_URL`` is its database, ``ASYNCJOB_FORK_FLAG`` a file path. Loaded
once in the gunicorn master (``--preload``), which starts the job queue there and,
before forking, queues two jobs that wait for the flag file (holding both master
threads) and one, ``preload``, behind them. Each request to ``/job`` queues a job
that stores the request's pid (``name``) and the pid that ran it (``value``).
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tg import expose  # noqa: E402
from tgext.pluggable import plug  # noqa: E402

from tgext.asyncjob import asyncjob_perform  # noqa: E402
from sampleapp import model  # noqa: E402
from sampleapp.config import create_tables, make_base_config  # noqa: E402
from sampleapp.controllers.root import RootController, db_session  # noqa: E402

DB_URL = os.environ['ASYNCJOB_FORK_DB_URL']
FLAG = os.environ['ASYNCJOB_FORK_FLAG']


def record_pid(request_pid):
    db_session().add(model.Row(name=str(request_pid), value=os.getpid()))


def wait_for_flag():
    deadline = time.monotonic() + 120
    while not os.path.exists(FLAG) and time.monotonic() < deadline:
        threading.Event().wait(0.05)


class ForkRoot(RootController):
    @expose('json')
    def job(self):
        return dict(jobid=asyncjob_perform(record_pid, os.getpid()), pid=os.getpid())


base_config = make_base_config(DB_URL, root=ForkRoot, extra_config={
    'asyncjob.workers': '2', 'asyncjob.stop_timeout': '2'})
plug(base_config, 'tgext.asyncjob')
create_tables(DB_URL)
application = base_config.make_wsgi_app()

# In the master, before the fork: both threads held, one job waiting behind them.
asyncjob_perform(wait_for_flag)
asyncjob_perform(wait_for_flag)
asyncjob_perform(record_pid, 'preload')
