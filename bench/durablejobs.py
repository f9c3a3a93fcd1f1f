"""Jobs of the durable-backend benchmark, importable by name (``durablejobs:tick``)
by our sqlalchemy backend, procrastinate and the floor alike; they only touch
this process's counters, so the job itself costs next to nothing."""
import threading
import time

pc = time.perf_counter
_lock = threading.Lock()
count = 0
target = 0
all_done = threading.Event()
latencies = []
started = threading.Event()


def expect(n):
    """Arm the counter: ``all_done`` is set once ``tick`` has run n more times."""
    global count, target
    with _lock:
        count, target = 0, n
        all_done.clear()


def tick():
    global count
    with _lock:
        count += 1
        if count == target:
            all_done.set()


def stamp(t0):
    """Enqueue-to-start latency: ``t0`` is the caller's perf_counter at enqueue
    (CLOCK_MONOTONIC, the same clock in every thread of the process)."""
    latencies.append(pc() - t0)
    started.set()


def noop():
    pass
