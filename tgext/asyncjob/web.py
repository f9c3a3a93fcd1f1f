"""Web pages for jobs: a JSON status endpoint, a progress page, and a list of jobs.

Mount :class:`AsyncJobController` in a root controller by hand::

    class RootController(TGController):
        asyncjob = AsyncJobController()

or let :func:`mount_from_config` do it for a plugged application (at ``/asyncjob``).
Endpoints, below the mount point:

* ``status/<id>.json``: the job's :class:`~tgext.asyncjob.job.JobStatus` as JSON;
* ``progress/<id>``: an HTML page with a progress bar that polls the JSON, and a link
  back to the application (``asyncjob.back_url``, else the referring page of the site);
* ``jobs``: recent jobs (``jobs.json`` for JSON), behind ``asyncjob.jobs_access``;
* ``static/asyncjob.js`` and ``static/asyncjob.css``: the page's script and style.

The HTML is built here from small escaped strings rather than templates, so the pages
work whatever template engines the application has configured.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import math
import re
import urllib.parse
from importlib import resources
from typing import Any, Callable, Mapping, TypeGuard

import tg
from markupsafe import Markup
from tg import TGController, expose
from tg.exceptions import HTTPNotModified
from tg.support.converters import asbool

from . import jsonsafe
from .errors import NoWorkerError, TrackerUnavailable
from .job import JobError, JobState, JobStatus

log = logging.getLogger('tgext.asyncjob')

__all__ = ['AsyncJobController', 'progress_snippet', 'percent_of', 'status_body', 'mount',
           'mount_from_config', 'check_access_rules', 'DEFAULT_MOUNT', 'HIDDEN_ERROR']

#: Where :func:`mount_from_config` puts the controller unless ``asyncjob.mount`` says otherwise.
DEFAULT_MOUNT = 'asyncjob'

# Files of tgext/asyncjob/static that the controller serves, with their content type.
# A fixed list: a name taken from the URL never reaches the filesystem.
_STATIC_FILES = {
    'asyncjob.js': 'text/javascript',
    'asyncjob.css': 'text/css',
}
_JOBS_LIMIT_MAX = 500

# What a job id looks like (``secrets.token_hex(16)``). Anything else in a job URL is
# answered 404 before any lookup or rendering: it never reaches a tracker, a page or a URL.
_JOB_ID = re.compile(r'[0-9a-f]{32}')

#: Shown instead of a failed job's message unless tracebacks are allowed or the job
#: raised :class:`~tgext.asyncjob.errors.JobFailed` (a message meant for the user):
#: messages of other exceptions can carry SQL, parameters, paths or secrets.
HIDDEN_ERROR = 'The job could not be completed. The details are in the server log.'


# -- helpers usable from any page ---------------------------------------------------

def percent_of(status: JobStatus) -> int | None:
    """The job's progress as a whole percent, 0..100, or ``None`` when unknown.

    A finished successful job is 100. Progress data that is a dict with numeric
    ``total`` and ``done`` wins over the progress value (jobs that count items often
    report both); otherwise the progress value is read as a percent and clamped.
    """
    if status.state is JobState.SUCCEEDED:
        return 100
    data = status.data
    if isinstance(data, dict):
        total, done = data.get('total'), data.get('done')
        if _is_number(total) and _is_number(done) and total > 0:
            percent = _clamp(done * 100 // total)
            if percent is not None:
                return percent
    if status.state is JobState.QUEUED:
        return 0
    return _clamp(status.progress)


def _is_number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float: progress data may hold inf or NaN, which have no percent."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _clamp(value: Any) -> int | None:
    return max(0, min(100, int(value))) if _is_number(value) else None


def _url(path: str) -> str:
    """``tg.url(path)`` inside a request (adds the app's SCRIPT_NAME), else ``path``."""
    try:
        return tg.url(path)
    except (TypeError, AttributeError):
        return path


def progress_snippet(jobid: str, mount: str = '/' + DEFAULT_MOUNT,
                     include_assets: bool = True) -> Markup:
    """HTML for a live progress bar of job ``jobid``, to put in any page.

    ``mount`` is the URL path of the :class:`AsyncJobController`. With
    ``include_assets`` the snippet links the controller's script and stylesheet
    itself (harmless when repeated: the script sets itself up only once); pass
    ``False`` when the page already includes them in its ``<head>``. No inline
    script, so a strict Content-Security-Policy does not stop it.
    """
    base = mount.rstrip('/')
    status_url = _url(f'{base}/status/{jobid}.json')
    html = _bar_html(jobid, status_url, state='queued', percent=0, text='Queued')
    if include_assets:
        html = (Markup('<link rel="stylesheet" href="{css}">\n'
                       '<script src="{js}" defer></script>\n')
                .format(css=_url(f'{base}/static/asyncjob.css'),
                        js=_url(f'{base}/static/asyncjob.js')) + html)
    return html


def _bar_html(jobid: str, status_url: str, state: str, percent: int | None, text: str,
              error: str = '', traceback: str = '', message: str = '') -> Markup:
    """The progress widget; ``asyncjob.js`` finds it by ``data-asyncjob-status``."""
    if state == 'queued':
        # Waiting has no percent: the bar shows a moving stripe and the line just
        # "Queued", as asyncjob.js does.
        percent = None
    # role=progressbar without aria-valuenow is "indeterminate", right for unknown progress.
    valuenow = Markup('') if percent is None else Markup(' aria-valuenow="{}"').format(percent)
    width = 0 if percent is None else percent
    return Markup(
        '<div class="asyncjob" data-asyncjob-status="{url}" data-state="{state}">\n'
        '  <div class="asyncjob-bar" role="progressbar" aria-label="Progress of job {jobid}"'
        ' aria-valuemin="0" aria-valuemax="100"{valuenow}>'
        '<div class="asyncjob-fill" style="width: {width}%"></div></div>\n'
        '  <p class="asyncjob-line"><span class="asyncjob-percent">{percent_text}</span>'
        ' <span class="asyncjob-state" role="status" aria-live="polite">{text}</span></p>\n'
        '  <p class="asyncjob-message">{message}</p>\n'
        '  <p class="asyncjob-error" role="alert"{error_hidden}>{error}</p>\n'
        '  <details class="asyncjob-traceback"{tb_hidden}><summary>Traceback</summary>'
        '<pre>{traceback}</pre></details>\n'
        '</div>\n'
    ).format(url=status_url, state=state, jobid=jobid, valuenow=valuenow, width=width,
             percent_text='' if percent is None else f'{percent}%', text=text, error=error,
             message=message, error_hidden=Markup('') if error else Markup(' hidden'),
             traceback=traceback, tb_hidden=Markup('') if traceback else Markup(' hidden'))


def status_body(status: JobStatus, details: bool, traceback: bool = True) -> dict[str, Any]:
    """The status JSON of a job: its :class:`JobStatus` fields, ``percent`` and
    ``finished``; the error as :func:`error_body` shows it.

    Built from the fields one level deep (not ``dataclasses.asdict``, which deep-copies
    and fails on circular or uncopyable results); :func:`jsonsafe.dumps` encodes it.
    """
    body = {field.name: getattr(status, field.name) for field in dataclasses.fields(status)}
    body['state'] = status.state.value
    body['error'] = error_body(status.error, details, traceback)
    body['percent'] = percent_of(status)
    body['finished'] = status.finished
    return body


def error_body(error: JobError | None, details: bool, traceback: bool = True
               ) -> dict[str, Any] | None:
    """A failed job's error as the pages show it: ``type``, ``message`` (the job's own
    when ``details`` are allowed or the error is public, else :data:`HIDDEN_ERROR`),
    ``public``, and ``traceback`` when ``details`` and ``traceback``."""
    if error is None:
        return None
    public = bool(error.public)
    body: dict[str, Any] = {'type': error.type,
                            'message': error.message if details or public else HIDDEN_ERROR,
                            'public': public}
    if details and traceback:
        body['traceback'] = error.traceback
    return body


def _error_text(error: dict[str, Any] | None) -> str:
    """One line for a page (the same rule as asyncjob.js): a public message alone,
    otherwise ``Type: message``."""
    if error is None:
        return ''
    return error['message'] if error['public'] else f"{error['type']}: {error['message']}"


def _message_of(status: JobStatus) -> str:
    """What the job says of itself: its data if text, ``data['message']``, or the detail
    (the same rule as asyncjob.js)."""
    data = status.data
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and isinstance(data.get('message'), str):
        return data['message']
    return status.detail or ''


_STATE_TEXT = {
    'queued': 'Queued',
    'running': 'Running',
    'succeeded': 'Completed',
    'failed': 'Failed',
    'cancelled': 'Cancelled',
    'not_found': 'Not found',
    'unknown': 'Unknown',
}


# -- access rules -------------------------------------------------------------------

_ACCESS_SETTINGS = ('asyncjob.show_tracebacks', 'asyncjob.jobs_access')


def _access_rule(conf: Mapping[str, Any], key: str) -> bool | Callable[[], Any] | None:
    """The rule ``conf[key]`` holds: ``None`` (unset), a callable, or a bool.

    Raises ValueError naming the setting for a value that is none of these (an .ini
    string such as ``yes please``).
    """
    rule = conf.get(key)
    if rule is None or callable(rule):
        return rule
    try:
        return asbool(rule)
    except ValueError:
        raise ValueError(
            f'{key} = {rule!r} is not valid: use true or false (also yes/no, on/off, 1/0) '
            'or a callable taking no arguments that returns whether to allow') from None


def check_access_rules(conf: Mapping[str, Any]) -> None:
    """Raise ValueError, naming the setting and its valid values, if
    ``asyncjob.show_tracebacks`` or ``asyncjob.jobs_access`` is not a valid rule.
    Called at start-up by :func:`mount_from_config`."""
    for key in _ACCESS_SETTINGS:
        _access_rule(conf, key)


def _allowed(conf: Mapping[str, Any], key: str) -> bool:
    """``conf[key]`` decides when set (a bool, an .ini string, or a callable taking no
    arguments that returns one); unset, only a ``debug`` application allows.

    A failing predicate or an invalid value denies: a bug in an access check must not
    open the page (an invalid value fails at start-up where :func:`mount_from_config`
    runs; a controller mounted by hand in an app that is not plugged only logs it).
    """
    try:
        rule = _access_rule(conf, key)
    except ValueError as exc:
        log.error('tgext.asyncjob: %s; denying', exc)
        return False
    if rule is None:
        return asbool(conf.get('debug', False))
    if callable(rule):
        try:
            return bool(rule())
        except Exception:
            log.exception('tgext.asyncjob: the %s predicate failed; denying', key)
            return False
    return rule


def tracebacks_allowed() -> bool:
    """True when this request may see job tracebacks (``asyncjob.show_tracebacks``)."""
    return _allowed(tg.config, 'asyncjob.show_tracebacks')


def jobs_page_allowed() -> bool:
    """True when this request may list jobs (``asyncjob.jobs_access``)."""
    return _allowed(tg.config, 'asyncjob.jobs_access')


# -- the controller ---------------------------------------------------------------

def _respond(body: str | bytes, content_type: str, status: int = 200,
             cache: str = 'no-store') -> bytes:
    """Set the status and headers of a response whose body is ``body``, returned as bytes."""
    response = tg.response
    response.status_int = status
    response.content_type = content_type
    if content_type.startswith('text/') or content_type == 'application/json':
        response.charset = 'utf-8'
    response.headers['Cache-Control'] = cache
    # Job pages carry ids worth keeping private: never leak them to other sites.
    response.headers['Referrer-Policy'] = 'same-origin'
    response.headers['X-Content-Type-Options'] = 'nosniff'
    # Text a job left behind may hold lone surrogates, which UTF-8 cannot encode.
    return body.encode('utf-8', 'replace') if isinstance(body, str) else body


def _not_found(what: str) -> bytes:
    """A bare 404: no page, no asset URL, nothing taken from the request path."""
    return _respond(f'{what} not found', 'text/plain', 404)


def _mount_url() -> str | None:
    """URL of the controller's mount point, where TurboGears' dispatch found it: the
    path segments dispatched up to the current action (its arguments excluded), so
    links work wherever it is mounted and never depend on a job id. ``None`` if a
    segment is one a browser would resolve (``.`` or ``..``)."""
    request = tg.request
    state = request.dispatch_state
    path = list(state.path)
    consumed = path[:len(path) - len(state.remainder or ())]
    segments = [segment for segment in consumed[:-1] if segment != '']  # [-1]: the action
    if any(segment in ('.', '..') for segment in segments):
        return None
    return request.script_name + ''.join('/' + urllib.parse.quote(segment, safe='')
                                         for segment in segments)


def _back_url() -> tuple[str, str]:
    """Where the progress page's "back" link goes, and its text: ``asyncjob.back_url``
    if set; else the referring page if it is of this site (and not this page); else
    the application's root."""
    setting = tg.config.get('asyncjob.back_url')
    if setting:
        return _url(str(setting)), 'Back to the application'
    request = tg.request
    referrer = request.referer
    if referrer:
        parts = urllib.parse.urlsplit(referrer)
        origin = f'{parts.scheme}://{parts.netloc}'.lower()
        if (parts.scheme in ('http', 'https') and origin == request.host_url.lower()
                and parts.path != request.path):
            return urllib.parse.urlunsplit(parts._replace(fragment='')), 'Back'
    return request.script_name + '/', 'Back to the application'


def _time(ts: float | None) -> str:
    if ts is None:
        return ''
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M:%S')


def _took(status: JobStatus) -> str:
    if status.started_at is None or status.finished_at is None:
        return ''
    return f'{max(status.finished_at - status.started_at, 0):.1f} s'


_PAGE = Markup('''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{base}/static/asyncjob.css">
<script src="{base}/static/asyncjob.js" defer></script>
</head>
<body class="asyncjob-page">
<main>
{nav}<h1>{title}</h1>
{body}
</main>
</body>
</html>
''')


class AsyncJobController(TGController):
    """Job status as JSON, a progress page, and a list of recent jobs.

    Status and progress pages are open to anyone holding a job id (ids are 128-bit
    random values); tracebacks and error messages, and the job list, are shown only as
    configured by ``asyncjob.show_tracebacks`` and ``asyncjob.jobs_access``.
    """

    def _status(self, jobid: str) -> tuple[JobStatus | None, int]:
        """The job's status and the HTTP code that goes with it."""
        from . import asyncjob_get_status
        try:
            status = asyncjob_get_status(jobid)
        except (TrackerUnavailable, NoWorkerError) as exc:
            log.warning('tgext.asyncjob: status of %s unavailable: %s', jobid, exc)
            return None, 503
        return status, 404 if status.state is JobState.NOT_FOUND else 200

    @expose()
    def status(self, jobid: str, *rest: str, **params: Any) -> bytes:
        """``status/<id>.json``: the job's status; 404 unknown, 503 tracker down."""
        jobid = _strip_json(jobid)
        valid = not rest and _JOB_ID.fullmatch(jobid) is not None
        status, code = self._status(jobid) if valid else (None, 404)
        if status is None:
            state = 'unknown' if code == 503 else 'not_found'
            body: dict[str, Any] = {
                'id': jobid if valid else None, 'state': state,
                'detail': 'the job tracker is unavailable' if code == 503 else ''}
        else:
            body = status_body(status, tracebacks_allowed())
        if code == 503:
            tg.response.headers['Retry-After'] = '2'
        return _respond(jsonsafe.dumps(body), 'application/json', code)

    @expose()
    def progress(self, jobid: str = '', *rest: str, **params: Any) -> bytes:
        """``progress/<id>``: a page whose bar follows the job until it ends."""
        base = _mount_url()
        if rest or base is None or _JOB_ID.fullmatch(jobid) is None:
            return _not_found('job')
        status, code = self._status(jobid)
        status_url = f'{base}/status/{jobid}.json'
        if status is None:
            state = 'unknown' if code == 503 else 'not_found'
            text = 'Status unavailable, retrying' if code == 503 else 'Not found'
            bar = _bar_html(jobid, status_url, state, None, text)
        else:
            state = status.state.value
            details = tracebacks_allowed()
            error = error_body(status.error, details)
            bar = _bar_html(jobid, status_url, state, percent_of(status),
                            _STATE_TEXT.get(state, state), _error_text(error),
                            error.get('traceback', '') if error else '', _message_of(status))
        body = Markup('<p class="asyncjob-id">Job <code>{jobid}</code>{name}</p>\n{bar}'
                      '<noscript><p>Reload this page to see the latest progress.</p></noscript>\n'
                      '{jobs}').format(jobid=jobid, bar=bar, jobs=_jobs_link(base),
                               name=Markup(': <code>{}</code>').format(status.name)
                               if status is not None and status.name else '')
        back, back_text = _back_url()
        nav = Markup('<nav class="asyncjob-nav"><a class="asyncjob-back" href="{}">{}</a>'
                     '</nav>\n').format(back, back_text)
        page = _PAGE.format(title='Job progress', base=base, body=body, nav=nav)
        return _respond(str(page), 'text/html', code)

    @expose()
    def jobs(self, limit: str = '50', **params: Any) -> bytes:
        """``jobs`` (HTML) or ``jobs.json``: the most recent jobs, newest first."""
        as_json = tg.request.response_type == 'application/json'
        base = _mount_url()
        if base is None:
            return _not_found('page')
        if not jobs_page_allowed():
            return self._jobs_error(as_json, base, 403, 'Listing jobs is not allowed here. '
                                    'Set asyncjob.jobs_access to allow it.')
        try:
            count = max(1, min(int(limit), _JOBS_LIMIT_MAX))
        except ValueError:
            count = 50
        from .tgwiring import current_queue
        try:
            jobs = current_queue().recent(count)
        except NotImplementedError as exc:
            return self._jobs_error(as_json, base, 501, str(exc))
        except (TrackerUnavailable, NoWorkerError) as exc:
            return self._jobs_error(as_json, base, 503, f'Job list unavailable: {exc}')
        details = tracebacks_allowed()
        if as_json:
            items = [status_body(status, details, traceback=False) for status in jobs]
            return _respond(jsonsafe.dumps({'jobs': items}), 'application/json')
        page = _PAGE.format(title='Recent jobs', base=base, nav='',
                            body=_jobs_table(jobs, base, details))
        return _respond(str(page), 'text/html')

    def _jobs_error(self, as_json: bool, base: str, code: int, message: str) -> bytes:
        if as_json:
            return _respond(jsonsafe.dumps({'error': message}), 'application/json', code)
        body = Markup('<p class="asyncjob-error" role="alert">{}</p>').format(message)
        return _respond(str(_PAGE.format(title='Recent jobs', base=base, body=body, nav='')),
                        'text/html', code)

    @expose()
    def static(self, name: str = '', *rest: str, **params: Any) -> bytes:
        """``static/asyncjob.js`` and ``static/asyncjob.css``, from the package."""
        # TurboGears strips a known extension off the last path segment: put it back.
        filename = name + (tg.request.response_ext or '')
        content_type = _STATIC_FILES.get(filename) if not rest else None
        if content_type is None:
            return _not_found('file')
        data = _static_bytes(filename)
        etag = hashlib.sha256(data).hexdigest()[:32]
        tg.response.etag = etag
        if tg.request.if_none_match and etag in tg.request.if_none_match:
            # Raised, not returned: TG would give a returned empty body a Content-Type.
            raise HTTPNotModified(headers={'ETag': f'"{etag}"',
                                           'Cache-Control': 'public, max-age=300'})
        return _respond(data, content_type, cache='public, max-age=300')


def _strip_json(jobid: str) -> str:
    # TG strips ".json" off the URL when request extensions are on; when an app turned
    # them off (disable_request_extensions) the id still carries it.
    return jobid[:-5] if jobid.endswith('.json') else jobid


_static_cache: dict[str, bytes] = {}


def _static_bytes(filename: str) -> bytes:
    data = _static_cache.get(filename)
    if data is None:
        # One name per joinpath(): Python 3.10's Traversable takes no more.
        data = (resources.files(__package__) / 'static' / filename).read_bytes()
        _static_cache[filename] = data
    return data


def _jobs_link(base: str) -> Markup:
    # Only offered to those who may open it.
    if not jobs_page_allowed():
        return Markup('')
    return Markup('<p><a href="{}/jobs">All recent jobs</a></p>\n').format(base)


def _breakable(name: str) -> Markup:
    # A dotted name may wrap after each dot, and only there: a narrow column then
    # shows "tgext.asyncjob." / "demo.app.write_rows", never "dem" / "o.app".
    return Markup('.<wbr>').join(name.split('.'))


def _jobs_table(jobs: list[JobStatus], base: str, details: bool) -> Markup:
    if not jobs:
        return Markup('<p>No jobs yet.</p>')
    rows = []
    for status in jobs:
        percent = percent_of(status)
        error = _error_text(error_body(status.error, details)) or status.detail
        rows.append(Markup(
            '<tr data-state="{state}"><td><a href="{base}/progress/{id}"><code>{short}</code></a>'
            '</td><td class="asyncjob-name">{name}</td><td><span class="asyncjob-badge">{state_text}</span></td>'
            '<td>{percent}</td><td class="asyncjob-time">{enqueued}</td>'
            '<td class="asyncjob-time">{took}</td><td>{error}</td></tr>'
        ).format(state=status.state.value, base=base, id=status.id, short=status.id[:12],
                 name=_breakable(status.name or ''), state_text=_STATE_TEXT.get(status.state.value,
                                                                     status.state.value),
                 percent='' if percent is None else f'{percent}%',
                 enqueued=_time(status.enqueued_at), took=_took(status),
                 error=error))
    return Markup(
        '<div class="asyncjob-scroll"><table class="asyncjob-jobs">\n<thead><tr><th scope="col">Job</th>'
        '<th scope="col">Callable</th><th scope="col">State</th><th scope="col">Progress</th>'
        '<th scope="col">Queued (UTC)</th><th scope="col">Took</th>'
        '<th scope="col">Detail</th></tr></thead>\n<tbody>\n{}\n</tbody>\n</table></div>'
    ).format(Markup('\n').join(rows))


# -- mounting -------------------------------------------------------------------------

def mount(root: Any, name: str = DEFAULT_MOUNT) -> AsyncJobController:
    """Mount an :class:`AsyncJobController` as ``root.<name>``; return the one mounted.

    ``root`` is a root controller instance (mounted on it alone) or class. A root that
    already has ``name`` (mounted by hand, or mounted before) is left alone.
    """
    existing = getattr(root, name, None)
    if isinstance(existing, AsyncJobController):
        return existing
    if existing is not None:
        raise ValueError(f'cannot mount tgext.asyncjob at {name!r}: the root controller '
                         f'already has {existing!r} there (set asyncjob.mount to another name)')
    controller = AsyncJobController()
    setattr(root, name, controller)
    return controller


def mount_from_config(conf: Mapping[str, Any]) -> AsyncJobController | None:
    """Mount the controller on an application's root controller, as found in its
    configuration: call from an environment-loaded configuration action.

    Uses ``asyncjob.mount`` (default ``asyncjob``; ``false`` or empty: do not mount).
    The root is the explicit ``tg.root_controller`` instance if the app has one,
    else the class TurboGears will load from ``<package>.controllers.root``.
    """
    # Checked here, at start-up, rather than failing every request that reads them.
    check_access_rules(conf)
    name = conf.get('asyncjob.mount', DEFAULT_MOUNT)
    if name is None or name is False or str(name).strip().lower() in ('', 'false', 'no', 'off',
                                                                      '0'):
        return None
    name = str(name).strip().strip('/')
    root = conf.get('tg.root_controller')
    if root is None:
        from tg.wsgiapp import TGApp
        root = TGApp.lookup_controller(conf, 'root')
    return mount(root, name)

