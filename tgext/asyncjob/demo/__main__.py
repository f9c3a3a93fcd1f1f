"""``python -m tgext.asyncjob.demo``: serve the demo application on 127.0.0.1.

Stops cleanly on Ctrl-C or SIGTERM: the server closes, then the job queue drains.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any, cast


class _Stop(Exception):
    """Raised by the SIGTERM handler to leave serve_forever() like Ctrl-C does."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--host``, ``--port``, ``--db``, ``--redis``, ``--workers``."""
    parser = argparse.ArgumentParser(prog='python -m tgext.asyncjob.demo',
                                     description='Serve the tgext.asyncjob demo application.')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default 127.0.0.1: this machine only; '
                             'the demo runs in debug mode, do not expose it)')
    parser.add_argument('--port', type=int, default=8080, help='port (default 8080; 0: any free)')
    parser.add_argument('--db', default=None,
                        help='SQLAlchemy URL (default: a SQLite file in a temporary directory, '
                             'removed on exit)')
    parser.add_argument('--redis', default=None, metavar='URL',
                        help='keep job status in Redis at URL (default: in memory)')
    parser.add_argument('--workers', type=int, default=1, help='worker threads (default 1)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the demo, serve it until interrupted, then stop the queue. Returns 0."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    tmpdir = None
    db_url = args.db
    if db_url is None:
        tmpdir = tempfile.mkdtemp(prefix='asyncjob-demo-')
        db_url = 'sqlite:///' + os.path.join(tmpdir, 'demo.sqlite')
    tracker: Any = None
    if args.redis:
        from ..trackers.redisdb import RedisProgressTracker
        tracker = RedisProgressTracker(url=args.redis)

    from .app import build_demo
    from .server import make_demo_server
    demo = build_demo(db_url, tracker, workers=args.workers)
    server = make_demo_server(demo.wsgi_app, args.host, args.port)

    def on_term(signum: int, frame: Any) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    # Python leaves SIGINT ignored when the process started with it ignored (a shell
    # script's background job, a test runner run that way), and Ctrl-C would then do
    # nothing: the demo promises that Ctrl-C stops it, so it sets the handler itself.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Bound to an AF_INET/AF_INET6 address: getsockname() gives the host as a str.
    host, port = cast('tuple[str, int]', server.server_address[:2])
    print(f'tgext.asyncjob demo: serving on http://{host}:{port}/ (database {db_url}); '
          'Ctrl-C to stop', flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, _Stop):
        print('stopping...', flush=True)
    finally:
        server.server_close()
        unrun = demo.app_globals.asyncjob_queue.stop(5)
        if unrun:
            print(f'{len(unrun)} queued job(s) did not run', flush=True)
        demo.engine.dispose()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    print('stopped', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
