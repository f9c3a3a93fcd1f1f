"""The jobs dashboard's endpoints, mixed into
:class:`~tgext.asyncjob.web.AsyncJobController`:

* ``jobs`` (``jobs.json``): jobs newest first, filtered by ``state`` and ``name`` (the
  callable), ``offset``/``limit`` pages, counts per state;
* ``job/<id>`` (``job/<id>.json``): one job in full, arguments only where
  ``asyncjob.show_arguments`` allows;
* ``cancel/<id>``, ``retry/<id>``, ``delete/<id>`` (and ``.json``): POST only (else
  405), CSRF-checked (:mod:`.webcsrf`), then 303 back to the page they came from with a
  notice, or, as JSON, the outcome.

Everything here is refused (403) unless ``asyncjob.jobs_access`` allows. The jobs
themselves are listed, counted, retried and deleted by the public operations of
:mod:`tgext.asyncjob`; this module only speaks HTTP.
"""
from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import tg
from markupsafe import Markup
from tg import expose

from . import jsonsafe, webcsrf
from .errors import (JobNotFound, JobStateError, NoWorkerError, NotRetryable,
                     TrackerUnavailable)
from .job import JobState, JobStatus, is_job_id
from .webaccess import arguments_allowed, jobs_page_allowed, tracebacks_allowed
from .webdashboard import Listing, dashboard, detail, notice_html
from .webhttp import mount_url, not_found, respond, strip_json
from .webview import PAGE, status_body

log = logging.getLogger('tgext.asyncjob')

__all__ = ['JobsPages', 'LIMIT_MAX', 'LIMIT_DEFAULT']

#: Jobs per page: by default, and at most (``?limit=``).
LIMIT_DEFAULT, LIMIT_MAX = 50, 500
_NAME_MAX = 300


