"""A TurboGears app for uWSGI: the deployment test serves it with and without threads.

``ASYNCJOB_UWSGI_DB_URL`` is its database. ``/job`` queues a job that adds a row named
``from uwsgi``; ``/rows`` lists the rows. tgext.asyncjob's log goes to stderr.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tg import expose  # noqa: E402
from tgext.pluggable import plug  # noqa: E402

from tgext.asyncjob import asyncjob_perform  # noqa: E402
from sampleapp import model  # noqa: E402
from sampleapp.config import create_tables, make_base_config  # noqa: E402
from sampleapp.controllers.root import RootController, db_session  # noqa: E402

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format='%(levelname)s %(name)s %(message)s')
DB_URL = os.environ['ASYNCJOB_UWSGI_DB_URL']


def add_row(name):
    db_session().add(model.Row(name=name))


class Root(RootController):
    @expose('json')
    def job(self):
        return dict(jobid=asyncjob_perform(add_row, 'from uwsgi'))


base_config = make_base_config(DB_URL, root=Root)
plug(base_config, 'tgext.asyncjob')
create_tables(DB_URL)
application = base_config.make_wsgi_app()
