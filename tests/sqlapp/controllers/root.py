"""Main controller of sqlapp: queue jobs and read their status over HTTP."""

from tg import TGController, expose

import tgext.asyncjob as aj
from sqlapp import jobs


class RootController(TGController):
    """Endpoints the worker-process tests drive with real HTTP requests."""

    @expose("json")
    def index(self):
        return dict(ok=True, pid=__import__("os").getpid())

    @expose("json")
    def queue(self, job="count", key="k", delay=None, retries=None, backoff="1",
              concurrency_key=None, concurrency_limit=None, time_limit=None, **kw):
        """Queue ``sqlapp.jobs.<job>(key, **kw)`` in the request's transaction, after
        ``delay`` seconds if given, with ``retries`` retries (``backoff`` seconds), a
        concurrency limit and a time limit if given."""
        retry = None
        if retries is not None:
            retry = aj.Retry(max_retries=int(retries), backoff=float(backoff), jitter=False)
        options = aj.asyncjob_options(
            delay=None if delay is None else float(delay), retry=retry,
            concurrency_key=concurrency_key,
            concurrency_limit=None if concurrency_limit is None else int(concurrency_limit),
            time_limit=None if time_limit is None else float(time_limit))
        return dict(jobid=options.perform(getattr(jobs, job), key, **kw))

    @expose("json")
    def queue_many(self, prefix="k", start="0", count="1"):
        """Queue ``count(prefix-N)`` for N in ``start .. start+count-1``, in one request."""
        first = int(start)
        return dict(jobids=[aj.asyncjob_perform(jobs.count, "%s-%d" % (prefix, n))
                            for n in range(first, first + int(count))])

    @expose("json")
    def queue_then_fail(self, key="aborted"):
        """Queue ``count(key)``, then fail the request: its transaction aborts."""
        aj.asyncjob_perform(jobs.count, key)
        raise RuntimeError("the request fails after queueing on purpose")

    @expose("json")
    def status(self, jobid):
        """``asyncjob_get_status(jobid)`` as a dict."""
        return aj.asyncjob_get_status(jobid).to_dict()
