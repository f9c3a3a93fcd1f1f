"""Root controller of the RQ sample app: queue jobs, read their status."""

import json

from tg import expose, request

import tgext.asyncjob as aj
from sampleapp.controllers.root import RootController
from rqapp import jobs


class RQRoot(RootController):
    """``RootController`` plus endpoints that queue the jobs of :mod:`rqapp.jobs`."""

    @expose("json")
    def queue(self, job="write_row", name="x", delay=None, time_limit=None, **kw):
        """Queue ``rqapp.jobs.<job>(name, **kw)``, ``delay`` seconds from now if given,
        with ``time_limit`` seconds if given; return ``{"jobid": ...}``."""
        options = aj.asyncjob_options(delay=None if delay is None else float(delay),
                                      time_limit=None if time_limit is None
                                      else float(time_limit))
        return dict(jobid=options.perform(getattr(jobs, job), name, **kw))

    @expose("json")
    def progress(self, jobid):
        """``asyncjob_get_progress(jobid)`` (a list, or null)."""
        progress = aj.asyncjob_get_progress(jobid)
        return dict(progress=list(progress) if progress is not None else None)

    @expose("json")
    def statuses(self):
        """POST a JSON list of job ids; get ``{"statuses": {id: status dict}}``."""
        ids = json.loads(request.body)
        return dict(statuses={i: aj.asyncjob_get_status(i).to_dict() for i in ids})

    @expose("json")
    def cancel(self, jobid):
        return dict(cancelled=aj.asyncjob_cancel(jobid))
