"""What a queue is given and checked when it starts: its tracker, and warnings for a
deployment that cannot work well (Redis down, too small a database pool, uWSGI
without threads), said once at start rather than at the first job.
"""
from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .database import app_engines

if TYPE_CHECKING:
    import redis

    from .queue import JobQueue

log = logging.getLogger('tgext.asyncjob')

#: Seconds the start-up ping of Redis may take: a warning, not a wait.
PING_TIMEOUT = 1.0


def make_tracker(tracker: Any, backend: Any, backend_options: Mapping[str, Any]) -> Any:
    """The tracker object for the ``asyncjob.tracker`` value (``None``, ``memory``, a
    Redis URL, or a tracker object). With the rq backend, the memory tracker (which
    worker processes cannot see) becomes a Redis tracker on the backend's Redis."""
    from .trackers.memory import MemoryProgressTracker
    from .trackers.redisdb import RedisProgressTracker
    if tracker is None or tracker == 'memory':
        tracker = MemoryProgressTracker()
    elif isinstance(tracker, str):
        return RedisProgressTracker(url=tracker)
    if backend == 'rq' and isinstance(tracker, MemoryProgressTracker):
        connection = backend_options.get('connection')
        if connection is not None:
            return RedisProgressTracker(client=connection)
        from .backends.rq import DEFAULT_REDIS_URL
        url = backend_options.get('redis_url') or DEFAULT_REDIS_URL
        log.info('tgext.asyncjob: with the rq backend job records go to Redis (%s): the '
                 'memory tracker cannot be seen by worker processes', _safe_url(url))
        return RedisProgressTracker(url=url)
    return tracker


def check(q: JobQueue, conf: Mapping[str, Any] | None) -> None:
    """Log a warning for each problem of this deployment that can be seen now."""
    for client in _redis_clients(q):
        _ping(client)
    if _runs_jobs_here(q):
        uwsgi = sys.modules.get('uwsgi')  # only importable inside a uWSGI worker
        if uwsgi is not None:
            warning = uwsgi_warning(getattr(uwsgi, 'opt', {}))
            if warning:
                log.error('tgext.asyncjob: %s', warning)
        for engine in app_engines(conf):
            warning = pool_warning(engine, q.workers, request_threads())
            if warning:
                log.warning('tgext.asyncjob: %s', warning)


def describe(q: JobQueue) -> str:
    """One line: the backend, the worker count and the tracker."""
    backend = q.backend
    name = type(backend).__name__
    if name == 'WorkerPool':
        where = f'backend threads, {q.workers} worker thread(s) in this process'
    elif hasattr(backend, 'queue_name'):
        where = (f'backend rq, queue {backend.queue_name!r} on '
                 f'{_safe_url(getattr(backend, "redis_url", ""))}, jobs run by rq worker '
                 'processes (gearbox rqworker)')
    else:
        where = f'backend {name}'
    mode = ', immediate mode' if q.immediate else ''
    return f'{where}{mode}, tracker {_tracker_name(q.tracker)}'


def _runs_jobs_here(q: JobQueue) -> bool:
    return type(q.backend).__name__ == 'WorkerPool'


def _tracker_name(tracker: Any) -> str:
    client = getattr(tracker, 'redis', None)
    if client is not None:
        return f'redis at {_address(client)}'
    name = type(tracker).__name__
    return 'memory (this process only)' if name == 'MemoryProgressTracker' else name


def _safe_url(url: str) -> str:
    # Never log a password.
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=f'{parts.username or ""}:***@{parts.hostname}'
                               + (f':{parts.port}' if parts.port else ''))
    return parts.geturl()


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if 'path' in kwargs:
        return f'unix:{kwargs["path"]} db {kwargs.get("db", 0)}'
    return f'{kwargs.get("host", "localhost")}:{kwargs.get("port", 6379)}/{kwargs.get("db", 0)}'


def _redis_clients(q: JobQueue) -> Iterator[redis.Redis]:
    seen = set()
    for client in (getattr(q.tracker, 'redis', None), getattr(q.backend, 'connection', None)):
        if client is not None and _address(client) not in seen:
            seen.add(_address(client))
            yield client


def _ping(client: redis.Redis) -> None:
    """One short PING on a connection of its own (the client's may retry for seconds)."""
    import redis as redis_module
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, 'socket_timeout': PING_TIMEOUT,
              'socket_connect_timeout': PING_TIMEOUT, 'retry': None}
    kwargs.pop('retry_on_error', None)
    connection = pool.connection_class(**kwargs)
    try:
        connection.connect()
        connection.send_command('PING')
        connection.read_response()
    except (redis_module.RedisError, OSError) as exc:
        log.warning('tgext.asyncjob: Redis at %s does not answer (%s): job records and '
                    'progress cannot be stored until it does', _address(client), exc)
    finally:
        connection.disconnect()


def uwsgi_warning(opt: Mapping[Any, Any]) -> str | None:
    """What is wrong with these uWSGI options (``uwsgi.opt``) for worker threads."""
    keys = {k.decode() if isinstance(k, bytes) else str(k) for k in opt}
    if not keys & {'enable-threads', 'threads'}:
        return ('uWSGI runs without enable-threads: the job worker threads will never '
                'run. Add "enable-threads = true" (or "threads = N") to the uWSGI '
                'configuration')
    return None


def request_threads() -> int | None:
    """Request threads of this process, where the server says: uWSGI, mod_wsgi."""
    uwsgi = sys.modules.get('uwsgi')
    if uwsgi is not None:
        threads = getattr(uwsgi, 'opt', {}).get('threads', 1)
        return int(threads.decode() if isinstance(threads, bytes) else threads)
    mod_wsgi = sys.modules.get('mod_wsgi')
    if mod_wsgi is not None:
        return int(getattr(mod_wsgi, 'threads_per_process', 1))
    return None


def pool_warning(engine: Any, job_threads: int, requests: int | None) -> str | None:
    """A warning if ``engine``'s pool cannot lend a connection to every job thread and
    request thread at once (they would wait ``pool_timeout`` and fail)."""
    pool = engine.pool
    size = getattr(pool, 'size', None)
    if not callable(size):
        return None  # NullPool, StaticPool, SingletonThreadPool: no fixed bound
    overflow = getattr(pool, '_max_overflow', 0)  # QueuePool keeps it only there
    if overflow < 0:
        return None  # unbounded overflow
    capacity = size() + overflow
    needed = job_threads + (requests or 0)
    if capacity >= needed:
        return None
    requests_text = (f' + {requests} request thread(s)' if requests is not None else
                     ' (the request threads of your server come on top)')
    return (f'the SQLAlchemy pool of {engine.url.render_as_string(hide_password=True)} '
            f'holds at most {capacity} connections (pool_size {size()} + max_overflow '
            f'{overflow}), fewer than {job_threads} job thread(s){requests_text}: '
            'raise sqlalchemy.pool_size or sqlalchemy.max_overflow')
