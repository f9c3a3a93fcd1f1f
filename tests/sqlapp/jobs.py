"""The jobs of sqlapp: module-level, importable by name, JSON arguments only.

Each run that completes writes one :class:`~sqlapp.model.JobRun` row in the job's
own transaction, so the rows count the runs that committed.
"""

import os
import threading
import time

from sqlapp.model import DBSession, JobRun

#: Seconds :func:`hold` blocks on its first run, waiting to be killed.
HOLD_SECONDS = 120


def count(key):
    """Write this run's row."""
    DBSession.add(JobRun(job_key=key, pid=os.getpid()))


def hold(key, marker):
    """First run: write the row (not committed yet), create the file ``marker`` holding
    this process's pid, then block until killed. Later runs (the marker exists): write
    the row and return."""
    count(key)
    if os.path.exists(marker):
        return
    DBSession.flush()  # the row is in the database, inside the job's open transaction
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)  # the test sees a complete file or none
    threading.Event().wait(HOLD_SECONDS)
    raise RuntimeError("hold(%s) was not killed" % key)


def flaky(key, marker):
    """First run: create the file ``marker`` and fail (a retryable ``ValueError``);
    later runs: write the row."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ValueError("first run of %s fails on purpose" % key)
    count(key)


def gate(key, started, gate, timeout=60):
    """Create the file ``started``, wait (at most ``timeout`` s) for the file ``gate``,
    then write the row."""
    open(started, "w").close()
    opened = threading.Event()
    for _ in range(int(timeout * 20)):
        if os.path.exists(gate):
            opened.set()
            break
        opened.wait(0.05)
    if not opened.is_set():
        raise RuntimeError("the gate %s was never opened" % gate)
    count(key)


def span(key, seconds="0.05"):
    """Record when this run started and ended: a row ``span <key> <start> <end>``."""
    start = time.time()
    threading.Event().wait(float(seconds))
    DBSession.add(JobRun(job_key="span %s %.6f %.6f" % (key, start, time.time()),
                         pid=os.getpid()))


def spin(key):
    """Write the row, then loop in Python forever: only a time limit ends it."""
    count(key)
    DBSession.flush()
    while True:
        pass
