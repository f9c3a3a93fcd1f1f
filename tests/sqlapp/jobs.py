"""The jobs of sqlapp: module-level, importable by name, JSON arguments only.

Each run that completes writes one :class:`~sqlapp.model.JobRun` row in the job's
own transaction, so the rows count the runs that committed.
"""

import os
import threading

from sqlapp.model import DBSession, JobRun

#: Seconds :func:`hold` blocks on its first run, waiting to be killed.
HOLD_SECONDS = 120


def count(key):
    """Write this run's row."""
    DBSession.add(JobRun(key=key, pid=os.getpid()))


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
