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

A hook that raises is logged and ignored: it never breaks a job or the worker.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger('tgext.asyncjob')

EVENTS = ('enqueued', 'started', 'progress', 'retrying', 'succeeded', 'failed', 'cancelled')


class Hooks(list):
    """The hooks registered on one queue, called in registration order. A list, so
    that ``if hooks:`` on the request path costs no Python call."""

    def __init__(self, hooks: list[Any] | tuple[Any, ...] = ()):
        super().__init__()
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Any) -> None:
        """Register a hook object; it must have at least one ``on_<event>`` method."""
        if not any(callable(getattr(hook, f'on_{e}', None)) for e in EVENTS):
            raise TypeError(f'{hook!r} has none of the hook methods: '
                            + ', '.join(f'on_{e}' for e in EVENTS))
        self.append(hook)

    def emit(self, event: str, *args: Any) -> None:
        """Call ``on_<event>(*args)`` on every hook that has it, shielding the caller."""
        for hook in self:
            method = getattr(hook, f'on_{event}', None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception:
                log.exception('asyncjob hook %r failed in on_%s', hook, event)
