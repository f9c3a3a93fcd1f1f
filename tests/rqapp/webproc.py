"""A short-lived web process: ``python -m rqapp.webproc app.ini N [PARAMS]``.

Loads the application from the .ini (PasteDeploy), queues ``N`` ``write_row`` jobs
(or what ``PARAMS``, a JSON object of extra ``/queue`` parameters, says) through
WebTest requests, prints their ids as one JSON line, then kills itself
with SIGKILL (no atexit, no clean shutdown): what it queued must survive it.
"""

import json
import os
import signal
import sys

import webtest
from paste.deploy import loadapp


def main(ini, count, params=None):
    app = webtest.TestApp(loadapp("config:%s" % os.path.abspath(ini)))
    ids = [app.get("/queue", params={"name": "durable-%d" % i, **(params or {})}).json["jobid"]
           for i in range(count)]
    sys.stdout.write(json.dumps(ids) + "\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
