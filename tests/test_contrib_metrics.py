"""Issue 14 §3: the Prometheus and OpenTelemetry hooks of ``tgext.asyncjob.contrib``,
checked by scraping a real TG app's metrics page and by reading the spans the
OpenTelemetry SDK exported."""

from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
import tg
from tg import expose

from tgext.asyncjob import Retry, asyncjob_perform, start_async_worker
from tgext.asyncjob.contrib.otel import OpenTelemetryHook
from tgext.asyncjob.contrib.prometheus import PrometheusHook

from jobhelpers import Gate, wait_finished
from sampleapp.controllers.root import RootController
from services import wait_for

WAIT = 30


def succeed(x):
    return x * 2


def fail(x):
    raise ValueError(f'bad value {x}')


ATTEMPTS = {}


def fail_once(key):
    """Fails on its first attempt only (the test's key counts the attempts)."""
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] == 1:
        raise ConnectionError('first attempt fails')
    return 'second attempt'


def samples(text):
    """``{(name, frozenset(labels)): value}`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(scraped, name, **labels):
    return scraped.get((name, frozenset(labels.items())), 0.0)


NAME = __name__  # the jobs' module, as their dotted names start


# ---------------------------------------------------------------- Prometheus


class MetricsRoot(RootController):
    """A quickstart root with the jobs' actions and the metrics page docs/operations.rst shows."""

    @expose('json')
    def start(self, what='succeed'):
        return dict(jobid=asyncjob_perform(globals()[what], 1))


@pytest.fixture
def metrics_app(make_app, sqlite_db_url):
    """A sample TG app whose queue has a PrometheusHook on a private registry, served
    at ``/metrics`` as docs/operations.rst shows."""
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)

    class Root(MetricsRoot):
        @expose(content_type='text/plain')
        def metrics(self):
            tg.response.content_type = CONTENT_TYPE_LATEST
            return generate_latest(registry)

    app = make_app(sqlite_db_url, root=Root, plug_options={'hooks': [hook]})
    return app, hook


def scrape(app):
    response = app.get('/metrics')
    assert response.content_type == 'text/plain'
    return samples(response.text)


def test_prometheus_counts_finished_jobs_by_callable_and_state(metrics_app):
    app, hook = metrics_app
    q = app.app_globals.asyncjob_queue
    ok = app.get('/start', params={'what': 'succeed'}).json['jobid']
    bad = app.get('/start', params={'what': 'fail'}).json['jobid']
    wait_finished(q, ok)
    wait_finished(q, bad)
    scraped = scrape(app)
    assert value(scraped, 'asyncjob_jobs_finished_total',
                 callable=f'{NAME}.succeed', state='succeeded') == 1
    assert value(scraped, 'asyncjob_jobs_finished_total',
                 callable=f'{NAME}.fail', state='failed') == 1
    assert value(scraped, 'asyncjob_jobs_finished_total',
                 callable=f'{NAME}.fail', state='succeeded') == 0
    for func in ('succeed', 'fail'):
        labels = {'callable': f'{NAME}.{func}'}
        assert value(scraped, 'asyncjob_job_queue_wait_seconds_count', **labels) == 1
        assert value(scraped, 'asyncjob_job_run_seconds_count', **labels) == 1
        assert value(scraped, 'asyncjob_job_run_seconds_sum', **labels) >= 0
    assert value(scraped, 'asyncjob_jobs_queued') == 0
    assert value(scraped, 'asyncjob_jobs_running') == 0


def test_prometheus_gauges_and_cancelled_jobs():
    registry = CollectorRegistry()
    q = start_async_worker(SimpleNamespace(), workers=1, hooks=[PrometheusHook(registry)])
    gate = Gate()
    try:
        held = q.perform(gate.job)
        gate.wait_entered()
        waiting = q.perform(succeed, (2,))
        scraped = samples(generate_latest(registry).decode())
        assert value(scraped, 'asyncjob_jobs_running') == 1
        assert value(scraped, 'asyncjob_jobs_queued') == 1
        assert q.cancel(waiting)
        gate.release()
        wait_finished(q, held)
        wait_finished(q, waiting)
    finally:
        gate.release()
        q.stop(WAIT)
    scraped = samples(generate_latest(registry).decode())
    assert value(scraped, 'asyncjob_jobs_finished_total',
                 callable=f'{NAME}.succeed', state='cancelled') == 1
    assert value(scraped, 'asyncjob_jobs_finished_total',
                 callable=f'{NAME}.succeed', state='succeeded') == 0
    # A job that never started waited for nothing and ran for nothing.
    assert value(scraped, 'asyncjob_job_queue_wait_seconds_count',
                 callable=f'{NAME}.succeed') == 0
    assert value(scraped, 'asyncjob_jobs_running') == 0
    assert value(scraped, 'asyncjob_jobs_queued') == 0


