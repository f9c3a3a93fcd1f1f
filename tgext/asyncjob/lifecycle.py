"""The one job state machine: every change of a job's state goes through here.

::

    queued ──claim──▶ running ──succeed──▶ succeeded
      │  ▲              │ │
      │  └───retry──────┘ └──fail / interrupt──▶ failed
      └──cancel / drop──▶ cancelled

Each transition is checked against :data:`ALLOWED` and made under the job's own lock,
together with its store write, so:

* ``claim`` (queued → running) and ``cancel``/``drop`` (queued → cancelled) exclude each
  other: a cancelled job never runs, a started job is never reported "will not run";
* one job's writes reach the store in the order of its transitions;
* a finished job stays finished: a late ``succeed`` after ``interrupt`` is refused.

Cancelling a running job only sets ``job.cancel_requested`` (cooperative, the job may
read it with ``asyncjob_cancelled()``), and it is then never retried.

A backend that keeps jobs outside this process (rq, a database) rebuilds a
:class:`~tgext.asyncjob.job.Job` with the ``state`` its own storage says, after making
the matching claim atomic there, and calls the same methods: the records and hooks
then say the same things on every backend.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .errors import TrackerUnavailable
from .hooks import Hooks
from .job import Job, JobError, JobState, safe_repr

log = logging.getLogger('tgext.asyncjob')

Q, R = JobState.QUEUED, JobState.RUNNING
S, F, C = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED

#: Which state may follow which. Finished states have no successor.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({R, C}),      # claim; cancel, drop
    R: frozenset({S, F, Q}),   # succeed; fail, interrupt; retry (the attempt counted)
    S: frozenset(),
    F: frozenset(),
    C: frozenset(),
}


class Lifecycle:
    """Moves jobs between states, writes each change to ``store`` and tells ``hooks``.

    It also knows the jobs this process holds (queued here or running here), so they
    can be cancelled, and reported or interrupted when the queue stops. Store outages
    (:class:`TrackerUnavailable`) are logged once and never raised: jobs keep running.
    """

    def __init__(self, store: Any, hooks: Hooks | None = None):
        self.store = store
        self.hooks = hooks if hooks is not None else Hooks()
        self._held: dict[str, Job] = {}
        self._store_down = False
        self._store_lock = threading.Lock()
        self._changed = threading.Condition()
        self._waiters = 0  # threads in wait_for_change(), counted under _changed

    # -- the jobs held by this process --------------------------------------------

    def hold(self, job: Job) -> None:
        """This process has ``job`` (waiting, scheduled or running): until it finishes,
        :meth:`get` finds it and the queue's ``stop()`` accounts for it."""
        if not job.state.finished:
            self._held[job.id] = job

    def get(self, jobid: str) -> Job | None:
        """The held job ``jobid``, if this process has it."""
        return self._held.get(jobid)

    def held(self) -> list[Job]:
        """The jobs this process holds, oldest first."""
        return list(self._held.values())

    # -- transitions ---------------------------------------------------------------

    def track(self, job: Job, record: dict[str, Any]) -> None:
        """Write the record of a new, queued job (the first write of its life)."""
        self.guard(self.store.track, job.id, record)

    def track_unique(self, job: Job, record: dict[str, Any]) -> str | None:
        """:meth:`track`, unless a live job holds ``job``'s ``unique_key``: then its
        id, and nothing is written. Atomic in the store (see :mod:`.uniquekeys`); an
        outage raises :class:`TrackerUnavailable` (uniqueness cannot be promised)."""
        options = job.options
        return self.store.track_unique(job.id, record, options.unique_key,
                                       options.unique_for)

    def _release_key(self, job: Job) -> None:
        # Every end of a job comes through _ended or forget: the key is let go there.
        # Stores that know from the job's state alone need no call (release_unique
        # absent); a job rebuilt without its options is released by its final record.
        key = getattr(job.options, 'unique_key', None)
        if key is None:
            return
        release = getattr(self.store, 'release_unique', None)
        if release is not None:
            try:
                self.guard(release, job.id, key)
            except Exception:
                log.exception('asyncjob %s: could not release its unique key', job.id)

    def forget(self, job: Job) -> None:
        """Undo :meth:`track` for a job refused at the hand-off (queue full, stopped):
        the caller got an exception, not an id, so no record or hook stays behind."""
        with job.lock:
            if job.state is not Q:
                return
            job.state = C
        self._held.pop(job.id, None)
        self.guard(self.store.remove, job.id)
        self._release_key(job)

    def claim(self, job: Job) -> bool:
        """queued → running, counting the attempt. False (nothing done) if the job was
        cancelled, dropped or claimed by someone else: then it must not run."""
        with job.lock:
            if not self._allowed(job, R):
                return False
            job.state = R
            job.attempt += 1
            job.started_at = time.time()
            self.guard(self.store.update, job.id, {
                'state': R.value, 'started_at': job.started_at, 'attempt': job.attempt})
            self.hooks.emit('started', job)
        return True

    def succeed(self, job: Job, result: Any) -> bool:
        """running → succeeded with ``result`` (stored as its ``repr`` if the store
        cannot keep the object itself)."""
        return self._finish(job, S, 'succeeded', (result,), result=result)

    def fail(self, job: Job, error: JobError, detail: str = '') -> bool:
        """running → failed with ``error`` (a :class:`JobError`)."""
        return self._finish(job, F, 'failed', (error,), error=error, detail=detail)

    def interrupt(self, job: Job, why: str) -> bool:
        """running → failed, error type ``Interrupted``: the process ends (or gave up
        waiting) while the job still runs. Logged at WARNING."""
        error = JobError('Interrupted', why)
        if not self._finish(job, F, 'failed', (error,), error=error,
                            detail=f'interrupted: {why}'):
            return False
        log.warning('asyncjob %s (%s) interrupted: %s; recorded as failed (Interrupted)',
                    job.id, job.func_name, why)
        return True

    def retry(self, job: Job, error: JobError, delay: float) -> bool:
        """running → queued again, due in ``delay`` seconds (``job.eta``); the record
        keeps the attempt number and the error of the attempt that failed."""
        with job.lock:
            if not self._allowed(job, Q):
                return False
            job.state = Q
            job.started_at = None
            job.eta = time.time() + delay
            self.guard(self.store.update, job.id, {
                'state': Q.value, 'attempt': job.attempt, 'eta': job.eta,
                'detail': f'attempt {job.attempt} failed; retrying in {delay:.3g} s',
                'error': error.as_record()})
            self.hooks.emit('retrying', job, error, delay)
        return True

    def cancel(self, job: Job) -> bool:
        """Cancel ``job``: queued → cancelled (it will not run); running: only set
        ``cancel_requested`` (the job may stop early; it is not retried). False once
        it has finished."""
        with job.lock:
            if job.state is R:
                job.cancel_requested = True
                return True
            if job.state is not Q:
                return False
            job.cancel_requested = True
            self._end(job, C, 'cancelled', detail='cancelled before it started')
        self._ended(job)
        return True

    def drop(self, job: Job, why: str) -> bool:
        """queued → cancelled because it cannot run (the queue stopped, its transaction
        aborted...): logged at WARNING, recorded ``not run: <why>``."""
        with job.lock:
            if job.state is not Q:
                return False
            log.warning('asyncjob %s (%s) did not run: %s', job.id, job.func_name, why)
            self._end(job, C, 'cancelled', detail=f'not run: {why}')
        self._ended(job)
        return True

    def _allowed(self, job: Job, target: JobState) -> bool:
        # Called under job.lock.
        return target in ALLOWED[job.state]

    def _finish(self, job: Job, state: JobState, event: str, event_args: tuple,
                result: Any = None, error: JobError | None = None, detail: str = '') -> bool:
        with job.lock:
            if not self._allowed(job, state):
                return False
            self._end(job, state, event, *event_args, result=result, error=error,
                      detail=detail)
        self._ended(job)
        return True

    def _end(self, job: Job, state: JobState, event: str, *event_args: Any,
             result: Any = None, error: JobError | None = None, detail: str = '') -> None:
        # Under job.lock, the transition checked: the final state, its record, and the
        # hooks told (under the lock too, so that they see one job's events in order).
        job.state = state
        fields: dict[str, Any] = {'state': state.value, 'finished_at': time.time()}
        if result is not None:
            fields['result'] = result
        if error is not None:
            fields['error'] = error.as_record()
        if detail:
            fields['detail'] = detail
        self._write_final(job, fields)
        self.hooks.emit(event, job, *event_args)

    def _ended(self, job: Job) -> None:
        # After the lock: forget the job, let its unique key go, wake the waiters.
        self._held.pop(job.id, None)
        self._release_key(job)
        # The condition only when someone waits: most jobs end with nobody waiting. A
        # waiter that starts just after this check wakes at its timeout: every
        # wait_for_change() caller polls, as it must for jobs of other processes.
        if self._waiters:
            with self._changed:
                self._changed.notify_all()

    def _write_final(self, job: Job, fields: dict[str, Any]) -> None:
        try:
            self.guard(self.store.finish, job.id, fields)
            return
        except Exception as exc:  # a result the store cannot keep (not JSON, ...)
            if 'result' not in fields:
                log.exception('asyncjob %s: the tracker could not record its end', job.id)
                return
            why = f'{type(exc).__name__}: {exc}'
        fields['result'] = safe_repr(fields['result'])
        fields['detail'] = f'the tracker could not store the result ({why}): kept its repr()'
        try:
            self.guard(self.store.finish, job.id, fields)
        except Exception:
            log.exception('asyncjob %s: the tracker could not record its end', job.id)

    # -- waiting --------------------------------------------------------------------

    def wait_for_change(self, timeout: float) -> None:
        """Block until some held job finishes, or ``timeout`` seconds pass."""
        with self._changed:
            self._waiters += 1
            try:
                self._changed.wait(timeout)
            finally:
                self._waiters -= 1

    # -- store access shielded from outages -------------------------------------------

    def guard(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` on the store; an outage is logged once (and its end once),
        and answers ``None`` instead of raising. Other errors propagate."""
        try:
            result = call(*args)
        except TrackerUnavailable as exc:
            with self._store_lock:
                first, self._store_down = not self._store_down, True
            if first:
                log.warning('asyncjob tracker unavailable, jobs keep running untracked: %s', exc)
            return None
        if self._store_down:
            with self._store_lock:
                back, self._store_down = self._store_down, False
            if back:
                log.warning('asyncjob tracker is reachable again')
        return result

    def flush(self) -> None:
        """Send the store's buffered writes now, if it buffers any (the Redis tracker's
        ``write_behind``)."""
        flush = getattr(self.store, 'flush', None)
        if flush is not None:
            self.guard(flush)

    def after_fork(self) -> None:
        """In a forked child: the parent's jobs stay the parent's."""
        self._held = {}
        self._store_lock = threading.Lock()
        self._changed = threading.Condition()
        self._waiters = 0
