"""Web pages for jobs: a JSON status endpoint, a progress page, and a list of jobs.

Mount :class:`AsyncJobController` in a root controller by hand::

    class RootController(TGController):
        asyncjob = AsyncJobController()

or let :func:`mount_from_config` do it for a plugged application (at ``/asyncjob``).
Endpoints, below the mount point:

* ``status/<id>.json``: the job's :class:`~tgext.asyncjob.job.JobStatus` as JSON;
* ``progress/<id>``: an HTML page with a progress bar that polls the JSON, and a link
  back to the application (``asyncjob.back_url``, else the referring page of the site);
* ``jobs``, ``job/<id>`` and the POST actions ``cancel``, ``retry``, ``delete``: the
  jobs dashboard of :mod:`~tgext.asyncjob.webjobs`, behind ``asyncjob.jobs_access``;
* ``static/asyncjob.js`` and ``static/asyncjob.css``: the page's script and style.

What the pages show is built by :mod:`~tgext.asyncjob.webview`; who may see error
details and the job list is decided by :mod:`~tgext.asyncjob.webaccess`.
"""
from __future__ import annotations

import hashlib
import logging
import urllib.parse
from importlib import resources
from typing import Any, Mapping

import tg
from markupsafe import Markup
from tg import TGController, expose
from tg.exceptions import HTTPNotModified

from . import jsonsafe
from .errors import NoWorkerError, TrackerUnavailable
from .job import JobState, JobStatus, is_job_id
from .webhttp import mount_url as _mount_url, not_found as _not_found, respond as _respond
from .webhttp import strip_json as _strip_json, url as _url
from .webaccess import check_access_rules, jobs_page_allowed, tracebacks_allowed
from .webjobs import JobsPages
from .webview import (HIDDEN_ERROR, PAGE, STATE_TEXT, bar_html, error_body, error_text,
                      message_of, percent_of, status_body)

log = logging.getLogger('tgext.asyncjob')

# Some names are re-exported from webview and webaccess, where they live now.
__all__ = ['AsyncJobController', 'progress_snippet', 'percent_of', 'status_body', 'error_body',
           'mount', 'mount_from_config', 'check_access_rules', 'tracebacks_allowed',
           'jobs_page_allowed', 'DEFAULT_MOUNT', 'HIDDEN_ERROR']

#: Where :func:`mount_from_config` puts the controller unless ``asyncjob.mount`` says otherwise.
DEFAULT_MOUNT = 'asyncjob'

# Files of tgext/asyncjob/static that the controller serves, with their content type.
# A fixed list: a name taken from the URL never reaches the filesystem.
_STATIC_FILES = {
    'asyncjob.js': 'text/javascript',
    'asyncjob.css': 'text/css',
}

# What a job id looks like (``secrets.token_hex(16)``). Anything else in a job URL is
# answered 404 before any lookup or rendering: it never reaches a tracker, a page or a URL.


# -- helpers usable from any page ---------------------------------------------------

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
    html = bar_html(jobid, status_url, state='queued', percent=None, text='Queued')
    if include_assets:
        html = (Markup('<link rel="stylesheet" href="{css}">\n'
                       '<script src="{js}" defer></script>\n')
                .format(css=_url(f'{base}/static/asyncjob.css'),
                        js=_url(f'{base}/static/asyncjob.js')) + html)
    return html


# -- the controller ---------------------------------------------------------------

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


class AsyncJobController(JobsPages, TGController):
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
        valid = not rest and is_job_id(jobid)
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
        if rest or base is None or not is_job_id(jobid):
            return _not_found('job')
        status, code = self._status(jobid)
        status_url = f'{base}/status/{jobid}.json'
        if status is None:
            state = 'unknown' if code == 503 else 'not_found'
            text = 'Status unavailable, retrying' if code == 503 else 'Not found'
            bar = bar_html(jobid, status_url, state, None, text)
        else:
            state = status.state.value
            details = tracebacks_allowed()
            error = error_body(status.error, details)
            bar = bar_html(jobid, status_url, state, percent_of(status),
                            STATE_TEXT.get(state, state), error_text(error),
                            error.get('traceback', '') if error else '', message_of(status))
        body = Markup('<p class="asyncjob-id">Job <code>{jobid}</code>{name}</p>\n{bar}'
                      '<noscript><p>Reload this page to see the latest progress.</p></noscript>\n'
                      '{jobs}').format(jobid=jobid, bar=bar, jobs=_jobs_link(base, jobid),
                               name=Markup(': <code>{}</code>').format(status.name)
                               if status is not None and status.name else '')
        back, back_text = _back_url()
        nav = Markup('<nav class="asyncjob-nav"><a class="asyncjob-back" href="{}">{}</a>'
                     '</nav>\n').format(back, back_text)
        page = PAGE.format(title='Job progress', base=base, body=body, nav=nav)
        return _respond(str(page), 'text/html', code)

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


_static_cache: dict[str, bytes] = {}


def _static_bytes(filename: str) -> bytes:
    data = _static_cache.get(filename)
    if data is None:
        # One name per joinpath(): Python 3.10's Traversable takes no more.
        data = (resources.files(__package__) / 'static' / filename).read_bytes()
        _static_cache[filename] = data
    return data


def _jobs_link(base: str, jobid: str) -> Markup:
    # Only offered to those who may open it.
    if not jobs_page_allowed():
        return Markup('')
    return Markup('<p><a href="{}/job/{}">Job details</a> &middot; '
                  '<a href="{}/jobs">All recent jobs</a></p>\n').format(base, jobid, base)


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

