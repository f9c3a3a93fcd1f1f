"""Backends run the jobs a :class:`~tgext.asyncjob.queue.JobQueue` accepts.

The seam is small, in the manner of django-tasks: a backend is an object made with
the queue (``factory(queue, **options)``) that has

* ``enqueue(job)``: hand the job over (raise ``QueueFull`` when it cannot);
* ``run_now(job)``: run it synchronously (immediate mode);
* ``start()``, ``stop(timeout) -> list of ids that did not run``, ``after_fork()``;
* optionally ``cancel(jobid) -> bool`` for jobs this process does not hold;
* optionally ``check(job)``: raise ``TypeError`` for a job it cannot take, before
  anything is tracked;
* optionally ``schedule(job, eta)``: hand the job over to be run at wall-clock time
  ``eta`` (epoch seconds), not before; used, when ``supports_schedule`` is true, for
  delayed jobs and for retries instead of the queue's in-process scheduler thread;

and capability flags: ``durable`` (queued jobs survive a restart of the web
process), ``supports_cancel``, ``supports_immediate``, ``supports_retry`` (failed
attempts can be queued again later from where the job ran), ``supports_schedule``
(it has ``schedule``: delayed jobs and retries wait in the backend, durable if it
is, rather than in a thread of the web process). Wherever a backend runs a job,
it calls :func:`tgext.asyncjob.worker.run_job` so that transactions, progress and
status behave the same everywhere.

Built in: ``threads`` (:class:`tgext.asyncjob.worker.WorkerPool`, the default) and
``rq`` (:mod:`tgext.asyncjob.backends.rq`).
"""
