"""The rq backend itself: the side of the web process (and of every process that loads
the application): validate, enqueue, schedule, cancel, find abandoned jobs.
"""
from __future__ import annotations

import datetime
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from rq import Callback
from rq import Queue as RQQueue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.registry import StartedJobRegistry
from rq.timeouts import BaseDeathPenalty, JobTimeoutException

from ...errors import TrackerUnavailable, UnsupportedOption
from ...job import Job, JobState
from ...timelimits import OWN, register_foreign, time_limit_of
from ..base import Backend
from .calls import (ON_FAILURE, RUNNER, THREADS_HINT, callable_path, cancel_key, claim_key,
                    is_our_id, job_from_rq, rq_job_id, runner_call)
from .priorities import queue_for, queue_names
from .runs import BACKENDS, ONCE_TTL

if TYPE_CHECKING:
    from ...execution import Runtime

log = logging.getLogger('tgext.asyncjob')

DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379/0'
DEFAULT_QUEUE_NAME = 'asyncjob'
#: Defaults of the abandoned-job detection (seconds): at most 60 s from kill to record.
DEFAULT_HEARTBEAT_INTERVAL = 10
DEFAULT_ABANDONED_AFTER = 45
DEFAULT_CLEANUP_INTERVAL = 15

#: True while an RQ worker of this process forks a work horse (set by ``rqworker``):
#: a horse runs one job and exits, it has no abandoned jobs to look for.
forking_work_horse = False

# RQ's job timeout is how a time limit is kept here: what it raises is recorded as ours.
register_foreign(JobTimeoutException)


def _as_int(value: Any) -> int | None:
    return None if value in (None, '') else int(value)


def _seconds(name: str, value: Any, default: float, minimum: float) -> float:
    """A setting in seconds (an .ini gives strings): finite and at least ``minimum``."""
    seconds = default if value in (None, '') else float(value)
    if not math.isfinite(seconds) or seconds < minimum:
        raise ValueError(f'asyncjob.backend.{name} must be a number of seconds >= {minimum}, '
                         f'got {value!r}')
    return seconds


class _NoTimeLimit(BaseDeathPenalty):
    # RQ runs failure callbacks under a SIGALRM time limit, which only a main thread may
    # set: the cleanup thread runs ours (a few short Redis calls) without one.
    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