def test_prometheus_counts_retries_and_each_attempt_run_time():
    registry = CollectorRegistry()
    q = start_async_worker(SimpleNamespace(), workers=1, hooks=[PrometheusHook(registry)])
    try:
        jobid = q.perform(fail_once, ('prometheus',),
                          retry=Retry(on=ConnectionError, backoff=0.01, jitter=False))
        assert wait_finished(q, jobid).result == 'second attempt'
    finally:
        q.stop(WAIT)
    scraped = samples(generate_latest(registry).decode())
    labels = {'callable': f'{NAME}.fail_once'}
    assert value(scraped, 'asyncjob_job_retries_total', **labels) == 1
    assert value(scraped, 'asyncjob_job_run_seconds_count', **labels) == 2
    assert value(scraped, 'asyncjob_job_queue_wait_seconds_count', **labels) == 1
    assert value(scraped, 'asyncjob_jobs_finished_total', state='succeeded', **labels) == 1


def test_prometheus_count_queued_false_remembers_nothing():
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, count_queued=False)
    q = start_async_worker(SimpleNamespace(), workers=1, hooks=[hook])
    try:
        wait_finished(q, q.perform(succeed, (3,)))
    finally:
        q.stop(WAIT)
    assert hook._queued == set() and hook._running == {}
    scraped = samples(generate_latest(registry).decode())
    assert value(scraped, 'asyncjob_jobs_finished_total',
                 callable=f'{NAME}.succeed', state='succeeded') == 1


# ------------------------------------------------------------- OpenTelemetry


@pytest.fixture
def tracing():
    """A tracer provider exporting to memory, synchronously (a span is in the exporter
    as soon as it ends)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def job_spans(exporter, count):
    """The ``asyncjob`` spans once ``count`` of them ended."""
    def found():
        spans = [s for s in exporter.get_finished_spans() if s.name.startswith('asyncjob ')]
        return len(spans) >= count and spans
    return wait_for(found, timeout=WAIT, message=lambda: f'spans: {exporter.get_finished_spans()}')


def inner_work():
    """A job that opens its own span: it must be a child of the job's span."""
    with trace.get_tracer('job-code', tracer_provider=INNER_PROVIDER[0]).start_as_current_span('inner'):
        return 'done'


INNER_PROVIDER = [None]


def test_the_job_span_is_a_child_of_the_span_that_queued_it(tracing):
    provider, exporter = tracing
    tracer = provider.get_tracer('test-request')
    q = start_async_worker(SimpleNamespace(), workers=1, hooks=[OpenTelemetryHook(provider)])
    try:
        with tracer.start_as_current_span('GET /start') as request_span:
            ok = q.perform(succeed, (1,))
            bad = q.perform(fail, (2,))
        wait_finished(q, ok)
        wait_finished(q, bad)
        spans = {s.attributes['asyncjob.job_id']: s for s in job_spans(exporter, 2)}
    finally:
        q.stop(WAIT)
    request = request_span.get_span_context()
    for jobid in (ok, bad):
        span = spans[jobid]
        assert span.context.trace_id == request.trace_id
        assert span.parent is not None and span.parent.span_id == request.span_id
        assert span.attributes['asyncjob.attempt'] == 1
        assert span.kind is trace.SpanKind.CONSUMER
    assert spans[ok].name == f'asyncjob {NAME}.succeed'
    assert spans[ok].status.status_code is StatusCode.OK
    failed = spans[bad]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == 'ValueError: bad value 2'
    [event] = [e for e in failed.events if e.name == 'exception']
    assert event.attributes['exception.type'] == 'ValueError'
    assert event.attributes['exception.message'] == 'bad value 2'
    assert 'Traceback' in event.attributes['exception.stacktrace']


def test_a_span_opened_by_the_job_is_a_child_of_the_job_span(tracing):
    provider, exporter = tracing
    INNER_PROVIDER[0] = provider
    q = start_async_worker(SimpleNamespace(), workers=1, hooks=[OpenTelemetryHook(provider)])
    try:
        wait_finished(q, q.perform(inner_work))
        [job_span] = job_spans(exporter, 1)
    finally:
        q.stop(WAIT)
        INNER_PROVIDER[0] = None
    [inner] = [s for s in exporter.get_finished_spans() if s.name == 'inner']
    assert inner.parent.span_id == job_span.context.span_id
    # Without a request around perform the job's span starts its own trace.
    assert job_span.parent is None


