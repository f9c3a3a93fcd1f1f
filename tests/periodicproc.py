"""A TurboGears application with a per-second periodic job, run as a real process.

``python periodicproc.py MODE [COMMAND]``: MODE ``memory``, ``redis`` (threads and that
tracker) or ``sqlalchemy`` (the backend on ``PERIODIC_DB``); ``disabled`` plugs with
``asyncjob.enabled = false``; ``rq``: the rq backend (jobs run by a worker process
made with :func:`rq_app`); ``globals``: no plug(), ``start_async_worker(self)`` in the
Globals and the schedule in the configuration; ``fork``: ``memory``, then the process
forks once and the child prints ``CHILD <pid>``. COMMAND ``setup-app`` or ``tgshell`` makes the process look
like that gearbox command. Prints ``READY <pid> <time>`` once started, then runs until
killed.
"""
import logging
import os
import sys
import threading
import time

from sampleapp.config import make_app

EVERY_SECOND = '* * * * * *'


def build(mode):
    """The application of ``mode`` (see the module's doc)."""
    db = os.environ.get('PERIODIC_DB') or 'sqlite:///%s/app-%d.db' % (os.getcwd(), os.getpid())
    extra = {}
    options = {'periodic': [(EVERY_SECOND, 'periodicjobs:record')]}
    if mode == 'memory':
        options['tracker'] = 'memory'
    elif mode == 'redis':
        options['tracker'] = os.environ['PERIODIC_REDIS']
    elif mode == 'sqlalchemy':
        extra = {'asyncjob.backend': 'sqlalchemy', 'asyncjob.backend.url': db}
    elif mode == 'rq':  # jobs run in a worker process: --app periodicproc:rq_app
        redis_url = os.environ['PERIODIC_REDIS']
        options.update(backend='rq', tracker=redis_url, backend_options={
            'redis_url': redis_url, 'queue_name': os.environ['PERIODIC_KEY']})
    elif mode == 'disabled':
        extra = {'asyncjob.enabled': 'false'}
    elif mode == 'globals':
        extra = {'asyncjob.periodic.record': EVERY_SECOND + ' periodicjobs:record'}
        return make_app(db, enable='globals', extra_config=extra)
    return make_app(db, plug_options=options, extra_config=extra)


def rq_app():
    """The factory of ``python -m tgext.asyncjob worker --app periodicproc:rq_app``."""
    return build('rq')


def main(mode, command=None):
    logging.basicConfig(level=logging.INFO)
    if command:
        sys.argv = ['gearbox', command, '-c', 'development.ini']
    build('memory' if mode == 'fork' else mode)
    print('READY %d %f' % (os.getpid(), time.time()), flush=True)
    if mode == 'fork' and os.fork() == 0:
        print('CHILD %d' % os.getpid(), flush=True)
    threading.Event().wait()  # until the test kills this process


if __name__ == '__main__':
    main(*sys.argv[1:])
