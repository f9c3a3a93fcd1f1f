"""Keeps job records in Redis, so every process of an application sees them.

Each job is one hash, ``<prefix>job:<id>``, refreshed to expire on every write; a
sorted set ``<prefix>recent`` indexes jobs by enqueue time for listing. Every call is
one round trip (commands are pipelined). Ids that are not ours are never looked up,
so an id taken from a URL cannot read any other key.
"""
from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any, Mapping, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import TrackerUnavailable
from .base import ProgressTracker, check_progress_value, progress_from_record
from .writebehind import WriteBehind

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

_JOB_ID = re.compile(r'[0-9a-f]{32}\Z')
_JSON_FIELDS = ('data', 'result', 'error', 'name', 'detail')


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
    ``max_data_bytes`` once encoded.

    ``retry`` is redis-py's retry policy for the client made here: by default one
    immediate retry, enough to replace a connection that a Redis restart closed, so an
    outage costs each call about one connection attempt (redis-py's own default, ten
    retries with backoff, would hold every job step for seconds). ``socket_timeout``
    bounds each attempt against an unresponsive host.

    ``write_behind`` (seconds, default 0.002; ``None`` to turn off): a job's start and
    end are written by a background thread in batches, so that with a backlog many jobs
    share one round trip. The caller's writes (enqueue, progress) stay synchronous; a
    job's end is still written only after its commit, so ``None`` from
    ``get_progress`` still means its writes are visible. :meth:`flush` sends what waits.
    """

    supports_listing = True

    def __init__(self, host: str = 'localhost', port: int = 6379, db: int = 15,
                 timeout: int = 3600, *, url: str | None = None,
                 client: redis.Redis | None = None, retention: int | None = None,
                 prefix: str = 'asyncjob:', max_data_bytes: int = 65536,
                 socket_timeout: float = 5.0, retry: Retry | None = None,
                 write_behind: float | None = 0.002):
        if client is None:
            options: dict[str, Any] = dict(
                socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry=retry if retry is not None else Retry(NoBackoff(), 1))
            client = (redis.Redis.from_url(url, **options) if url
                      else redis.Redis(host=host, port=port, db=db, **options))
        self.redis = client
        self.timeout = int(timeout)
        self.retention = int(retention if retention is not None else timeout)
        self.prefix = prefix
        self.max_data_bytes = int(max_data_bytes)
        self._recent = f'{prefix}recent'
        self._behind = WriteBehind(self._send_batch, write_behind) if write_behind else None
        self._down = False

    def _key(self, entryid: str) -> str | None:
        if not isinstance(entryid, str) or not _JOB_ID.match(entryid):
            return None
        return f'{self.prefix}job:{entryid}'

    def _write(self, key: str, mapping: dict[str, str], ttl: int, *extra: Any) -> None:
        self._send_batch([(key, mapping, ttl, extra)])

    def _write_later(self, key: str, mapping: dict[str, str], ttl: int, *extra: Any) -> None:
        if self._behind is None or self._down:
            # In an outage, write now: the caller hears of it, and hears when it ends.
            self._write(key, mapping, ttl, *extra)
        else:
            self._behind.add((key, mapping, ttl, extra))

    def _send_batch(self, batch: list[tuple[str, dict[str, str], int, tuple[Any, ...]]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key, mapping, ttl, extra in batch:
            # redis-py types the mapping with an invariant key, which no dict[str, str]
            # matches; str keys and values are what it accepts.
            pipe.hset(key, mapping=cast('Mapping[FieldT, EncodableT]', mapping))
            pipe.expire(key, ttl)
            for command in extra:
                command(pipe)
        self._execute(pipe)

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

    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, str]:
        return {k: (_dumps(v, k) if k in _JSON_FIELDS else repr(v) if isinstance(v, float) else str(v))
                for k, v in fields.items() if v is not None}

    def track(self, entryid: str, record: dict[str, Any] | None = None) -> None:
        """Store a queued job's record and index it by enqueue time."""
        key = self._require_key(entryid)
        record = record or {'state': 'queued'}
        score = record.get('enqueued_at') or time.time()
        self._write(key, self._encode(record), self.timeout,
                    lambda pipe: pipe.zadd(self._recent, {entryid: score}))

    def _require_key(self, entryid: str) -> str:
        key = self._key(entryid)
        if key is None:
            raise ValueError(f'not a tgext.asyncjob job id: {entryid!r}')
        return key

    def remove(self, entryid: str) -> None:
        """Forget a job."""
        key = self._key(entryid)
        if key is not None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(key)
            pipe.zrem(self._recent, entryid)
            self._execute(pipe)

    def check_data(self, value: int, message: Any) -> str:
        """Encode progress, raising ``TypeError``/``ValueError`` for what Redis cannot hold."""
        check_progress_value(value)
        encoded = _dumps(message, 'progress data')
        if len(encoded.encode()) > self.max_data_bytes:
            raise ValueError(f'progress data is {len(encoded.encode())} bytes once encoded as '
                             f'JSON; RedisProgressTracker accepts at most {self.max_data_bytes}')
        return encoded

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Store progress (one round trip); the key's expiry is refreshed."""
        encoded = self.check_data(value, message)
        key = self._require_key(entryid)
        self._write(key, {'state': 'running', 'progress': str(value), 'data': encoded},
                    self.timeout)

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge fields into a live job's record."""
        self._write_later(self._require_key(entryid), self._encode(fields), self.timeout)

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """Store the final state for ``retention`` seconds; drop index entries past it."""
        cutoff = time.time() - self.retention
        self._write_later(self._require_key(entryid), self._encode(fields), self.retention,
                          lambda pipe: pipe.zremrangebyscore(self._recent, '-inf', cutoff))

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
            elif name.endswith('_at'):
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
