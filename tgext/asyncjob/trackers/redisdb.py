"""Keeps job records in Redis, so every process of an application sees them.

Each job is one hash, ``<prefix>job:<id>``, refreshed to expire on every write; a
sorted set ``<prefix>recent`` indexes jobs by enqueue time for listing. Every call is
one round trip (commands are pipelined). Ids that are not ours are never looked up,
so an id taken from a URL cannot read any other key. Writes after a job's first go
through a small Lua script that leaves a finished record alone, so no write from
any process, however late, brings a finished job back to life.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import TrackerUnavailable
from ..job import is_job_id
from .base import (RESULT_BUDGET, ProgressTracker, check_progress_value, clip_error,
                   clip_text, note_truncation, progress_from_record)
from .redisurl import check_redis_url
from .writebehind import WriteBehind

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

__all__ = ['RedisProgressTracker', 'check_redis_url']

_JSON_FIELDS = ('data', 'result', 'error', 'name', 'detail')

# HSET + EXPIRE unless the record is finished. KEYS[1]: the job's hash; ARGV[1]: the
# ttl; then field, value pairs. Returns 1 if written.
_WRITE_UNLESS_FINISHED = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# track() unless a live job holds a unique key. KEYS[1]: the key's string, KEYS[2]: the
# new job's hash, KEYS[3]: the recent index; ARGV[1]: the new job's id, ARGV[2]: the
# key's ttl in ms (0: none), ARGV[3]: the record's ttl, ARGV[4]: its score, ARGV[5]: the
# prefix of job hashes; then field, value pairs. The holder is live while its record
# says queued or running; a record gone (expired) or finished lets the key go. The key
# and the record are written together, so a holder always has a record. Returns the
# holder's id, or false once the key and record are written.
_TRACK_UNIQUE = """
local holder = redis.call('GET', KEYS[1])
if holder then
  local state = redis.call('HGET', ARGV[5] .. holder, 'state')
  if state == 'queued' or state == 'running' then return holder end