def test_each_attempt_has_its_span_under_the_same_parent(tracing):
    provider, exporter = tracing
    tracer = provider.get_tracer('test-request')
    q = start_async_worker(SimpleNamespace(), workers=1, hooks=[OpenTelemetryHook(provider)])
    try:
        with tracer.start_as_current_span('request') as request_span:
            jobid = q.perform(fail_once, ('otel',),
                              retry=Retry(on=ConnectionError, backoff=0.01, jitter=False))
        wait_finished(q, jobid)
        spans = sorted(job_spans(exporter, 2), key=lambda s: s.attributes['asyncjob.attempt'])
    finally:
        q.stop(WAIT)
    first, second = spans
    assert [s.attributes['asyncjob.attempt'] for s in spans] == [1, 2]
    assert {s.parent.span_id for s in spans} == {request_span.get_span_context().span_id}
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes['asyncjob.retry_delay'] > 0
    assert second.status.status_code is StatusCode.OK


def test_a_cancelled_queued_job_has_no_span_and_no_thread_keeps_one(tracing):
    provider, exporter = tracing
    hook = OpenTelemetryHook(provider)
    q = start_async_worker(SimpleNamespace(), workers=1, hooks=[hook])
    gate = Gate()
    try:
        held = q.perform(gate.job)
        gate.wait_entered()
        waiting = q.perform(succeed, (1,))
        assert q.cancel(waiting)
        gate.release()
        wait_finished(q, held)
        [span] = job_spans(exporter, 1)
    finally:
        gate.release()
        q.stop(WAIT)
    assert span.attributes['asyncjob.job_id'] == held
    assert hook._open == {}


def row_meta(url, jobid):
    """The ``meta`` column of ``jobid``'s row, as stored (JSON text or None)."""
    import sqlalchemy
    from tgext.asyncjob.backends.sqlalchemy import schema
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.select(schema.jobs.c.meta)
                                .where(schema.jobs.c.id == jobid)).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.xfail(strict=True, reason=(
    'the sqlalchemy backend serialises job.meta into the row in validate() and inserts '
    'it when the job is tracked, both before on_enqueued runs: the trace context the '
    'hook adds never reaches the row (its meta column stays NULL)'))
def test_through_the_sqlalchemy_backend_the_job_span_is_a_child_too(tracing, sqlite_db_url):
    """The job runs from its row, rebuilt by the claiming worker: the trace context
    must have been stored in the row's ``meta``."""
    from tgext.asyncjob import JobQueue
    provider, exporter = tracing
    tracer = provider.get_tracer('test-request')
    q = JobQueue(backend='sqlalchemy', backend_options={'url': sqlite_db_url}, workers=1,
                 hooks=[OpenTelemetryHook(provider)])
    q.backend.start()
    try:
        with tracer.start_as_current_span('request') as request_span:
            jobid = q.perform(succeed, (1,))
        wait_finished(q, jobid)
        [span] = job_spans(exporter, 1)
    finally:
        q.stop(WAIT)
        q.backend.engines.dispose()
    assert span.attributes['asyncjob.job_id'] == jobid
    assert 'traceparent' in str(row_meta(sqlite_db_url, jobid))
    assert span.context.trace_id == request_span.get_span_context().trace_id
    assert span.parent is not None
    assert span.parent.span_id == request_span.get_span_context().span_id


def test_through_rq_the_trace_context_is_in_the_rq_job(tracing, redis_client, redis_url):
    """The RQ job (what a worker process runs from) carries the queuing span's
    ``traceparent`` in its ``meta``; the worker's hook starts the span from it."""
    import uuid

    import rq
    from tgext.asyncjob import JobQueue
    provider, _ = tracing
    queue_name = f'asyncjob-test-otel-{uuid.uuid4().hex[:12]}'
    q = JobQueue(backend='rq', backend_options={'redis_url': redis_url,
                                                'queue_name': queue_name},
                 hooks=[OpenTelemetryHook(provider)])
    try:
        with provider.get_tracer('test-request').start_as_current_span('request') as span:
            jobid = q.perform(succeed, (1,))
        [rq_job] = rq.Queue(queue_name, connection=redis_client).get_jobs()
    finally:
        q.stop(WAIT)
    context = span.get_span_context()
    assert rq_job.kwargs['jobid'] == jobid
    assert rq_job.kwargs['meta']['otel']['traceparent'] == (
        f'00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}')
