"""Web pages for jobs: a JSON status endpoint, a progress page, and a list of jobs.

Mount :class:`AsyncJobController` in a root controller by hand::

    class RootController(TGController):
        asyncjob = AsyncJobController()

or let :func:`mount_from_config` do it for a plugged application (at ``/asyncjob``).
Endpoints, below the mount point:

* ``status/<id>.json``: the job's :class:`~tgext.asyncjob.job.JobStatus` as JSON;
* ``progress/<id>``: an HTML page with a progress bar that polls the JSON;
* ``jobs``: recent jobs (``jobs.json`` for JSON), behind ``asyncjob.jobs_access``;
* ``static/asyncjob.js`` and ``static/asyncjob.css``: the page's script and style.

The HTML is built here from small escaped strings rather than templates, so the pages
work whatever template engines the application has configured.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
from importlib import resources
from typing import Any, Mapping, TypeGuard, TypeVar

import tg
from markupsafe import Markup
from tg import TGController, expose
from tg.exceptions import HTTPNotModified
from tg.support.converters import asbool

from .errors import NoWorkerError, TrackerUnavailable
from .job import JobState, JobStatus

log = logging.getLogger('tgext.asyncjob')

__all__ = ['AsyncJobController', 'progress_snippet', 'percent_of', 'mount', 'mount_from_config',
           'DEFAULT_MOUNT']

#: Where :func:`mount_from_config` puts the controller unless ``asyncjob.mount`` says otherwise.
DEFAULT_MOUNT = 'asyncjob'

# Files of tgext/asyncjob/static that the controller serves, with their content type.
# A fixed list: a name taken from the URL never reaches the filesystem.
_STATIC_FILES = {
    'asyncjob.js': 'text/javascript',
    'asyncjob.css': 'text/css',
}
_JOBS_LIMIT_MAX = 500

# A response body goes back out as it came in: text stays text, bytes stay bytes.
_Body = TypeVar('_Body', str, bytes)


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
            return _clamp(int(done * 100 // total))
    if status.progress is None or status.state is JobState.QUEUED:
        return 0 if status.state is JobState.QUEUED else None
    return _clamp(status.progress)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clamp(value: int) -> int:
    return max(0, min(100, int(value)))


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

def _allowed(conf: Mapping[str, Any], key: str) -> bool:
    """``conf[key]`` decides when set (a bool, an .ini string, or a callable taking no
    arguments that returns one); unset, only a ``debug`` application allows.

    A failing predicate denies: a bug in an access check must not open the page.
    """
    rule = conf.get(key)
    if rule is None:
        return asbool(conf.get('debug', False))
    if callable(rule):
        try:
            return bool(rule())
        except Exception:
            log.exception('tgext.asyncjob: the %s predicate failed; denying', key)
            return False
    return asbool(rule)


def tracebacks_allowed() -> bool:
    """True when this request may see job tracebacks (``asyncjob.show_tracebacks``)."""
    return _allowed(tg.config, 'asyncjob.show_tracebacks')


def jobs_page_allowed() -> bool:
    """True when this request may list jobs (``asyncjob.jobs_access``)."""
    return _allowed(tg.config, 'asyncjob.jobs_access')


# -- the controller ---------------------------------------------------------------

def _json(value: Any) -> str:
    # Results kept by the memory tracker can be any object: show their repr, never fail.
    return json.dumps(value, ensure_ascii=False, default=repr)


def _respond(body: _Body, content_type: str, status: int = 200,
             cache: str = 'no-store') -> _Body:
    response = tg.response
    response.status_int = status
    response.content_type = content_type
    if content_type.startswith('text/') or content_type == 'application/json':
        response.charset = 'utf-8'
    response.headers['Cache-Control'] = cache
    # Job pages carry ids worth keeping private: never leak them to other sites.
    response.headers['Referrer-Policy'] = 'same-origin'
    response.headers['X-Content-Type-Options'] = 'nosniff'
    return body


def _mount_url(segment: str) -> str:
    """URL of the controller's mount point, from the path of the current request
    (``.../<mount>/<segment>/...``), so links work wherever it is mounted."""
    request = tg.request
    path = request.path_info
    cut = path.rfind(f'/{segment}')
    return request.script_name + (path[:cut] if cut >= 0 else '')


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
<h1>{title}</h1>
{body}
</main>
</body>
</html>
''')


class AsyncJobController(TGController):
    """Job status as JSON, a progress page, and a list of recent jobs.

    Status and progress pages are open to anyone holding a job id (ids are 128-bit
    random values); tracebacks and the job list are shown only as configured by
    ``asyncjob.show_tracebacks`` and ``asyncjob.jobs_access``.
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
    def status(self, jobid: str, *rest: str, **params: Any) -> str:
        """``status/<id>.json``: the job's status; 404 unknown, 503 tracker down."""
        jobid = _strip_json(jobid)
        status, code = self._status(jobid) if not rest else (None, 404)
        if status is None:
            state = 'unknown' if code == 503 else 'not_found'
            body: dict[str, Any] = {
                'id': jobid, 'state': state,
                'detail': 'the job tracker is unavailable' if code == 503 else ''}
        else:
            body = status.to_dict(include_traceback=tracebacks_allowed())
            body['percent'] = percent_of(status)
            body['finished'] = status.finished
        if code == 503:
            tg.response.headers['Retry-After'] = '2'
        return _respond(_json(body), 'application/json', code)

    @expose()
    def progress(self, jobid: str, *rest: str, **params: Any) -> str:
        """``progress/<id>``: a page whose bar follows the job until it ends."""
        base = _mount_url('progress')
        status, code = self._status(jobid) if not rest else (None, 404)
        status_url = f'{base}/status/{jobid}.json'
        if status is None:
            state = 'unknown' if code == 503 else 'not_found'
            text = 'Status unavailable, retrying' if code == 503 else 'Not found'
            bar = _bar_html(jobid, status_url, state, None, text)
        else:
            state = status.state.value
            error = tb = ''
            if status.error is not None:
                error = f'{status.error.type}: {status.error.message}'
                tb = status.error.traceback if tracebacks_allowed() else ''
            bar = _bar_html(jobid, status_url, state, percent_of(status),
                            _STATE_TEXT.get(state, state), error, tb, _message_of(status))
        body = Markup('<p class="asyncjob-id">Job <code>{jobid}</code>{name}</p>\n{bar}'
                      '<noscript><p>Reload this page to see the latest progress.</p></noscript>\n'
                      '{nav}').format(jobid=jobid, bar=bar, nav=_jobs_link(base),
                               name=Markup(': <code>{}</code>').format(status.name)
                               if status is not None and status.name else '')
        page = _PAGE.format(title='Job progress', base=base, body=body)
        return _respond(str(page), 'text/html', code)

    @expose()
    def jobs(self, limit: str = '50', **params: Any) -> str:
        """``jobs`` (HTML) or ``jobs.json``: the most recent jobs, newest first."""
        as_json = tg.request.response_type == 'application/json'
        base = _mount_url('jobs')
        if not jobs_page_allowed():
            return self._jobs_error(as_json, base, 403, 'Listing jobs is not allowed here. '
                                    'Set asyncjob.jobs_access to allow it.')
        try:
            count = max(1, min(int(limit), _JOBS_LIMIT_MAX))
        except ValueError:
            count = 50
        from .locate import current_queue
        try:
            jobs = current_queue().recent(count)
        except NotImplementedError as exc:
            return self._jobs_error(as_json, base, 501, str(exc))
        except (TrackerUnavailable, NoWorkerError) as exc:
            return self._jobs_error(as_json, base, 503, f'Job list unavailable: {exc}')
        if as_json:
            items = []
            for status in jobs:
                item = status.to_dict(include_traceback=False)
                item['percent'] = percent_of(status)
                items.append(item)
            return _respond(_json({'jobs': items}), 'application/json')
        page = _PAGE.format(title='Recent jobs', base=base, body=_jobs_table(jobs, base))
        return _respond(str(page), 'text/html')

    def _jobs_error(self, as_json: bool, base: str, code: int, message: str) -> str:
        if as_json:
            return _respond(_json({'error': message}), 'application/json', code)
        body = Markup('<p class="asyncjob-error" role="alert">{}</p>').format(message)
        return _respond(str(_PAGE.format(title='Recent jobs', base=base, body=body)),
                        'text/html', code)

    @expose()
    def static(self, name: str = '', *rest: str, **params: Any) -> str | bytes:
        """``static/asyncjob.js`` and ``static/asyncjob.css``, from the package."""
        # TurboGears strips a known extension off the last path segment: put it back.
        filename = name + (tg.request.response_ext or '')
        content_type = _STATIC_FILES.get(filename) if not rest else None
        if content_type is None:
            return _respond('not found', 'text/plain', 404)
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


