"""Jobs under gevent's monkey-patching (gearbox's gevent runner, gunicorn -k gevent).

Run as a script with a SQLite URL: builds the sample app, queues five jobs through
requests, and prints a JSON report: the jobs' states, the rows, and how many distinct
sessions the jobs used (one each: ``threading.local`` is per greenlet).
"""
from gevent import monkey

monkey.patch_all()  # first, before anything imports threading

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tg  # noqa: E402
import webtest  # noqa: E402
from tg import expose  # noqa: E402
from tgext.pluggable import plug  # noqa: E402

from tgext.asyncjob import asyncjob_perform  # noqa: E402
from sampleapp import model  # noqa: E402
from sampleapp.config import create_tables, make_base_config  # noqa: E402
from sampleapp.controllers.root import RootController, db_session  # noqa: E402

SESSIONS = []


def add(name):
    SESSIONS.append(db_session()())  # kept alive: distinct objects stay distinct
    db_session().add(model.Row(name=name))


class Root(RootController):
    @expose('json')
    def job(self, name):
        return dict(jobid=asyncjob_perform(add, name))


def main(url):
    config = make_base_config(url, root=Root, extra_config={'asyncjob.workers': '2'})
    plug(config, 'tgext.asyncjob')
    create_tables(url)
    app = webtest.TestApp(config.make_wsgi_app())
    q = tg.config.current_conf()['tg.app_globals'].asyncjob_queue
    ids = [app.get('/job', params={'name': f'row {i}'}).json['jobid'] for i in range(5)]
    states = [q.wait(jobid, 30).state.value for jobid in ids]
    rows = [r['name'] for r in app.get('/rows').json['rows']]
    q.stop(10)
    sessions = len({id(s) for s in SESSIONS})
    print(json.dumps({'states': states, 'rows': rows, 'sessions': sessions}))


if __name__ == '__main__':
    main(sys.argv[1])
