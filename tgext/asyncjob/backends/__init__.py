"""Backends run the jobs a :class:`~tgext.asyncjob.queue.JobQueue` accepts.

Every backend subclasses :class:`~tgext.asyncjob.backends.base.Backend` (the seam,
its capability flags and the ``runtime`` it talks to are documented there).

Built in: ``threads`` (:class:`tgext.asyncjob.worker.WorkerPool`, the default) and
``rq`` (:mod:`tgext.asyncjob.backends.rq`).
"""
