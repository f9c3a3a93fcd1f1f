"""The ``rq`` backend: jobs go to an RQ queue in Redis and run in worker processes.

``asyncjob.backend = rq`` (or ``backend='rq'``) makes ``asyncjob_perform`` enqueue the
call onto the RQ queue ``asyncjob.backend.queue_name`` at ``asyncjob.backend.redis_url``;
no job runs in the web process. Workers are started with ``python -m tgext.asyncjob
worker app.ini`` or ``gearbox rqworker -c app.ini`` (:mod:`tgext.asyncjob.rqworker`),
which load the application, so each job gets its configuration, its own session and
transaction, exactly as threads give it (``runtime.execute``).

The callable must be importable by name and the arguments must pickle: both are
checked at the call site (:meth:`RQBackend.validate`). Delayed jobs and retries are RQ
scheduled jobs, in Redis. Job records live in a Redis tracker every process reads.

Modules: :mod:`.calls` (what an RQ job carries), :mod:`.backend` (the web side),
:mod:`.runs` (the worker side, and the record of runs whose worker died).
"""
from .backend import DEFAULT_QUEUE_NAME, DEFAULT_REDIS_URL, RQBackend
from .calls import RUNNER, callable_path, import_callable, rq_job_id
from .runs import WorkerDied, backend_for, job_died, rq_job_failed, run_rq_job

__all__ = ['RQBackend', 'DEFAULT_REDIS_URL', 'DEFAULT_QUEUE_NAME', 'RUNNER', 'WorkerDied',
           'callable_path', 'import_callable', 'rq_job_id', 'run_rq_job', 'rq_job_failed',
           'job_died', 'backend_for']
