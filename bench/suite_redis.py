"""Redis round trips per enqueue, per job end to end and per progress call.

The Redis tracker of the installed tgext.asyncjob (0.3.1's for the original), one
worker thread, counted twice: client side (every request written to a socket by
redis-py, a pipeline being one) and server side on the private redis-server that
only this process talks to (INFO stats, requests read).  See harness.redis_counts.
"""


def run(cfg):
    import harness
    import adapters
    kind = "original-redis" if cfg["row"] == "0.3.1" else "project-redis"
    a = adapters.make(kind, cfg["redis"])
    sync = harness.ThreadSync()
    a.start(1)
    for _ in range(200):  # warm-up: connections, first calls
        a.enqueue(sync.noop)
    harness._drain(a, sync)
    m = harness.redis_counts(a, sync, cfg["redis"], m=cfg.get("redis_calls", 200))
    a.stop()
    return m, {"adapter": kind}