end
if ARGV[2] ~= '0' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return false
"""

# Delete KEYS[1] if it still names the job ARGV[1].
_RELEASE_UNIQUE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# One write: adds its commands to a pipeline.
Write = Callable[[Any], Any]


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f'RedisProgressTracker stores {what} as JSON: {exc}') from None


class RedisProgressTracker(ProgressTracker):
    """Job records in Redis.

    Connect with ``host``/``port``/``db`` (0.3's arguments), a ``url``, or an existing
    ``client``. ``timeout`` is how long a queued or running job's key lives without a
    write; ``retention`` how long a finished job is kept. Progress data is JSON, at most
    ``max_data_bytes`` once encoded (more raises ``ValueError``); a result, an error
    message or a traceback beyond ``max_result_bytes`` is stored truncated, with a
    note in the record's ``detail``.

    ``socket_timeout`` bounds each attempt against a host that does not answer (a hung
    Redis). ``retry`` is redis-py's retry policy for the client made here: by default
    one immediate retry after a *connection* error, enough to replace a connection a
    Redis restart closed, and none after a timeout, so a hung Redis costs each call one
    attempt of at most ``socket_timeout`` (redis-py's own default, retries with backoff,
    would hold every job step for seconds).

    ``write_behind`` (seconds, default 0.002; ``None`` to turn off): a job's start and
    end are written by a background thread in batches, so that with a backlog many jobs
    share one round trip. Enqueue and progress stay synchronous and are sent after what
    waits in the buffer, so one job's writes reach Redis in order; a job's end is still
    written only after its commit, so ``None`` from ``get_progress`` still means its
    writes are visible. :meth:`flush` sends what waits.
    """

    supports_listing = True

    def __init__(self, host: str = 'localhost', port: int = 6379, db: int = 15,
                 timeout: int = 3600, *, url: str | None = None,
                 client: redis.Redis | None = None, retention: int | None = None,
                 prefix: str = 'asyncjob:', max_data_bytes: int = 65536,
                 max_result_bytes: int = RESULT_BUDGET,
                 socket_timeout: float = 5.0, retry: Retry | None = None,
                 write_behind: float | None = 0.002):
        if client is None:
            options: dict[str, Any] = dict(
                socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry=retry if retry is not None else Retry(
                    NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
            client = (redis.Redis.from_url(check_redis_url(url), **options) if url
                      else redis.Redis(host=host, port=port, db=db, **options))
        self.redis = client
        self.timeout = int(timeout)
        self.retention = int(retention if retention is not None else timeout)
        self.prefix = prefix
        self.max_data_bytes = int(max_data_bytes)
        self.max_result_bytes = int(max_result_bytes)
        self._recent = f'{prefix}recent'
        self._behind = WriteBehind(self._send_batch, write_behind) if write_behind else None
        self._down = False

    def _key(self, entryid: str) -> str | None:
        if not is_job_id(entryid):
            return None
        return f'{self.prefix}job:{entryid}'

    def _require_key(self, entryid: str) -> str:
        key = self._key(entryid)
        if key is None:
            raise ValueError(f'not a tgext.asyncjob job id: {entryid!r}')
        return key

    # -- sending -------------------------------------------------------------------

    def _send_batch(self, batch: list[Write]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for write in batch:
            write(pipe)
        self._execute(pipe)

    def _send_in_order(self, write: Write) -> None:
        """Send ``write`` now, after every write still buffered."""
        if self._behind is None:
            self._send_batch([write])
        else:
            self._behind.send(write)

    def _send_later(self, write: Write) -> None:
        if self._behind is None or self._down:
            # In an outage, write now: the caller hears of it, and hears when it ends.
            self._send_in_order(write)
        else:
            self._behind.add(write)

    def _guarded(self, key: str, mapping: dict[str, str], ttl: int) -> Write:
        args: list[str | int] = [ttl]
        for name, value in mapping.items():
            args += [name, value]
        return lambda pipe: pipe.eval(_WRITE_UNLESS_FINISHED, 1, key, *args)

    def flush(self) -> None:
        """Send the start and end writes still waiting in the write-behind buffer."""
        if self._behind is not None:
            self._behind.flush()

    def _execute(self, call: Any) -> Any:
        try:
            result = call.execute() if hasattr(call, 'execute') else call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._down = True
            raise TrackerUnavailable(f'Redis is unreachable: {exc}') from exc
        self._down = False
        return result

    def startup_check(self, timeout: float = 1.0) -> str | None:
        """One PING within ``timeout`` s on a separate connection: ``None`` if Redis
        answered, else why not. Never raises (for a warning at start-up)."""
        try:
            pool = self.redis.connection_pool
            kwargs = dict(pool.connection_kwargs, socket_timeout=timeout,
                          socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
            where = kwargs.get('path') or f'{kwargs.get("host")}:{kwargs.get("port")}'
            probe_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        except Exception as exc:
            return f'cannot make a Redis connection to check it: {exc!r}'
        try:
            redis.Redis(connection_pool=probe_pool).ping()
            return None
        except Exception as exc:
            return f'Redis at {where} (db {kwargs.get("db", 0)}) did not answer PING: {exc}'
        finally:
            probe_pool.disconnect()

    # -- encoding ------------------------------------------------------------------

    def _encode(self, fields: dict[str, Any]) -> dict[str, str]:
        """Fields as Redis strings, results and error texts within their budget."""
        budget = self.max_result_bytes
        cut: list[str] = []
        out: dict[str, str] = {}
        fields = dict(fields)
        if fields.get('error') is not None:
            fields['error'], cut = clip_error(fields['error'], budget)
        if fields.get('result') is not None:
            result = fields['result']
            out['result'] = encoded = _dumps(result, 'the result')
            size = len(encoded.encode())
            if size > budget:
                # A string is cut as itself; anything else as its JSON text.
                text, _ = clip_text(result if isinstance(result, str) else encoded, budget)
                out['result'] = _dumps(text, 'the result')
                cut.append(f'result truncated from {size} bytes of JSON')
        note_truncation(fields, cut, budget)
        for k, v in fields.items():
            if v is None or k in out:
                continue
            out[k] = (_dumps(v, k) if k in _JSON_FIELDS else repr(v) if isinstance(v, float)
                      else str(v))
        return out

    def check_data(self, value: int, message: Any) -> str:
        """Encode progress, raising ``TypeError``/``ValueError`` for what Redis cannot hold."""
        check_progress_value(value)
        encoded = _dumps(message, 'progress data')
        if len(encoded.encode()) > self.max_data_bytes:
            raise ValueError(f'progress data is {len(encoded.encode())} bytes once encoded as '
                             f'JSON; RedisProgressTracker accepts at most {self.max_data_bytes}')
        return encoded

    # -- the store interface -------------------------------------------------------

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        """Store a queued job's record and index it by enqueue time.

        The job's first write: sent at once, apart from the buffer (nothing of this job
        can be in it), so an enqueue costs one attempt even while Redis hangs."""
        key = self._require_key(entryid)
        record = record or {'state': 'queued'}
        score = record.get('enqueued_at') or time.time()
        mapping, ttl, recent = self._encode(record), self.timeout, self._recent

        def write(pipe: Any) -> None:
            # redis-py types the mapping with an invariant key, which no dict[str, str]
            # matches; str keys and values are what it accepts.
            pipe.hset(key, mapping=cast('Mapping[FieldT, EncodableT]', mapping))
            pipe.expire(key, ttl)
            pipe.zadd(recent, {entryid: score})
        self._send_batch([write])

    def _unique_key(self, key: str) -> str:
        return f'{self.prefix}unique:{key}'

    def track_unique(self, entryid: str, record: dict[str, Any], key: str,
                     unique_for: float | None) -> str | None:
        """:meth:`track` unless a queued or running job holds ``key`` (for at most
        ``unique_for`` s): then that job's id. One Lua script, so atomic for every
        process on this Redis (a single server: the script reads the holder's record,
        a key it is not given)."""
        job_key = self._require_key(entryid)
        score = record.get('enqueued_at') or time.time()
        args: list[str | int | float] = [
            entryid, 0 if unique_for is None else max(int(unique_for * 1000), 1),
            self.timeout, score, f'{self.prefix}job:']
        for name, value in self._encode(record).items():
            args += [name, value]
        holder = self._execute(lambda: self.redis.eval(
            _TRACK_UNIQUE, 3, self._unique_key(key), job_key, self._recent, *args))
        return holder.decode() if holder else None

    def release_unique(self, entryid: str, key: str) -> None:
        """Let ``key`` go if ``entryid`` still holds it (after its final write)."""
        unique_key = self._unique_key(key)
        self._send_later(lambda pipe: pipe.eval(_RELEASE_UNIQUE, 1, unique_key, entryid))

    def remove(self, entryid: str) -> None:
        """Forget a job (after its writes still buffered)."""
        key = self._key(entryid)
        if key is not None:
            recent = self._recent

            def write(pipe: Any) -> None:
                pipe.delete(key)
                pipe.zrem(recent, entryid)
            self._send_in_order(write)

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Store progress (one round trip, after the job's buffered writes); the key's
        expiry is refreshed. Ignored once the job is finished."""
        encoded = self.check_data(value, message)
        key = self._require_key(entryid)
        self._send_in_order(self._guarded(
            key, {'state': 'running', 'progress': str(value), 'data': encoded}, self.timeout))

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge fields into a live job's record. Ignored once the job is finished."""
        self._send_later(self._guarded(self._require_key(entryid), self._encode(fields),
                                       self.timeout))

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """Store the final state for ``retention`` seconds, unless the job already has
        one; drop index entries past the retention."""
        write = self._guarded(self._require_key(entryid), self._encode(fields), self.retention)
        recent, cutoff = self._recent, time.time() - self.retention

        def finish_write(pipe: Any) -> None:
            write(pipe)
            pipe.zremrangebyscore(recent, '-inf', cutoff)
        self._send_later(finish_write)

    def get_record(self, entryid: str) -> dict[str, Any] | None:
        """The job's record, or ``None`` if unknown, expired, or not one of our ids."""
        key = self._key(entryid)
        if key is None:
            return None
        raw = self._execute(lambda: self.redis.hgetall(key))
        return self._decode(raw) if raw else None

    @staticmethod
    def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for k, v in raw.items():
            name, text = k.decode(), v.decode()
            if name in _JSON_FIELDS:
                record[name] = json.loads(text)
            elif name in ('progress', 'attempt'):
                record[name] = int(text)
            elif name.endswith('_at') or name == 'eta':
                record[name] = float(text)
            else:
                record[name] = text
        return record

    def get_progress(self, entryid: str) -> tuple[int, Any] | None:
        """The 0.3 answer, read in one round trip."""
        key = self._key(entryid)
        if key is None:
            return None
        state, progress, data = self._execute(
            lambda: self.redis.hmget(key, 'state', 'progress', 'data'))
        if state is None:
            return None
        return progress_from_record({
            'state': state.decode(),
            'progress': int(progress) if progress is not None else 0,
            'data': json.loads(data.decode()) if data is not None else None,
        })

    def recent(self, limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """Newest first; two round trips whatever the limit."""
        ids = [i.decode() for i in self._execute(
            lambda: self.redis.zrevrange(self._recent, 0, max(limit, 1) - 1))]
        pipe = self.redis.pipeline(transaction=False)
        for entryid in ids:
            pipe.hgetall(f'{self.prefix}job:{entryid}')
        return [(i, self._decode(raw)) for i, raw in zip(ids, self._execute(pipe)) if raw]
