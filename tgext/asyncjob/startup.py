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


def make_tracker(tracker: Any) -> Any:
    """The tracker object for the ``asyncjob.tracker`` value (``None``, ``memory``, a
    Redis URL, or a tracker object). A backend whose workers are other processes
    replaces a memory tracker with a store they can see (``Backend.own_store``)."""
    if tracker is None or tracker == 'memory':
        from .trackers.memory import MemoryProgressTracker
        return MemoryProgressTracker()
    if isinstance(tracker, str):
        from .trackers.redisdb import RedisProgressTracker  # redis: an optional dependency
        return RedisProgressTracker(url=tracker)
    return tracker


def check(q: JobQueue, conf: Mapping[str, Any] | None) -> None:
    """Log a warning for each problem of this deployment that can be seen now."""
    # A backend's own store (sqlalchemy: the app's database) may have no such check.
    startup_check = getattr(q.store, 'startup_check', None)
    problem = startup_check(PING_TIMEOUT) if startup_check is not None else None
    if problem:
        log.warning('tgext.asyncjob: %s: job records and progress cannot be stored until '
                    'it does', problem)
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
    if not backend.spans_processes:
        where = f'threads, {q.workers} worker thread(s) in this process'
    else:
        where = getattr(backend, 'description', None) or type(backend).__name__
    mode = ', immediate mode' if q.immediate else ''
    return f'backend {where}{mode}, tracker {_tracker_name(q.store)}'


def _runs_jobs_here(q: JobQueue) -> bool:
    # Thread workers, or a backend of several processes whose web process works too.
    return not q.backend.spans_processes or bool(getattr(q.backend, 'in_process', False))


def _tracker_name(tracker: Any) -> str:
    client = getattr(tracker, 'redis', None)
    if client is not None:
        return f'redis at {_address(client)}'
    name = type(tracker).__name__
    return 'memory (this process only)' if name == 'MemoryProgressTracker' else name


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if 'path' in kwargs:
        return f'unix:{kwargs["path"]} db {kwargs.get("db", 0)}'
    return f'{kwargs.get("host", "localhost")}:{kwargs.get("port", 6379)}/{kwargs.get("db", 0)}'


def uwsgi_warning(opt: Mapping[Any, Any]) -> str | None:
    """What is wrong with these uWSGI options (``uwsgi.opt``) for worker threads."""
    options = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in opt.items()}
    problems = []
    if not options.keys() & {'enable-threads', 'threads'}:
        problems.append('uWSGI runs without enable-threads: the job worker threads never '
                        'run. Add "enable-threads = true" (or "threads = N")')
    processes = options.get('processes', options.get('workers', b'1'))
    forks = 'master' in options or int(processes.decode() if isinstance(processes, bytes)
                                       else processes) > 1
    if forks and not options.keys() & {'lazy-apps', 'lazy', 'py-call-osafterfork'}:
        # uWSGI's fork() skips Python's fork handlers: a worker inherits the master's
        # queue with none of its threads, and the master's database connections.
        problems.append('uWSGI forks its workers from a master that loaded the '
                        'application, without running Python\'s fork handlers: jobs queued '
                        'in the workers never run. Add "lazy-apps = true" (or '
                        '"py-call-osafterfork = true")')
    return '; '.join(problems) or None


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
