"""Prometheus metrics of the jobs this process queues and runs, from the public hooks.

Register the hook on the queue, then expose the registry beside the app::

    from tgext.asyncjob.contrib.prometheus import PrometheusHook
    plug(base_config, 'tgext.asyncjob', hooks=[PrometheusHook()])

Metrics (``callable`` is the job's dotted function name):

* ``asyncjob_jobs_finished_total{callable, state}``: jobs that ended ``succeeded``,
  ``failed`` or ``cancelled``;
* ``asyncjob_job_retries_total{callable}``: failed attempts queued again;
* ``asyncjob_job_queue_wait_seconds{callable}``: from queued to the first start;
* ``asyncjob_job_run_seconds{callable}``: the run time of every attempt;
* ``asyncjob_jobs_queued`` / ``asyncjob_jobs_running``: jobs waiting / running that
  this process saw being queued / started.

Metrics are per process, like every ``prometheus_client`` metric: with a backend that
runs jobs in worker processes (``sqlalchemy``, ``rq``) the web process counts what it
queues, each worker what it runs, and Prometheus sums the scrapes. There, give the web
process ``PrometheusHook(count_queued=False)``: it never sees its jobs start, so it could not
uncount them (and would remember every id it queued).
"""
from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Jobs run from milliseconds to hours: the default buckets stop at 10 s.
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
               900, 3600, float('inf'))


class PrometheusHook:
    """A hook (see :mod:`tgext.asyncjob.hooks`) recording job metrics in ``registry``
    (default: ``prometheus_client``'s global ``REGISTRY``). Create one per registry:
    a second one on the same registry raises ``ValueError`` (duplicated metrics).
    ``count_queued=False`` keeps the queued gauge at 0 (see the module's doc)."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 namespace: str = 'asyncjob', count_queued: bool = True):
        registry = REGISTRY if registry is None else registry
        self.registry = registry
        self.finished = Counter('jobs_finished', 'Jobs ended, by callable and final state',
                                ['callable', 'state'], namespace=namespace,
                                registry=registry)
        self.retries = Counter('job_retries', 'Failed attempts queued again, by callable',
                               ['callable'], namespace=namespace, registry=registry)
        self.queue_wait = Histogram('job_queue_wait_seconds',
                                    'Seconds from queued to the first start, by callable',
                                    ['callable'], namespace=namespace, registry=registry,
                                    buckets=RUN_BUCKETS)
        self.run_time = Histogram('job_run_seconds', 'Seconds each attempt ran, by callable',
                                  ['callable'], namespace=namespace, registry=registry,
                                  buckets=RUN_BUCKETS)
        self.count_queued = bool(count_queued)
        self.queued = Gauge('jobs_queued', 'Jobs waiting that this process queued',
                            namespace=namespace, registry=registry)
        self.running = Gauge('jobs_running', 'Jobs this process is running',
                             namespace=namespace, registry=registry)
        # Only jobs this process counted are uncounted: a job queued by the web process
        # and started by a worker process must not drive the worker's gauge below zero.
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._running: dict[str, float] = {}  # job id -> perf_counter at start

    def on_enqueued(self, job: Any) -> None:
        """Count ``job`` as queued."""
        self._enter_queue(job.id)

    def on_started(self, job: Any) -> None:
        """``job`` left the queue: count it running, observe its wait (first attempt
        only: a retry's wait is its back-off delay, not queue pressure)."""
        self._leave_queue(job.id)
        with self._lock:
            self._running[job.id] = time.perf_counter()
            self.running.set(len(self._running))
        if job.attempt <= 1 and job.started_at is not None:
            wait = max(0.0, job.started_at - job.enqueued_at)  # wall clocks may differ
            self.queue_wait.labels(job.func_name).observe(wait)

    def on_retrying(self, job: Any, error: Any, delay: float) -> None:
        """An attempt failed and will run again: its run time, a retry, queued again."""
        self._end_run(job)
        self.retries.labels(job.func_name).inc()
        self._enter_queue(job.id)

    def on_succeeded(self, job: Any, result: Any) -> None:
        """Count ``job`` succeeded."""
        self._finish(job, 'succeeded')

    def on_failed(self, job: Any, error: Any) -> None:
        """Count ``job`` failed."""
        self._finish(job, 'failed')

    def on_cancelled(self, job: Any) -> None:
        """Count ``job`` cancelled (it never ran, or it was dropped)."""
        self._finish(job, 'cancelled')

    def _finish(self, job: Any, state: str) -> None:
        self._leave_queue(job.id)
        self._end_run(job)
        self.finished.labels(job.func_name, state).inc()

    # The gauges are set under the lock so that two threads cannot publish their
    # counts out of order.
    def _enter_queue(self, jobid: str) -> None:
        if not self.count_queued:
            return
        with self._lock:
            self._queued.add(jobid)
            self.queued.set(len(self._queued))

    def _leave_queue(self, jobid: str) -> None:
        with self._lock:
            self._queued.discard(jobid)
            self.queued.set(len(self._queued))

    def _end_run(self, job: Any) -> None:
        with self._lock:
            started = self._running.pop(job.id, None)
            self.running.set(len(self._running))
        if started is not None:
            self.run_time.labels(job.func_name).observe(time.perf_counter() - started)
