"""Keeps job records in Redis, so every process of an application sees them.

Each job is one hash, ``<prefix>job:<id>``, refreshed to expire on every write; a
sorted set ``<prefix>recent`` indexes jobs by enqueue time for listing, and one sorted
set per state, ``<prefix>state:<state>``, the jobs in that state (kept by the same
scripts that change a record's state), so listing a state pages through that set and
counting is one ``ZCARD`` per state. Index entries whose record expired are dropped by
the listing that meets them. Every call is one round trip (commands are pipelined). Ids that are not ours are never looked up,
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

from .. import strictjson
from ..errors import TrackerUnavailable
from ..job import is_job_id
from .base import (FINISHED_STATES, RESULT_BUDGET, STATES, ProgressTracker,
                   check_annotations, check_page, check_progress_value, clip_error,
                   clip_text, note_truncation, progress_from_record)
from .redisurl import check_redis_url
from .writebehind import WriteBehind

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

__all__ = ['RedisProgressTracker', 'check_redis_url']

_JSON_FIELDS = ('data', 'result', 'error', 'name', 'detail', 'args', 'kwargs')

# HSET + EXPIRE unless the record is finished, moving the job between the state index
# sets when its state changes. KEYS[1]: the job's hash, KEYS[2]: the recent index;
# ARGV[1]: the ttl, ARGV[2]: the state sets' prefix, ARGV[3]: the job's id; then
# field, value pairs. Returns 1 if written.
_WRITE_UNLESS_FINISHED = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
if #ARGV > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  for i = 4, #ARGV, 2 do
    if ARGV[i] == 'state' and ARGV[i + 1] ~= state then
      local score = redis.call('ZSCORE', KEYS[2], ARGV[3])
      if score then
        if state then redis.call('ZREM', ARGV[2] .. state, ARGV[3]) end
        redis.call('ZADD', ARGV[2] .. ARGV[i + 1], score, ARGV[3])
      end
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Delete a finished record and its index entries. KEYS[1]: the hash, KEYS[2]: the
# recent index; ARGV[1]: the state sets' prefix, ARGV[2]: the id. Returns 1 if deleted.
_DELETE_IF_FINISHED = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', ARGV[1] .. state, ARGV[2])
return 1
"""

# HSET on an existing record only, whatever its state, its expiry untouched.
_ANNOTATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# The ids of a page of an index, newest first, of records that exist and match.
# KEYS[1]: the index; ARGV: the job keys' prefix, offset, limit, the name as stored
# (JSON) or '', the state or ''. Walks the index: cost grows with the records passed.
_WALK = """
local prefix, offset, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local name, state = ARGV[4], ARGV[5]
local out, skipped, pos, chunk = {}, 0, 0, 500
while #out < limit do
  local ids = redis.call('ZREVRANGE', KEYS[1], pos, pos + chunk - 1)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local fields = redis.call('HMGET', prefix .. id, 'name', 'state')
    if fields[2] and (name == '' or fields[1] == name)
        and (state == '' or fields[2] == state) then
      if skipped < offset then skipped = skipped + 1
      else
        out[#out + 1] = id
        if #out >= limit then break end
      end
    end
  end
  pos = pos + chunk
end
return out
"""

