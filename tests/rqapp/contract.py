"""The rq entry of the backend contract (``tests/test_contract_backends.py``).

:func:`make_rq_queue` returns a started queue with the rq backend on the test Redis
(a queue name of its own, a Redis tracker) and starts one worker process for it:
``python -m rqapp.contract WORKER REDIS_URL QUEUE_NAME``, a queue made the same way
whose backend's ``work()`` runs the jobs (no TurboGears application: the contract's
jobs need none). At teardown the queue is stopped, the worker gets SIGTERM (RQ's warm
shutdown) and the queue's keys are deleted.
"""

import os
import signal
import subprocess
import sys
import uuid

import redis

from tgext.asyncjob import JobQueue
from tgext.asyncjob.trackers.redisdb import RedisProgressTracker

from rqapp import TESTS_DIR

#: Seconds a worker gets to register, and to stop at teardown.
WORKER_TIMEOUT = 30
#: Abandoned-job detection made quick (see ``test_rq.FAST_DEATH``).
OPTIONS = {"heartbeat_interval": 1, "abandoned_after": 3, "cleanup_interval": 0.5}


def _queue(redis_url, queue_name):
    return JobQueue(RedisProgressTracker(url=redis_url), backend="rq",
                    backend_options=dict(redis_url=redis_url, queue_name=queue_name, **OPTIONS))


def make_rq_queue(request):
    """A started rq queue and its worker process, both stopped after the test."""
    import rq
    from services import wait_for

    redis_url = request.getfixturevalue("redis_url")
    queue_name = "asyncjob-contract-%s" % uuid.uuid4().hex[:12]
    q = _queue(redis_url, queue_name)
    q.backend.start()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [TESTS_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    # A session of its own: RQ's scheduler, a child of the worker, is stopped with it
    # even if the SIGTERM came before the worker knew of it.
    worker = subprocess.Popen(
        [sys.executable, "-m", "rqapp.contract", "WORKER", redis_url, queue_name],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis.from_url(redis_url)

    def teardown():
        try:
            q.stop(10)
        finally:
            stop_process_group(worker)
            for key in client.scan_iter(match="*%s*" % queue_name):
                client.delete(key)
            client.close()

    request.addfinalizer(teardown)
    rq_queue = rq.Queue(queue_name, connection=client)
    wait_for(lambda: worker.poll() is not None or rq.Worker.all(queue=rq_queue),
             timeout=WORKER_TIMEOUT, message="the rq worker did not register")
    assert worker.poll() is None, "the rq worker exited at start"
    return q


def stop_process_group(proc):
    """SIGTERM (RQ's warm shutdown) to a worker started with ``start_new_session``,
    SIGKILL after :data:`WORKER_TIMEOUT`; then SIGKILL to whatever is left of its
    process group (a scheduler child)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WORKER_TIMEOUT)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__" and sys.argv[1:2] == ["WORKER"]:
    _queue(sys.argv[2], sys.argv[3]).backend.work(simple=True)
