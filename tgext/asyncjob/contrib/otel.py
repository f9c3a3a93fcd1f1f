"""OpenTelemetry: one span per job attempt, a child of the span that queued the job.

``on_enqueued`` (in the caller: a request, usually) writes the current trace context
(W3C ``traceparent``, through the globally configured propagator) into
``job.meta['otel']``, which travels with the job; ``on_started`` (in the worker) opens
the span ``asyncjob <callable>`` under that context and makes it current, so spans the
job opens (database, HTTP) are its children; the job's end, or a retry, closes it.

Register it like any hook::

    from tgext.asyncjob.contrib.otel import OpenTelemetryHook
    plug(base_config, 'tgext.asyncjob', hooks=[OpenTelemetryHook()])
"""
from __future__ import annotations

import threading
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

META_KEY = 'otel'


class _Open:
    """A started span, and what is needed to undo making it current."""

    __slots__ = ('span', 'token', 'thread')

    def __init__(self, span: trace.Span, token: Any, thread: int):
        self.span = span
        self.token = token
        self.thread = thread


class OpenTelemetryHook:
    """A hook (see :mod:`tgext.asyncjob.hooks`) tracing jobs with the tracers of
    ``tracer_provider`` (default: the global one, ``trace.set_tracer_provider``)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None):
        self.tracer = trace.get_tracer('tgext.asyncjob', tracer_provider=tracer_provider)
        # Hooks run on worker threads (and a stop may end a job from another one).
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}

    def on_enqueued(self, job: Any) -> None:
        """Carry the caller's trace context with ``job`` (nothing if there is none)."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            job.meta[META_KEY] = carrier

    def on_started(self, job: Any) -> None:
        """Open the attempt's span under the context ``job`` carries, and make it the
        worker thread's current span for the job's run."""
        parent = propagate.extract(job.meta.get(META_KEY) or {})
        span = self.tracer.start_span(
            f'asyncjob {job.func_name}', context=parent, kind=SpanKind.CONSUMER,
            attributes={'asyncjob.job_id': job.id, 'asyncjob.attempt': job.attempt,
                        'asyncjob.callable': job.func_name})
        # on_started runs in the thread that then runs the job (Runtime.execute).
        token = context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._open[job.id] = _Open(span, token, threading.get_ident())

    def on_succeeded(self, job: Any, result: Any) -> None:
        """Close the span, status OK."""
        self._close(job, Status(StatusCode.OK))

    def on_failed(self, job: Any, error: Any) -> None:
        """Close the span, status ERROR, with the job's error as an exception event."""
        self._close(job, Status(StatusCode.ERROR, f'{error.type}: {error.message}'),
                    error=error)

    def on_retrying(self, job: Any, error: Any, delay: float) -> None:
        """Close the failed attempt's span (the next attempt gets its own)."""
        self._close(job, Status(StatusCode.ERROR, f'{error.type}: {error.message}'),
                    error=error, retry_delay=delay)

    def on_cancelled(self, job: Any) -> None:
        """Close the span if the job had one (a queued job cancelled has none)."""
        self._close(job, None, cancelled=True)

    def _close(self, job: Any, status: Status | None, error: Any = None,
               retry_delay: float | None = None, cancelled: bool = False) -> None:
        with self._lock:
            opened = self._open.pop(job.id, None)
        if opened is None:
            return
        span = opened.span
        if error is not None:
            # A JobError holds no exception object (it may come from another process):
            # the event carries what it recorded, under the semantic convention's names.
            span.add_event('exception', {'exception.type': error.type,
                                         'exception.message': error.message,
                                         'exception.stacktrace': error.traceback or ''})
        if retry_delay is not None:
            span.set_attribute('asyncjob.retry_delay', retry_delay)
        if cancelled:
            span.set_attribute('asyncjob.cancelled', True)
        if status is not None:
            span.set_status(status)
        span.end()
        # A context token can only be reset in the thread that attached it; a job ended
        # from elsewhere (interrupted at stop) leaves its thread's context to the next
        # job's attach, which replaces it.
        if opened.thread == threading.get_ident():
            context.detach(opened.token)