#: Rows looked at per round trip by :meth:`RedisProgressTracker.purge_finished`.
PURGE_BATCH = 500

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
        self._states = f'{prefix}state:'
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

    def _guarded(self, entryid: str, mapping: dict[str, str], ttl: int) -> Write:
        key = self._require_key(entryid)
        args: list[str | int] = [ttl, self._states, entryid]
        for name, value in mapping.items():
            args += [name, value]
        recent = self._recent
        return lambda pipe: pipe.eval(_WRITE_UNLESS_FINISHED, 2, key, recent, *args)

    def _indexes(self) -> list[str]:
        return [self._recent] + [self._states + state for state in STATES]

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
        if 'args' in fields or 'kwargs' in fields:
            self._encode_arguments(fields, out)
        for k, v in fields.items():
            if v is None or k in out or k in ('args', 'kwargs'):
                continue
            out[k] = (_dumps(v, k) if k in _JSON_FIELDS else repr(v) if isinstance(v, float)
                      else str(v))
        return out

    def _encode_arguments(self, fields: dict[str, Any], out: dict[str, str]) -> None:
        """Arguments are kept (for retries and the jobs page) only when they are JSON
        that reads back as they are and fit ``max_data_bytes``; else neither is kept."""
        try:
            args = strictjson.dumps(list(fields.get('args') or ()))
            kwargs = strictjson.dumps(dict(fields.get('kwargs') or {}))
        except (TypeError, ValueError, RecursionError):
            args = kwargs = ''
        if args and len(args.encode()) + len(kwargs.encode()) <= self.max_data_bytes:
            out.update(args=args, kwargs=kwargs)

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
        by_state = self._states + str(record.get('state', 'queued'))

        def write(pipe: Any) -> None:
            # redis-py types the mapping with an invariant key, which no dict[str, str]
            # matches; str keys and values are what it accepts.
            pipe.hset(key, mapping=cast('Mapping[FieldT, EncodableT]', mapping))
            pipe.expire(key, ttl)
            pipe.zadd(recent, {entryid: score})
            pipe.zadd(by_state, {entryid: score})
        self._send_batch([write])

    def remove(self, entryid: str) -> None:
        """Forget a job (after its writes still buffered)."""
        key = self._key(entryid)
        if key is not None:
            indexes = self._indexes()

            def write(pipe: Any) -> None:
                pipe.delete(key)
                for index in indexes:
                    pipe.zrem(index, entryid)
            self._send_in_order(write)

    def set_progress(self, entryid: str, value: int, message: Any) -> None:
        """Store progress (one round trip, after the job's buffered writes); the key's
        expiry is refreshed. Ignored once the job is finished."""
        encoded = self.check_data(value, message)
        self._send_in_order(self._guarded(
            entryid, {'state': 'running', 'progress': str(value), 'data': encoded},
            self.timeout))

    def update(self, entryid: str, fields: dict[str, Any]) -> None:
        """Merge fields into a live job's record. Ignored once the job is finished."""
        self._send_later(self._guarded(entryid, self._encode(fields), self.timeout))

    def finish(self, entryid: str, fields: dict[str, Any]) -> None:
        """Store the final state for ``retention`` seconds, unless the job already has
        one; drop index entries past the retention."""
        write = self._guarded(entryid, self._encode(fields), self.retention)
        indexes, cutoff = self._indexes(), time.time() - self.retention

        def finish_write(pipe: Any) -> None:
            write(pipe)
            for index in indexes:
                pipe.zremrangebyscore(index, '-inf', cutoff)
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

    # -- operating on many records ----------------------------------------------------

    def _fetch(self, ids: list[str]) -> list[dict[bytes, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for entryid in ids:
            pipe.hgetall(f'{self.prefix}job:{entryid}')
        return list(self._execute(pipe))

    def query(self, state: str | None = None, name: str | None = None, offset: int = 0,
              limit: int = 50) -> list[tuple[str, dict[str, Any]]]:
        """A page of the index (all jobs, or those in ``state``), newest first: a range
        of the sorted set, so any page costs the same. Filtered by ``name``, the index
        is walked in Redis instead (one script; its cost grows with the offset)."""
        check_page(state, name, offset, limit)
        index = self._recent if state is None else self._states + state
        if name is not None:
            ids = [i.decode() for i in self._execute(lambda: self.redis.eval(
                _WALK, 1, index, f'{self.prefix}job:', offset, limit,
                json.dumps(name, ensure_ascii=False), state or ''))]
            return [(i, self._decode(raw)) for i, raw in zip(ids, self._fetch(ids)) if raw]
        for _ in range(10):  # each round drops the stale entries it met
            ids = [i.decode() for i in self._execute(
                lambda: self.redis.zrevrange(index, offset, offset + limit - 1))]
            page, stale = [], []
            for entryid, raw in zip(ids, self._fetch(ids)):
                record = self._decode(raw) if raw else None
                if record is None or (state is not None and record.get('state') != state):
                    stale.append(entryid)  # expired, or moved by a write from an old version
                else:
                    page.append((entryid, record))
            if not stale:
                break
            self._execute(lambda: self.redis.zrem(index, *stale))
        return page

    def counts(self) -> dict[str, int]:
        """Index entries per state, in one round trip. An entry whose record expired
        unfinished (its process vanished) counts until a listing of it drops it."""
        pipe = self.redis.pipeline(transaction=False)
        for state in STATES:
            pipe.zcard(self._states + state)
        return dict(zip(STATES, (int(n) for n in self._execute(pipe))))

    def delete_finished(self, entryid: str) -> bool:
        """Delete a finished record (after the writes still buffered); False for a
        live or unknown job."""
        key = self._key(entryid)
        if key is None:
            return False
        self.flush()
        return bool(self._execute(lambda: self.redis.eval(
            _DELETE_IF_FINISHED, 2, key, self._recent, self._states, entryid)))

    def purge_finished(self, older_than: float) -> int:
        """Delete the records of jobs finished more than ``older_than`` seconds ago.
        Candidates come from the finished states' sets (a job finished before the
        cutoff was queued before it), read and deleted in batches."""
        self.flush()
        cutoff, purged = time.time() - older_than, 0
        for state in sorted(FINISHED_STATES):
            index = self._states + state
            ids = [i.decode() for i in self._execute(
                lambda: self.redis.zrangebyscore(index, '-inf', cutoff))]
            for start in range(0, len(ids), PURGE_BATCH):
                batch = ids[start:start + PURGE_BATCH]
                pipe = self.redis.pipeline(transaction=False)
                for entryid in batch:
                    pipe.hmget(f'{self.prefix}job:{entryid}', 'state', 'finished_at')
                ended = self._execute(pipe)
                # No state: the record expired, only its index entry is left. No end
                # time: not known to be old, kept (as by every store).
                old = [i for i, (st, at) in zip(batch, ended)
                       if st is None or (at is not None and float(at) < cutoff)]
                if not old:
                    continue
                pipe = self.redis.pipeline(transaction=False)
                pipe.delete(*(f'{self.prefix}job:{i}' for i in old))
                pipe.zrem(self._recent, *old)
                pipe.zrem(index, *old)
                deleted = self._execute(pipe)[0]
                purged += int(deleted)
        return purged

    def annotate(self, entryid: str, fields: dict[str, Any]) -> None:
        """Write link fields on an existing record, finished or not (after the job's
        buffered writes); its expiry is left as it is."""
        check_annotations(fields)
        key = self._require_key(entryid)
        args = [str(part) for item in fields.items() for part in item]
        self._send_in_order(lambda pipe: pipe.eval(_ANNOTATE, 1, key, *args))
