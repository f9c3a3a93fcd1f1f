"""The 0.3 documentation's examples, run as written.

Adapted only where TurboGears 2.5 forces it:
* ``url('/state', uid=taskid)`` is ``url('/state', params=dict(uid=taskid))`` on TG 2.5;
* the timed-query example flushes ``g`` so that ``g.group_id`` has a value (the seed's
  snippet relied on an autoflush that SQLAlchemy does not do on attribute access);
* Python 3's ``print()``.
"""
import os
import subprocess
import sys
import textwrap

from tg import expose, redirect, url

from tgext.asyncjob import asyncjob_perform, asyncjob_get_progress, asyncjob_set_progress
from tgext.asyncjob import asyncjob_timed_query

from jobhelpers import Gate, wait_finished
from sampleapp import model
from sampleapp.controllers.root import RootController, db_session
from services import wait_for

PRINTED = []
GATE = Gate()


def background_task(number):
    PRINTED.append(number * 2)
    print(number * 2)


class SeedController(RootController):
    @expose()
    def perform(self):
        return asyncjob_perform(background_task, 5)

    @expose()
    def controller_method(self):
        def async_action():
            for i in range(5):
                asyncjob_set_progress(i)
                GATE.job()

        taskid = asyncjob_perform(async_action)
        return redirect(url('/state', params=dict(uid=taskid)))

    @expose()
    def state(self, uid):
        state = asyncjob_get_progress(uid)
        if not state:
            return 'Job Completed'
        elif state[0] < 0:
            return 'Not yet started'
        else:
            return str(state[0])

    @expose()
    def timed_query_method(self):
        DBSession = db_session()
        Group = model.Group

        def async_query_action(group_id):
            group = asyncjob_timed_query(DBSession.query(Group).filter_by(group_id=group_id)).first()
            group.display_name = 'Prova'

        g = Group(group_name='test_group')
        DBSession.add(g)
        DBSession.flush()
        asyncjob_perform(async_query_action, g.group_id)
        return 'OK'


def test_performing_background_tasks(make_app, db_url):
    PRINTED.clear()
    app = make_app(db_url, root=SeedController)
    jobid = app.get('/perform').text
    wait_finished(app.app_globals.asyncjob_queue, jobid)
    assert PRINTED == [10]


def test_progress_tracking_example(make_app, db_url):
    global GATE
    GATE = Gate()
    app = make_app(db_url, root=SeedController)
    blocker = Gate()
    app.app_globals.asyncjob_queue.perform(blocker.job)
    blocker.wait_entered()
    response = app.get('/controller_method')
    assert response.status_int == 302
    state_url = response.headers['Location']
    assert app.get(state_url).text == 'Not yet started'
    blocker.release()
    wait_for(lambda: app.get(state_url).text == '0')
    GATE.release()
    wait_for(lambda: app.get(state_url).text == 'Job Completed')


def test_accessing_the_database_with_timed_query(make_app, db_url):
    app = make_app(db_url, root=SeedController)
    assert app.get('/timed_query_method').text == 'OK'
    wait_for(lambda: [g['display_name'] for g in app.get('/groups').json['groups']] == ['Prova'])


def test_two_processes_share_progress_through_redis(redis_url, redis_client, tmp_path):
    """A worker process sets progress; this process reads it through its own tracker."""
    script = tmp_path / 'worker_process.py'
    script.write_text(textwrap.dedent(f'''
        import sys, time, types, redis
        from tgext.asyncjob import start_async_worker, asyncjob_perform, asyncjob_set_progress
        from tgext.asyncjob.tracker.redisdb import RedisProgressTracker

        def job():
            asyncjob_set_progress(42, {{'from': 'the other process'}})
            client = redis.Redis.from_url({redis_url!r})
            deadline = time.monotonic() + 30
            while not client.get('release') and time.monotonic() < deadline:
                time.sleep(0.01)

        q = start_async_worker(types.SimpleNamespace(),
                               progress_tracker=RedisProgressTracker(url={redis_url!r}))
        print(asyncjob_perform(job), flush=True)
        q.wait(sys.stdin.readline().strip() or None, timeout=60)
    '''))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        jobid = proc.stdout.readline().strip()
        from types import SimpleNamespace
        from tgext.asyncjob import start_async_worker
        from tgext.asyncjob.trackers.redisdb import RedisProgressTracker
        here = start_async_worker(SimpleNamespace(),
                                  progress_tracker=RedisProgressTracker(url=redis_url))
        try:
            wait_for(lambda: here.get_progress(jobid) == (42, {'from': 'the other process'}))
            redis_client.set('release', 1)
            wait_for(lambda: here.get_progress(jobid) is None)
            assert here.get_status(jobid).state.value == 'succeeded'
        finally:
            here.stop(5)
        proc.stdin.write(jobid + '\n')
        proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
