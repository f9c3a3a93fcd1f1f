"""The single execution path of a job, and the narrow interface backends talk to.

:class:`Runtime` is all a backend sees of its queue: the lifecycle, the configuration,
the store, the hooks, and :meth:`Runtime.execute`, which runs one job from its claim to
its recorded end, the same way on every backend.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import types
from typing import TYPE_CHECKING, Any, Callable, Mapping

from tg.request_local import config as tg_config

from . import database, timelimits
from .context import enter_job, leave_job
from .hooks import Hooks
from .job import Job, JobError
from .lifecycle import Lifecycle
from .retry import policy_for

if TYPE_CHECKING:
    from .backends.base import Backend

log = logging.getLogger('tgext.asyncjob')


#: What a job's callable may return that is not its result (one isinstance per job).
_NOT_A_RESULT = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)


def invoke(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """Call a job's callable; a coroutine it returns (``async def``) is run to its end
    with :func:`asyncio.run` (worker threads have no event loop of their own)."""
    result = func(*args, **kwargs)
    if isinstance(result, _NOT_A_RESULT):
        if inspect.iscoroutine(result):
            return asyncio.run(result)
        raise TypeError('the job returned a generator, whose body would never run: '
                        'queue a function that does the work and returns its result')
    return result


def end_sessions(conf: Mapping[str, Any] | None) -> None:
    """Close the application's sessions after a job (a clean session for the next)."""
    database.end_job_sessions(conf)


class Runtime:
    """What a backend may use of its queue (see :mod:`tgext.asyncjob.backends.base`).

    ``owner`` is the queue, given to the running job's context (for
    ``asyncjob_set_progress``); backends never touch it.
    """

    def __init__(self, owner: Any, lifecycle: Lifecycle, *,
                 conf: Mapping[str, Any] | None, attempts: int,
                 stopping: Callable[[], bool]):
        self._owner = owner
        self.lifecycle = lifecycle
        self.conf = conf
        self.attempts = attempts
        self._stopping = stopping
        self.backend: Backend | None = None  # set by the queue once the backend is made

    @property
    def store(self) -> Any:
        """The job store (tracker) every state change is written to."""
        return self.lifecycle.store

    @property
    def hooks(self) -> Hooks:
        """The queue's hooks (the lifecycle calls them; backends rarely need to)."""
        return self.lifecycle.hooks

    @property
    def stopping(self) -> bool:
        """True once the queue's ``stop()`` began: no retries are queued any more."""
        return self._stopping()

    def execute(self, job: Job) -> None:
        """Claim ``job`` and run it to a recorded end (succeeded, failed, or queued
        again for a retry). Returns at once if the claim fails (cancelled, dropped,
        claimed elsewhere). Never raises: a worker survives anything a job does."""
        try:
            if not self.lifecycle.claim(job):
                return
            self._run_claimed(job)
        except BaseException as exc:  # noqa: B036 - a bug here must not end a worker
            log.critical('asyncjob %s: recording its end failed', job.id, exc_info=True)
            try:
                self.lifecycle.fail(job, JobError.from_exception(exc),
                                    detail='tgext.asyncjob could not record its end')
            except BaseException:  # noqa: B036
                pass

    def _run_claimed(self, job: Job) -> None:
        pushed = self._push_config()
        enter_job(self._owner, job)
        try:
            try:
                call: Callable[..., Any] = invoke
                args: tuple[Any, ...] = (job.func, job.args, job.kwargs)
                limited = timelimits.bound(job, self.time_limit_mode)
                if limited is not None:  # raises TimeLimitExceeded inside the transaction
                    call, args = limited.call, (invoke, *args)
                result = database.run_in_transaction(call, args, None, self.attempts,
                                                     conf=self.conf)
            except BaseException as exc:  # SystemExit, KeyboardInterrupt: not the worker's
                leave_job()
                self.failed(job, exc)
            else:
                leave_job()
                if not self.lifecycle.succeed(job, result):
                    self._late(job, 'succeeded')
        finally:
            leave_job()
            try:
                end_sessions(self.conf)
            except Exception:
                log.exception('asyncjob %s: closing the sessions failed', job.id)
            if pushed:
                tg_config.pop_thread_config()

    @property
    def time_limit_mode(self) -> str:
        """How the backend stops a job over its time limit (see :mod:`.timelimits`)."""
        return getattr(self.backend, 'time_limit_mode', timelimits.FLAG)

    def _push_config(self) -> bool:
        # tg.config inside a job is the job's own app, even with several apps per process.
        if self.conf is None:
            return False
        tg_config.push_thread_config(self.conf)
        return True

    def failed(self, job: Job, exc: BaseException) -> None:
        """The running ``job``'s attempt ended with ``exc``: queue it again if its retry
        policy allows (not if it was cancelled meanwhile or the queue is stopping), else
        record it failed. Also for a backend whose worker died under a job (rq)."""
        exc = timelimits.translate(exc)
        error = JobError.from_exception(exc)
        policy = policy_for(job.retry, job.func)
        not_retried = ''
        if policy is not None and policy.should_retry(exc, job.attempt):
            if timelimits.cancelled(job, exc):
                not_retried = 'not retried: it was cancelled while running'
            elif self.stopping:
                not_retried = 'not retried: the queue was stopping'
            else:
                job.cancel_requested = False  # only its time limit's flag: the next run is clear
                delay = policy.delay(job.attempt)
                log.warning('asyncjob %s (%s) attempt %d failed (%s: %s); retrying in %.3g s',
                            job.id, job.func_name, job.attempt, error.type, error.message,
                            delay)
                if self.lifecycle.retry(job, error, delay):
                    self._schedule_retry(job)
                return
        log.error('asyncjob %s (%s) failed%s: %s: %s', job.id, job.func_name,
                  f' ({not_retried})' if not_retried else '', error.type, error.message,
                  exc_info=exc)
        if not self.lifecycle.fail(job, error, detail=not_retried):
            self._late(job, 'failed')

    def _late(self, job: Job, outcome: str) -> None:
        # Finished is final: a job recorded as interrupted (at exit) keeps that record.
        log.warning('asyncjob %s (%s) %s after it was recorded %s: that record stays',
                    job.id, job.func_name, outcome, job.state.value)

    def _schedule_retry(self, job: Job) -> None:
        assert self.backend is not None and job.eta is not None
        try:
            self.backend.schedule(job, job.eta)
        except Exception as exc:  # e.g. the scheduler was stopped meanwhile
            self.lifecycle.drop(job, f'its retry could not be scheduled ({exc})')
