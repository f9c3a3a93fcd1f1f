"""Cost of asyncjob_perform as a share of a minimal TurboGears request.

A WebTest GET of a JSON controller that queues one no-op job (``/queue``) against
the same controller that does not (``/plain``), in the same app and process,
interleaved request by request so that drift hits both alike.  Between requests
the job has run and the worker is idle again (the job sets an event; then a short
sleep lets the worker finish its bookkeeping and block on its queue again), so
what is measured is what the request itself pays: the lookup, the job, the
tracker write, the hand-off and the woken worker taking the GIL while the
request still runs.

Two clocks per request:
* ``webtest``: the whole ``TestApp.get`` (what the issue asks for);
* ``body``: a bare WSGI call timed until the response body is complete, before
  the server calls ``close()`` (what a client waits for behind a real server):
  anything a library defers to ``close()`` drops out of this clock only.
"""
import gc
import io
import threading
import time
from statistics import mean, median

pc = time.perf_counter
DONE = threading.Event()


def job():
    DONE.set()


def _environ(path):
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "bench", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0), "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False}


def body_call(wsgi, path):
    """Seconds until the body of ``path`` is complete; close() runs after the clock."""
    status = []

    def start_response(s, headers, exc_info=None):
        status.append(s)

    t0 = pc()
    it = wsgi(_environ(path), start_response)
    b"".join(it)
    dt = pc() - t0
    close = getattr(it, "close", None)
    if close is not None:
        close()
    assert status[0].startswith("200"), status
    return dt


def measure(app, n, idle):
    """n interleaved pairs of requests per clock -> per-path lists of seconds."""
    wsgi = app.app
    out = {"webtest": {"plain": [], "queue": []}, "body": {"plain": [], "queue": []}}
    for clock in ("webtest", "body"):
        for i in range(n):
            for path in (("plain", "queue") if i % 2 else ("queue", "plain")):
                DONE.clear()
                if clock == "webtest":
                    t0 = pc()
                    app.get("/" + path)
                    dt = pc() - t0
                else:
                    dt = body_call(wsgi, "/" + path)
                if path == "queue":
                    if not DONE.wait(10):
                        raise RuntimeError("the job did not run")
                time.sleep(idle)  # the worker finishes its bookkeeping and waits again
                out[clock][path].append(dt)
    return out


def run(cfg):
    import logging
    logging.getLogger("tgext.asyncjob").setLevel(logging.ERROR)
    logging.getLogger("tg").setLevel(logging.ERROR)
    import tgapp
    variant = "floor" if cfg["row"] == "floor" else "asyncjob"
    app, perform, extras = tgapp.build(variant, job)
    app.lint = False
    n, idle = cfg["requests"], cfg.get("idle", 0.0005)
    measure(app, max(n // 10, min(50, n)), idle)  # warm-up: caches, thread-locals, first-call paths
    gc.collect()
    gc.freeze()
    raw = measure(app, n, idle)
    metrics = {}
    for clock, paths in raw.items():
        p, q = median(paths["plain"]), median(paths["queue"])
        metrics["%s_plain_us" % clock] = p * 1e6
        metrics["%s_queue_us" % clock] = q * 1e6
        metrics["%s_share" % clock] = (q - p) / p
        metrics["%s_share_mean" % clock] = (mean(paths["queue"]) - mean(paths["plain"])) / mean(paths["plain"])
    q = extras.get("queue")
    if q is not None and hasattr(q, "stop"):
        try:
            q.stop(5)
        except TypeError:
            pass
    return metrics, {"requests": n}