class RQBackend(Backend):
    """Hands jobs to an RQ queue; worker processes (:meth:`work`) run them.

    ``redis_url`` and ``queue_name`` say where (``asyncjob.backend.redis_url``,
    ``asyncjob.backend.queue_name``), or pass a ``connection`` (a ``redis.Redis``).
    ``job_timeout`` is RQ's per-job limit in seconds (default: none, as with threads).
    ``ttl`` is how long a job may wait in the queue before RQ drops it (default:
    forever).

    A worker killed together with its job (``kill -9``, the OOM killer) is found by
    RQ's own abandoned-job detection: workers heartbeat each running job every
    ``heartbeat_interval`` seconds (default 10); a job without a heartbeat for
    ``abandoned_after`` seconds (default 45) is abandoned; every process with this
    backend, web or worker, runs RQ's cleanup of the queue's started jobs every
    ``cleanup_interval`` seconds (default 15). So such a job is retried (if its policy
    allows) or failed with ``WorkerDied`` at most ``abandoned_after +
    cleanup_interval`` seconds (60 by default) after the kill, as long as one process
    of the application runs.
    """

    name = 'rq'
    durable = True
    spans_processes = True
    supports_delay = True  # RQ scheduled jobs, in Redis
    supports_retry = True  # each retry is an RQ scheduled job too
    supports_cancel_running = True  # a key in Redis that asyncjob_cancelled() reads
    supports_on_commit = True
    supports_unique = True  # held in the Redis tracker the records go to
    supports_priority = True  # three RQ queues, see .priorities
    # Concurrency limits would need a count shared by every RQ worker, taken and given
    # back atomically with RQ's own dequeue: RQ has none (README "Concurrency limits").
    supports_concurrency_limit = False
    supports_time_limit = True  # RQ's job timeout, in the work horse
    time_limit_mode = OWN

    def __init__(self, runtime: Runtime, redis_url: str | None = None,
                 queue_name: str | None = None, *, connection: redis.Redis | None = None,
                 job_timeout: int | str | None = None, ttl: int | str | None = None,
                 heartbeat_interval: int | str | None = None,
                 abandoned_after: int | str | None = None,
                 cleanup_interval: float | str | None = None):
        super().__init__(runtime)
        # RQ's heartbeats and time limits count whole seconds.
        self.heartbeat_interval = int(_seconds('heartbeat_interval', heartbeat_interval,
                                               DEFAULT_HEARTBEAT_INTERVAL, 1))
        self.abandoned_after = int(_seconds('abandoned_after', abandoned_after,
                                            DEFAULT_ABANDONED_AFTER,
                                            self.heartbeat_interval + 1))
        self.cleanup_interval = _seconds('cleanup_interval', cleanup_interval,
                                         DEFAULT_CLEANUP_INTERVAL, 0.1)
        self.redis_url = redis_url or DEFAULT_REDIS_URL
        self.queue_name = queue_name or DEFAULT_QUEUE_NAME
        self.connection = connection if connection is not None else redis.Redis.from_url(
            self.redis_url)
        self.job_timeout = _as_int(job_timeout) or -1
        self.ttl = _as_int(ttl)
        self.rq_queue = RQQueue(self.queue_name, connection=self.connection)
        #: The RQ queues of the priority bands (:mod:`.priorities`), highest first.
        self.rq_queues = {name: RQQueue(name, connection=self.connection)
                          for name in queue_names(self.queue_name)}
        self._cleaner: threading.Thread | None = None
        self._cleaner_stop = threading.Event()
        for name in self.rq_queues:
            BACKENDS[name] = self

    @property
    def description(self) -> str:
        """One line for the start-up log: where jobs go and what runs them."""
        kwargs = self.connection.connection_pool.connection_kwargs
        where = (f'unix:{kwargs["path"]}' if 'path' in kwargs else
                 f'{kwargs.get("host", "localhost")}:{kwargs.get("port", 6379)}')
        return (f'rq: RQ queue {self.queue_name!r} on Redis {where}/{kwargs.get("db", 0)}; '
                f'jobs run in worker processes (python -m tgext.asyncjob worker)')

    def live_workers(self) -> list[str]:
        """The RQ workers registered for this backend's queue (RQ drops a worker from
        its registry when it stops, or once its heartbeat key expires after a kill);
        :class:`TrackerUnavailable` if Redis cannot be reached."""
        from rq import Worker
        try:
            return sorted(w.name for w in Worker.all(queue=self.rq_queue))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TrackerUnavailable(f'Redis is unreachable: {exc}') from exc

    def own_store(self) -> Any:
        """Workers write the records the web process reads: a memory tracker (this
        process only) is replaced by a Redis tracker on the backend's Redis (the queue
        asks every backend, whichever way it was made); any other tracker is kept."""
        from ...trackers.memory import MemoryProgressTracker
        from ...trackers.redisdb import RedisProgressTracker
        if not isinstance(self.runtime.store, MemoryProgressTracker):
            return None
        log.info('asyncjob backend rq: job records go to Redis (%s): the memory tracker '
                 'cannot be seen by worker processes', self.description)
        return RedisProgressTracker(client=self.connection)

    # -- taking jobs -------------------------------------------------------------------

    def validate(self, job: Job) -> None:
        """Also raise ``TypeError`` unless a worker can import ``job``'s callable and its
        arguments (and retry policy, and ``meta``) serialise: the one dry run of the
        pickling, at the call site; RQ pickles them once more when it stores the job."""
        super().validate(job)
        callable_path(job.func)
        try:
            self.rq_queue.serializer.dumps((job.args, job.kwargs, job.retry, job.meta))
        except Exception as exc:
            raise TypeError(f'the rq backend cannot queue {job.func_name}: its arguments '
                            f'(or retry policy) cannot be serialised for the worker '
                            f'processes ({exc}); pass plain data (ids, strings, numbers)'
                            f'{THREADS_HINT}') from None

    def enqueue(self, job: Job) -> None:
        """Put the next run of ``job`` on the RQ queue."""
        self._rq_queue_of(job).enqueue_call(RUNNER, timeout=self._timeout(job), ttl=self.ttl,
                                            **self._rq_options(job))

    def schedule(self, job: Job, eta: float) -> None:
        """Put the next run of ``job`` in RQ's scheduled jobs, due at ``eta``: RQ's
        scheduler, which workers run, moves it to the queue then. A run already due (a
        retry without backoff) goes to the queue at once."""
        if eta <= time.time():
            self.enqueue(job)
            return
        self.runtime.lifecycle.flush()  # the record says queued before a worker sees it
        # RQ keeps whole seconds, rounded down: round up so it never starts early.
        when = datetime.datetime.fromtimestamp(math.ceil(eta), datetime.timezone.utc)
        # ``ttl`` counts from when the job is due, not from now.
        ttl = None if self.ttl is None else self.ttl + max(math.ceil(eta - time.time()), 0)
        self._rq_queue_of(job).enqueue_at(when, RUNNER, job_timeout=self._timeout(job),
                                          ttl=ttl, **self._rq_options(job))

    def _rq_queue_of(self, job: Job) -> RQQueue:
        return self.rq_queues[queue_for(self.queue_name,
                                        getattr(job.options, 'priority', None))]

    def _timeout(self, job: Job) -> int:
        # RQ's alarm counts whole seconds: a time limit is rounded up, never cut short.
        limit = time_limit_of(job)
        return self.job_timeout if limit is None else math.ceil(limit)

    def _rq_options(self, job: Job) -> dict[str, Any]:
        return dict(runner_call(job), result_ttl=0, failure_ttl=None,
                    on_failure=Callback(ON_FAILURE))

    def cancel(self, jobid: str) -> bool:
        """Cancel a job of another process. Waiting (in the RQ queue, in RQ's scheduled
        jobs: delayed or waiting for a retry, or not handed over yet): it will not run,
        its record says cancelled. Running: ``asyncjob_cancelled()`` turns true in its
        worker (within half a second of its next call) and it is not retried. False if
        it is finished or unknown."""
        if not is_our_id(jobid):
            return False  # never touch other RQ jobs
        lifecycle = self.runtime.lifecycle
        record = lifecycle.guard(self.runtime.store.get_record, jobid)
        if record is None or JobState(record.get('state', 'queued')).finished:
            return False
        # The attempts counted so far say which run is the current one (running: the
        # last counted; queued: the next); its claim decides who wins.
        attempt = int(record.get('attempt') or 0)
        running = record.get('state') == JobState.RUNNING.value
        rq_id = rq_job_id(jobid, attempt - 1 if running and attempt > 0 else attempt)
        if not self.connection.set(claim_key(rq_id), 'cancel', nx=True, ex=ONCE_TTL):
            # A worker started it: ask the job to stop.
            self.connection.set(cancel_key(jobid), 1, ex=ONCE_TTL)
            return True
        try:
            rq_job: RQJob | None = RQJob.fetch(rq_id, connection=self.connection)
        except NoSuchJobError:  # not handed over yet (its transaction has not committed)
            rq_job = None
        job = job_from_rq(rq_job) if rq_job is not None else _job_named(jobid, record)
        lifecycle.cancel(job)
        lifecycle.flush()
        if rq_job is not None:
            rq_job.delete(remove_from_queue=True)
        return True

    # -- the processes -------------------------------------------------------------------

    def start(self) -> None:
        """Start looking for abandoned jobs (no job runs in the web process)."""
        if self._cleaner is not None and self._cleaner.is_alive():
            return
        self._cleaner_stop = threading.Event()
        self._cleaner = threading.Thread(target=self._clean_loop, daemon=True,
                                         name='asyncjob-rq-cleanup')
        self._cleaner.start()

    def _clean_loop(self) -> None:
        stop = self._cleaner_stop
        while not stop.wait(self.cleanup_interval):
            try:
                self.clean_abandoned()
            except Exception:  # Redis down: said, and tried again next time
                log.warning('asyncjob rq: looking for abandoned jobs failed', exc_info=True)

    def clean_abandoned(self) -> None:
        """Run RQ's own abandoned-job detection on the queue once: RQ fails each running
        job whose worker sent no heartbeat for ``abandoned_after`` seconds and calls its
        failure callback, which records it (:func:`~.runs.job_died`)."""
        for name in self.rq_queues:
            StartedJobRegistry(name, connection=self.connection,
                               death_penalty_class=_NoTimeLimit).cleanup()

    def stop(self, timeout: float) -> list[str]:
        """Nothing to drain: queued jobs stay in Redis for the workers."""
        self._cleaner_stop.set()
        return []

    def after_fork(self) -> None:
        """In a forked child: drop the parent's Redis connections (never share sockets),
        and look for abandoned jobs there too, unless the child is an RQ work horse."""
        super().after_fork()
        self.connection.connection_pool.reset()
        if self._cleaner is not None and not self._cleaner_stop.is_set():
            self._cleaner = None
            if not forking_work_horse:
                self.start()

    def work(self, *, threads: int = 1, burst: bool = False,
             queues: list[str] | None = None, **rq_options: Any) -> None:
        """Run a TurboGears-aware RQ worker on this backend's queue (or ``queues``) in
        this process until it is stopped (SIGTERM), or, with ``burst``, until the queue
        is empty. RQ runs one job at a time per worker process: ``threads`` must be 1
        (start more worker processes for more), else :class:`UnsupportedOption`. ``rq_options``: those of
        :func:`tgext.asyncjob.rqworker.make_worker` and RQ's ``Worker.work``
        (``simple``, ``name``, ``with_scheduler``, ``max_jobs``, ``logging_level``)."""
        from ...rqworker import work
        if threads != 1:
            raise UnsupportedOption(f'the rq backend runs one job at a time per worker process '
                             f'(got threads={threads!r}): start several worker processes')
        work([self], burst=burst, queues=queues or (), **rq_options)


def _job_named(jobid: str, record: dict[str, Any]) -> Job:
    """A job known only by its record (not handed over to RQ yet): a placeholder
    callable, the recorded name."""
    from .calls import not_importable
    job = Job(not_importable, (), {}, jobid=jobid)
    job.name = record.get('name') or 'unknown'
    return job
