"""Jobs for tests/test_unique_jobs.py and tests/test_priorities.py, and unique jobs
from another process: ``python uniqueproc.py KIND URL KEY N GO GATE OUT``
performs ``hold(GATE)`` with ``unique_key=KEY`` from N threads at once, as soon as the
file GO exists, and writes the ids it got to OUT (JSON). KIND ``sqlalchemy``: a
backend on the database URL that runs nothing here; ``redis``: the threads backend
with the Redis tracker at URL, whose jobs run here (the process stays until GATE
exists, so a job it holds can end)."""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from services import wait_for

TIMEOUT = 60


def hold(gate):
    """Waits for the file ``gate``; each run appends a line to ``gate.runs``."""
    with open(gate + '.runs', 'a') as f:
        f.write('ran\n')
    wait_for(lambda: os.path.exists(gate), timeout=TIMEOUT, message='gate never opened')
    return 'done'


def record(label, path):
    """Appends ``label`` to the file ``path``: the order jobs ran in."""
    with open(path, 'a') as f:
        f.write(label + '\n')
    return label


def main(kind, url, key, count, go, gate, out):
    from tgext.asyncjob import JobOptions, JobQueue
    from uniqueproc import hold as job  # by module name, as a worker imports it
    if kind == 'sqlalchemy':
        q = JobQueue(backend='sqlalchemy', backend_options={'url': url, 'in_process': False})
    else:
        from tgext.asyncjob.trackers.redisdb import RedisProgressTracker
        q = JobQueue(RedisProgressTracker(url=url), workers=2)
        q.backend.start()
    options = JobOptions(unique_key=key)
    wait_for(lambda: os.path.exists(go), timeout=TIMEOUT, message='never told to go')
    with ThreadPoolExecutor(int(count)) as pool:
        ids = list(pool.map(lambda _: q.perform(job, (gate,), options=options),
                            range(int(count))))
    with open(out + '.tmp', 'w') as f:
        json.dump(ids, f)
    os.rename(out + '.tmp', out)
    wait_for(lambda: os.path.exists(gate), timeout=TIMEOUT, message='gate never opened')
    q.stop(TIMEOUT)


if __name__ == '__main__':
    main(*sys.argv[1:])
