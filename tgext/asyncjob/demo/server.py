"""A threaded stdlib WSGI server for the demo (no extra dependency to run it)."""
from __future__ import annotations

import socketserver
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request: the progress page polls while other
    requests are served. Daemon threads, so a hung client never blocks shutdown."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """A request handler that does not log each request (for tests)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (wsgiref's name)
        pass


def make_demo_server(app: Any, host: str = '127.0.0.1', port: int = 8080,
                     quiet: bool = False) -> ThreadingWSGIServer:
    """A bound (not yet serving) threaded server for ``app``; ``port`` 0 picks a free one."""
    handler = QuietHandler if quiet else WSGIRequestHandler
    return make_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=handler)


def serve_in_thread(server: ThreadingWSGIServer) -> threading.Thread:
    """Serve ``server`` on a daemon thread; stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.1},
                              name='asyncjob-demo-server', daemon=True)
    thread.start()
    return thread
