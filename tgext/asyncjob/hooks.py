"""Lifecycle hooks: observe jobs without touching them.

A hook is any object with some of these methods (Dramatiq-middleware style; missing
ones are skipped)::

    on_enqueued(job)                 # in the caller, after the job is tracked
    on_started(job)                  # in the worker, before the job's transaction
    on_progress(job, value, data)    # in the worker, after the tracker stored it
    on_succeeded(job, result)        # after the commit
    on_retrying(job, error, delay)   # an attempt failed; it runs again in delay s
    on_failed(job, error)            # after the abort; error is a JobError
    on_cancelled(job)                # a queued job was cancelled or dropped at stop

A hook that raises anything, ``SystemExit`` and ``KeyboardInterrupt`` included, is
logged with its traceback and ignored: it never breaks a job, a worker, or the state
of a job (a job whose ``on_enqueued`` raised still runs).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

log = logging.getLogger('tgext.asyncjob')

EVENTS = ('enqueued', 'started', 'progress', 'retrying', 'succeeded', 'failed', 'cancelled')


class Hooks:
    """The hooks registered on one queue, called in registration order."""

    def __init__(self, hooks: list[Any] | tuple[Any, ...] = ()):
        self._hooks: list[Any] = []
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Any) -> None:
        """Register a hook object; it must have at least one ``on_<event>`` method."""
        if not any(callable(getattr(hook, f'on_{e}', None)) for e in EVENTS):
            raise TypeError(f'{hook!r} has none of the hook methods: '
                            + ', '.join(f'on_{e}' for e in EVENTS))
        self._hooks.append(hook)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def emit(self, event: str, *args: Any) -> None:
        """Call ``on_<event>(*args)`` on every hook that has it, shielding the caller."""
        for hook in self._hooks:
            method = getattr(hook, f'on_{event}', None)
            if method is None:
                continue
            try:
                method(*args)
            except BaseException:  # noqa: B036 - a hook must not end a worker thread
                log.exception('asyncjob hook %r failed in on_%s', hook, event)
