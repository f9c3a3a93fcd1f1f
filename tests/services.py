"""Access to the real services the test suite runs against (Redis, PostgreSQL).

The project rules forbid fakes: tests talk to a real Redis and a real
PostgreSQL.  Addresses come from environment variables so CI can point the
suite elsewhere:

* ``ASYNCJOB_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``)
* ``ASYNCJOB_TEST_POSTGRES_URL``
  (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)

When Redis is unreachable a private ``redis-server`` is started instead
(:class:`RedisServer`); when that is impossible too, or PostgreSQL is
unreachable, :class:`ServiceUnavailable` is raised: the suite must fail
loudly, never skip.

Also home of :func:`wait_for`, the only sanctioned way for tests to wait.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis
import sqlalchemy

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# Seconds allowed for a service to answer a connectivity probe.
PROBE_TIMEOUT = 3


class ServiceUnavailable(RuntimeError):
    """A service the tests need can neither be reached nor started."""


def wait_for(predicate, timeout=10, interval=0.01, message="condition not met"):
    """Poll ``predicate()`` until it returns a truthy value; return that value.

    Raises :class:`AssertionError` carrying ``message`` (a string, or a
    callable returning one, evaluated only on failure so it can describe the
    state at the deadline) when ``timeout`` seconds pass first.  The
    predicate is always evaluated once more at the deadline so a slow
    scheduler cannot turn a success into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    result = predicate()
    if result:
        return result
    text = message() if callable(message) else message
    raise AssertionError("%s (waited %ss)" % (text, timeout))


def free_port(host="127.0.0.1"):
    """Return a TCP port on ``host`` that was free a moment ago.

    The port is only probably free (another process may grab it), so
    callers that bind it should be ready to retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def redis_ping(url, timeout=PROBE_TIMEOUT):
    """Return True when the Redis server at ``url`` answers PING."""
    client = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_server_binary():
    """Path of the ``redis-server`` executable, or None when not installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    return None


class RedisServer:
    """A private, throw-away ``redis-server`` process.

    Runs in its own temporary directory with persistence disabled
    (``--save "" --appendonly no``) and bound to 127.0.0.1.  It can be
    stopped and started again on the same port, which lets tests simulate a
    Redis outage and recovery::

        server = RedisServer().start()
        ... server.url ...
        server.stop()
        server.start()   # same port, empty dataset
        server.stop()

    Also usable as a context manager.  ``port=None`` picks a free port.
    """

    # Seconds allowed for the server to accept connections / to exit.
    START_TIMEOUT = 10
    STOP_TIMEOUT = 10

    def __init__(self, port=None, host="127.0.0.1"):
        self.host = host
        self.port = port
        self._auto_port = port is None
        self._process = None
        self._dir = None

    @property
    def url(self):
        """``redis://host:port/0`` of this server (port known once started)."""
        if self.port is None:
            raise RuntimeError("RedisServer has no port until started")
        return "redis://%s:%d/0" % (self.host, self.port)

    @property
    def running(self):
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self):
        """Start the server and wait until it answers PING; return self."""
        if self.running:
            return self
        binary = redis_server_binary()
        if binary is None:
            raise ServiceUnavailable("redis-server executable not found")

        # An automatically chosen port can be stolen between free_port() and
        # the server binding it, so retry with a new one in that case.  Once
        # a server ran, restarts keep its port (clients hold the URL).
        attempts = 3 if self._auto_port else 1
        last_error = None
        for _ in range(attempts):
            if self._auto_port:
                self.port = free_port(self.host)
            try:
                self._spawn(binary)
            except ServiceUnavailable as exc:
                last_error = exc
            else:
                self._auto_port = False
                return self
        raise last_error

    def _spawn(self, binary):
        self._dir = tempfile.mkdtemp(prefix="asyncjob-redis-")
        logfile = os.path.join(self._dir, "redis.log")
        self._process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", self._dir,
                "--logfile", logfile,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: self._process.poll() is not None or redis_ping(self.url, 0.5),
                timeout=self.START_TIMEOUT,
                interval=0.02,
                message="private redis-server on port %d did not start" % self.port,
            )
        except AssertionError as exc:
            log = self._read_log()
            self._cleanup()
            raise ServiceUnavailable("%s\n%s" % (exc, log)) from None
        if self._process.poll() is not None:
            log = self._read_log()
            self._cleanup()
            raise ServiceUnavailable(
                "private redis-server on port %d exited at startup:\n%s"
                % (self.port, log)
            )

    def stop(self):
        """Terminate the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(self.STOP_TIMEOUT)
        self._cleanup()

    def _read_log(self):
        try:
            with open(os.path.join(self._dir, "redis.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no redis log)"

    def _cleanup(self):
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(self.STOP_TIMEOUT)
        self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def resolve_redis():
    """Find a Redis for the test session.

    Returns ``(url, server)``: ``server`` is the private :class:`RedisServer`
    that was started (the caller must stop it) or None when the configured
    Redis answered.  Raises :class:`ServiceUnavailable` when neither works.
    """
    url = os.environ.get("ASYNCJOB_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if redis_ping(url):
        return url, None
    if redis_server_binary() is None:
        raise ServiceUnavailable(
            "Redis is not reachable at %s (set ASYNCJOB_TEST_REDIS_URL) and no "
            "redis-server executable is available to start a private one" % url
        )
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(
            "Redis is not reachable at %s and starting a private redis-server "
            "failed: %s" % (url, exc)
        ) from None
    return server.url, server


def postgres_url():
    """The PostgreSQL URL from the environment, checked to accept connections.

    Raises :class:`ServiceUnavailable` with the driver error when it does not.
    """
    url = os.environ.get("ASYNCJOB_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    check_postgres(url)
    return url


def check_postgres(url):
    """Raise :class:`ServiceUnavailable` unless ``SELECT 1`` works at ``url``."""
    engine = sqlalchemy.create_engine(
        url,
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"connect_timeout": PROBE_TIMEOUT},
    )
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable(
            "PostgreSQL is not reachable at %s (set ASYNCJOB_TEST_POSTGRES_URL): %s"
            % (engine.url.render_as_string(hide_password=True), exc)
        ) from None
    finally:
        engine.dispose()


DEFAULT_MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/"


def mariadb_server_url():
    """The MariaDB/MySQL server URL (no database: tests make their own) from
    ``ASYNCJOB_TEST_MARIADB_URL``."""
    url = os.environ.get("ASYNCJOB_TEST_MARIADB_URL", DEFAULT_MARIADB_URL)
    return url if url.endswith("/") else url + "/"
