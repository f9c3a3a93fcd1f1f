"""The backend seam: what runs the jobs a :class:`~tgext.asyncjob.queue.JobQueue` takes.

A backend is made with the queue's :class:`~tgext.asyncjob.execution.Runtime`
(``factory(runtime, **options)``), the narrow interface it talks to:

* ``runtime.lifecycle``: the state machine (:mod:`tgext.asyncjob.lifecycle`); every
  state change a backend makes goes through it (claim, drop, fail...);
* ``runtime.execute(job)``: the single execution path: claim, context, configuration,
  transaction, sessions, hooks, outcome or retry. It never raises. Wherever a job
  runs, in a thread here or in a worker process, it runs through this;
* ``runtime.failed(job, exc)``: a running job's attempt ended with ``exc`` outside
  ``execute`` (its worker died under it): retry or fail, as ``execute`` would;
* ``runtime.conf``, ``runtime.store``, ``runtime.hooks``, ``runtime.stopping``.

The queue, not the backend, implements immediate mode (``execute`` in a fresh thread,
whatever the backend), ``on_commit`` hand-off, and the reports of :meth:`JobQueue.stop`.

Capability flags say what a backend honours; :meth:`Backend.validate`, which
``JobQueue.perform`` calls before anything is stored, rejects a job asking for more
with :class:`~tgext.asyncjob.errors.UnsupportedOption` (as django-tasks'
``validate_task`` does), at the call site.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ..errors import QueueStopped, UnsupportedOption
from ..job import Job
from ..options import JobOptions
from ..retry import policy_for
from ..scheduler import Scheduler
from ..timelimits import FLAG

if TYPE_CHECKING:
    from ..execution import Runtime

log = logging.getLogger('tgext.asyncjob')

#: Job options (fields of :class:`~tgext.asyncjob.options.JobOptions`) and the flag that
#: must be true to take a job that sets them; only the options that exist so far are
#: checked (issue 13 adds them).
OPTION_FLAGS: dict[str, str] = {
    name: flag for name, flag in (
        ('priority', 'supports_priority'),
        ('unique_key', 'supports_unique'),
        ('concurrency_key', 'supports_concurrency_limit'),
        ('time_limit', 'supports_time_limit'),
    ) if name in {f.name for f in dataclasses.fields(JobOptions)}
}


#: lacking_options() answers, by backend class.
_LACKING: dict[type, tuple[tuple[str, str], ...]] = {}


def lacking_options(backend_type: type) -> tuple[tuple[str, str], ...]:
    """``(option, flag)`` of :data:`OPTION_FLAGS` whose flag is false on
    ``backend_type``: the options :meth:`Backend.validate` refuses. Worked out once per
    class (the flags are class attributes)."""
    lacking = _LACKING.get(backend_type)
    if lacking is None:
        lacking = _LACKING[backend_type] = tuple(
            (option, flag) for option, flag in OPTION_FLAGS.items()
            if not getattr(backend_type, flag))
    return lacking


class Backend:
    """Base class of every backend. Subclasses override :meth:`enqueue` and the flags
    that differ; everything else has a working default.

    Capability flags (class attributes):

    * ``durable``: queued jobs survive a restart of the web process;
    * ``spans_processes``: jobs may run in another process than the one that queued
      them (records must then live in a store every process sees);
    * ``supports_delay``: ``delay``/``at`` are honoured (default: in-process, by
      :meth:`schedule`);
    * ``supports_retry``: a failed attempt can be queued again (retry policies);
    * ``supports_cancel_running``: a running job sees ``asyncjob_cancelled()`` turn
      true when cancelled from the process that queued it;
    * ``supports_on_commit``: ``on_commit`` hand-off is allowed;
    * ``transactional_enqueue``: the enqueue itself joins the caller's transaction
      (the job row commits or rolls back with the request's rows);
    * ``supports_priority``, ``supports_unique``, ``supports_concurrency_limit``,
      ``supports_time_limit``: the options of the same names (issue 13).
    """

    durable = False
    spans_processes = False
    supports_delay = True
    supports_retry = True
    supports_cancel_running = True
    supports_on_commit = True
    transactional_enqueue = False
    supports_priority = False
    supports_unique = False
    supports_concurrency_limit = False
    supports_time_limit = False
    #: How a job over its time limit is stopped (see :mod:`~tgext.asyncjob.timelimits`).
    time_limit_mode = FLAG

    def __init__(self, runtime: Runtime, **options: Any):
        if options:
            raise TypeError(f'{type(self).__name__} takes no option(s): '
                            f'{", ".join(sorted(options))}')
        self.runtime = runtime
        self._scheduler: Scheduler | None = None

    # -- taking jobs -------------------------------------------------------------------

    def validate(self, job: Job) -> None:
        """Raise :class:`UnsupportedOption` (a ``ValueError``) if this backend cannot
        honour what ``job`` asks for; subclasses add their own checks (and may raise
        ``TypeError`` for callables or arguments they cannot carry). Called by
        ``JobQueue.perform`` before the job is stored."""
        # On every perform: each check looks at the job only where this backend lacks
        # the capability, so a backend that has them all checks almost nothing.
        name = type(self).__name__
        options = job.options
        if job.eta is not None and not self.supports_delay:
            raise UnsupportedOption(f'{name} cannot delay jobs (delay=/at=)')
        if not self.supports_on_commit and getattr(options, 'on_commit', False):
            raise UnsupportedOption(f'{name} cannot hold jobs until the transaction commits '
                                    '(on_commit)')
        if not self.supports_retry and policy_for(job.retry, job.func) is not None:
            raise UnsupportedOption(f'{name} cannot retry jobs: drop the retry policy of '
                                    f'{job.func_name}')
        for option, flag in lacking_options(type(self)):
            if getattr(options, option, None) is not None:
                raise UnsupportedOption(f'{name} does not support {option}= ({flag} is False)')
        if getattr(options, 'unique_key', None) is not None:
            store = self.runtime.store
            if not callable(getattr(store, 'track_unique', None)):
                raise UnsupportedOption(f'the job store {type(store).__name__} cannot hold '
                                        'unique keys (unique_key=): use the memory or Redis '
                                        'tracker')

    def enqueue(self, job: Job) -> None:
        """Hand over a due job, to be run (through ``runtime.execute``) as soon as a
        worker is free. May raise :class:`~tgext.asyncjob.errors.QueueFull`."""
        raise NotImplementedError(f'{type(self).__name__} must implement enqueue()')

    def schedule(self, job: Job, eta: float) -> None:
        """Hand over ``job`` to run at wall-clock time ``eta`` (epoch seconds), not
        before: delayed jobs and retries. Default: this process's scheduler thread,
        which holds the job and calls :meth:`enqueue` when due. Backends with their own
        durable scheduling override it."""
        self.runtime.lifecycle.hold(job)
        if self._scheduler is None:
            self._scheduler = Scheduler(self._release)
        self._scheduler.schedule(job, eta)

    def _release(self, job: Job) -> None:
        # A delayed job is due (in the scheduler thread): hand it over, or drop it.
        try:
            self.enqueue(job)
        except QueueStopped:
            self.runtime.lifecycle.drop(job, 'the queue was stopped before it started')
        except Exception as exc:
            log.exception('asyncjob %s (%s): could not hand over a due job', job.id,
                          job.func_name)
            self.runtime.lifecycle.drop(job, f'it could not be handed over when due ({exc!r})')

    def cancel(self, jobid: str) -> bool:
        """Cancel a job this process does not hold (it waits in the backend's own
        storage). True if it will not run (or, running, was flagged). Default: False."""
        return False

    def get_record(self, jobid: str) -> dict[str, Any] | None:
        """The record of ``jobid`` when the backend is its own store (else unused)."""
        return None

    def own_store(self) -> Any:
        """A store to use instead of the queue's tracker (a backend keeping records in
        its own tables), or ``None``."""
        return None

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start running jobs in this process, if the backend does (idempotent)."""

    def stop_scheduled(self) -> list[Job]:
        """Stop the in-process scheduler; return the delayed jobs it still held (the
        queue reports them)."""
        return self._scheduler.stop() if self._scheduler is not None else []

    def stop(self, timeout: float) -> list[str]:
        """Run what is queued here for up to ``timeout`` seconds, then drop the rest
        through ``runtime.lifecycle.drop``; return the ids dropped. Running jobs are the
        queue's business. Default: nothing held here, nothing to drain."""
        return []

    def after_fork(self) -> None:
        """In a forked child: forget the parent's threads, sockets and delayed jobs."""
        if self._scheduler is not None:
            self._scheduler.after_fork()

    def live_workers(self) -> list[str] | None:
        """The worker processes alive now (one description each), for health checks;
        ``None`` when this backend has no worker processes to look for (default).
        Raises :class:`~tgext.asyncjob.errors.TrackerUnavailable` if their registry
        cannot be reached."""
        return None

    def work(self, *, threads: int = 1, burst: bool = False,
             queues: list[str] | None = None) -> None:
        """Run jobs in this process until stopped: the loop of the worker command
        (``python -m tgext.asyncjob worker``). ``burst``: return once nothing is due.
        Default: this backend has no separate worker processes."""
        raise NotImplementedError(
            f'the {type(self).__name__} backend runs its jobs in the web process: it has no '
            'worker command; use asyncjob.backend = sqlalchemy or rq for worker processes')