class _Refused(Exception):
    """An answer other than the page: ``code`` and the message to show."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _as_json() -> bool:
    return bool(tg.request.response_type == 'application/json')


def _error(base: str, code: int, message: str, title: str = 'Jobs') -> bytes:
    if _as_json():
        return respond(jsonsafe.dumps({'error': message}), 'application/json', code)
    body = Markup('<p class="asyncjob-error" role="alert">{}</p>').format(message)
    return respond(str(PAGE.format(title=title, base=base, body=body, nav='')), 'text/html',
                   code)


def _allowed() -> None:
    if not jobs_page_allowed():
        raise _Refused(403, 'The jobs pages are not open here. Set asyncjob.jobs_access '
                            'to open them.')


def _count(value: Any, name: str, default: int, minimum: int) -> int:
    if value in (None, ''):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise _Refused(400, f'{name} must be a whole number, got {value!r}') from None
    if number < minimum:
        raise _Refused(400, f'{name} must be at least {minimum}, got {number}')
    return number


def _filters(params: dict[str, Any]) -> tuple[str | None, str | None, int, int]:
    state = str(params.get('state') or '') or None  # checked by asyncjob_jobs()
    name = str(params.get('name') or '').strip() or None
    if name is not None and len(name) > _NAME_MAX:
        raise _Refused(400, f'name is longer than {_NAME_MAX} characters')
    offset = _count(params.get('offset'), 'offset', 0, 0)
    limit = min(_count(params.get('limit'), 'limit', LIMIT_DEFAULT, 1), LIMIT_MAX)
    return state, name, offset, limit


def _gone() -> _Refused:
    return _Refused(404, 'No such job (it may have expired or been deleted).')


def _unavailable(exc: Exception) -> _Refused:
    return _Refused(503, f'Job list unavailable: {exc}')


def _listing(state: str | None, name: str | None, offset: int, limit: int) -> Listing:
    from . import asyncjob_counts, asyncjob_jobs
    try:
        # One more than shown: whether there is an older page, without a count.
        jobs = asyncjob_jobs(state=state, name=name, offset=offset, limit=limit + 1)
        counts = asyncjob_counts()
    except NotImplementedError as exc:  # OperationUnsupported: a 0.3-style tracker
        raise _Refused(501, str(exc)) from None
    except (TrackerUnavailable, NoWorkerError) as exc:
        raise _unavailable(exc) from None
    except ValueError as exc:  # an unknown state
        raise _Refused(400, str(exc)) from None
    return Listing(jobs[:limit], counts, state, name, offset, limit, len(jobs) > limit)


def _token(base: str) -> str:
    return webcsrf.form_token(tg.request, tg.response, tg.config, base or '/')


def _notice(base: str, params: dict[str, Any]) -> Markup:
    jobid, new = params.get('job', ''), params.get('new', '')
    if not is_job_id(jobid) or (new and not is_job_id(new)):
        return Markup('')
    return notice_html(str(params.get('notice', '')), jobid, new, base)


# -- actions ----------------------------------------------------------------------------

def _cancel(jobid: str, status: JobStatus) -> tuple[str, dict[str, Any]]:
    from . import asyncjob_cancel, asyncjob_get_status
    if not asyncjob_cancel(jobid):
        return 'not_cancelled', {}
    # Read again: the job may have started between the page's read and the cancel.
    running = asyncjob_get_status(jobid).state is JobState.RUNNING
    return ('cancel_requested' if running else 'cancelled'), {}


def _retry(jobid: str, status: JobStatus) -> tuple[str, dict[str, Any]]:
    from . import asyncjob_retry
    try:
        return 'retried', {'new': asyncjob_retry(jobid)}
    except JobStateError:
        return 'not_retried', {}
    except NotRetryable as exc:
        raise _Refused(409, f'This job cannot be retried: {exc}') from None


def _delete(jobid: str, status: JobStatus) -> tuple[str, dict[str, Any]]:
    from . import asyncjob_delete
    try:
        asyncjob_delete(jobid)
    except JobStateError:
        return 'not_deleted', {}
    return 'deleted', {}


_ACTIONS = {'cancel': _cancel, 'retry': _retry, 'delete': _delete}
#: Outcomes that did what was asked (others answer 409 as JSON).
_DONE = frozenset({'cancelled', 'cancel_requested', 'retried', 'deleted'})


def _back(base: str, given: Any, jobid: str, outcome: str) -> tuple[str, str]:
    """Where an action's redirect goes: the dashboard page it was posted from if
    ``given`` is one (a path of ours, never another site), else the job's page; the
    list once the job is deleted."""
    parts = urllib.parse.urlsplit(str(given or ''))
    page = parts.path[len(base):] if parts.path.startswith(base) else ''
    # Exactly the list or a job's page: nothing a browser would resolve elsewhere.
    ours = (not parts.scheme and not parts.netloc
            and (page == '/jobs' or (page.startswith('/job/') and is_job_id(page[5:]))))
    path, query = (parts.path, parts.query) if ours else (f'{base}/job/{jobid}', '')
    if outcome == 'deleted' and path != f'{base}/jobs':
        path, query = f'{base}/jobs', ''
    return path, query


def _redirect(base: str, given: Any, jobid: str, outcome: str, extra: dict[str, Any]) -> bytes:
    path, query = _back(base, given, jobid, outcome)
    params = [(k, v) for k, v in urllib.parse.parse_qsl(query)
              if k not in ('notice', 'job', 'new')]
    params += [('notice', outcome), ('job', jobid)] + [(k, v) for k, v in extra.items()]
    tg.response.headers['Location'] = f'{path}?{urllib.parse.urlencode(params)}'
    return respond('', 'text/plain', 303)


class JobsPages:
    """The dashboard's endpoints (see the module's docstring)."""

    @expose()
    def jobs(self, *rest: str, **params: Any) -> bytes:
        """``jobs`` (HTML) or ``jobs.json``: one page of jobs, newest first."""
        base = mount_url()
        if rest or base is None:
            return not_found('page')
        try:
            _allowed()
            state, name, offset, limit = _filters(params)
            listing = _listing(state, name, offset, limit)
        except _Refused as refused:
            return _error(base, refused.code, refused.message)
        details = tracebacks_allowed()
        token = _token(base)
        if _as_json():
            more = listing.offset + listing.limit if listing.has_more else None
            return respond(jsonsafe.dumps({
                'jobs': [status_body(status, details, traceback=False)
                         for status in listing.jobs],
                'counts': dict(listing.counts), 'offset': offset, 'limit': limit,
                'next_offset': more, 'csrf_token': token}), 'application/json')
        back = f'{base}/jobs{listing.query()}'
        body = dashboard(base, listing, details, token, back, _notice(base, params))
        return respond(str(PAGE.format(title='Jobs', base=base, nav='', body=body)),
                       'text/html')

    @expose()
    def job(self, jobid: str = '', *rest: str, **params: Any) -> bytes:
        """``job/<id>`` (``.json``): one job in full, with its actions."""
        from . import asyncjob_get_status
        base = mount_url()
        jobid = strip_json(jobid)
        if rest or base is None or not is_job_id(jobid):
            return not_found('job')
        try:
            _allowed()
            try:
                status = asyncjob_get_status(jobid)
            except (TrackerUnavailable, NoWorkerError) as exc:
                raise _unavailable(exc) from None
            if status.state is JobState.NOT_FOUND:
                raise _gone()
        except _Refused as refused:
            return _error(base, refused.code, refused.message, 'Job')
        details, arguments = tracebacks_allowed(), arguments_allowed()
        token = _token(base)
        if _as_json():
            body = status_body(status, details, arguments=arguments)
            body['csrf_token'] = token
            return respond(jsonsafe.dumps(body), 'application/json')
        page = detail(base, status, details, arguments, token, f'{base}/job/{jobid}',
                      _notice(base, params))
        title = f'Job {jobid[:12]}'
        return respond(str(PAGE.format(title=title, base=base, nav='', body=page)),
                       'text/html')

    def _act(self, action: str, jobid: str, rest: tuple[str, ...],
             params: dict[str, Any]) -> bytes:
        base = mount_url()
        if tg.request.method != 'POST':
            tg.response.headers['Allow'] = 'POST'
            return respond(f'{action} takes POST only', 'text/plain', 405)
        jobid = strip_json(jobid)
        if rest or base is None or not is_job_id(jobid):
            return not_found('job')
        from . import asyncjob_get_status
        try:
            _allowed()
            reason = webcsrf.check_post(tg.request, tg.config)
            if reason is not None:
                raise _Refused(403, f'Refused: {reason}.')
            try:
                status = asyncjob_get_status(jobid)
                if status.state is JobState.NOT_FOUND:
                    raise _gone()
                outcome, extra = _ACTIONS[action](jobid, status)
            except JobNotFound:
                raise _gone() from None
            except NotImplementedError as exc:  # OperationUnsupported: a 0.3-style tracker
                raise _Refused(501, str(exc)) from None
            except (TrackerUnavailable, NoWorkerError) as exc:
                raise _Refused(503, f'The job could not be reached: {exc}') from None
        except _Refused as refused:
            return _error(base, refused.code, refused.message, 'Job')
        log.info('tgext.asyncjob: %s of job %s from the jobs page: %s', action, jobid, outcome)
        if _as_json():
            body = {'id': jobid, 'action': action, 'outcome': outcome,
                    'ok': outcome in _DONE, **extra}
            return respond(jsonsafe.dumps(body), 'application/json',
                           200 if outcome in _DONE else 409)
        return _redirect(base, params.get('next'), jobid, outcome, extra)

    @expose()
    def cancel(self, jobid: str = '', *rest: str, **params: Any) -> bytes:
        """POST ``cancel/<id>``: cancel a queued job, ask a running one to stop."""
        return self._act('cancel', jobid, rest, params)

    @expose()
    def retry(self, jobid: str = '', *rest: str, **params: Any) -> bytes:
        """POST ``retry/<id>``: queue a failed job again, as a new job linked to it."""
        return self._act('retry', jobid, rest, params)

    @expose()
    def delete(self, jobid: str = '', *rest: str, **params: Any) -> bytes:
        """POST ``delete/<id>``: forget a finished job."""
        return self._act('delete', jobid, rest, params)