def _jobs_table(jobs: list[JobStatus], base: str) -> Markup:
    if not jobs:
        return Markup('<p>No jobs yet.</p>')
    rows = []
    for status in jobs:
        percent = percent_of(status)
        error = f'{status.error.type}: {status.error.message}' if status.error else status.detail
        rows.append(Markup(
            '<tr data-state="{state}"><td><a href="{base}/progress/{id}"><code>{short}</code></a>'
            '</td><td class="asyncjob-name">{name}</td><td><span class="asyncjob-badge">{state_text}</span></td>'
            '<td>{percent}</td><td class="asyncjob-time">{enqueued}</td>'
            '<td class="asyncjob-time">{took}</td><td>{error}</td></tr>'
        ).format(state=status.state.value, base=base, id=status.id, short=status.id[:12],
                 name=status.name or '', state_text=_STATE_TEXT.get(status.state.value,
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

def mount(root: Any, name: str = DEFAULT_MOUNT) -> Any:
    """Mount an :class:`AsyncJobController` as ``root.<name>``; return what is there.

    ``root`` is a root controller instance (mounted on it alone) or class. A root that
    already has ``name`` (mounted by hand, mounted before, or anything of the
    application's own) is left alone; if it is not ours, that is logged.
    """
    existing = getattr(root, name, None)
    if existing is not None:
        if not isinstance(existing, AsyncJobController):
            log.warning('tgext.asyncjob: not mounted at /%s: the root controller already '
                        'has %r there (set asyncjob.mount to another name)', name, existing)
        return existing
    controller = AsyncJobController()
    setattr(root, name, controller)
    return controller


def mount_from_config(conf: Mapping[str, Any]) -> Any:
    """Mount the controller on an application's root controller, as found in its
    configuration: call from an environment-loaded configuration action.

    Uses ``asyncjob.mount`` (default ``asyncjob``; ``false`` or empty: do not mount).
    The root is the explicit ``tg.root_controller`` instance if the app has one,
    else the class TurboGears will load from ``<package>.controllers.root``.
    """
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

