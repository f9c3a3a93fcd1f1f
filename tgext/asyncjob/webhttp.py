"""HTTP pieces shared by the job pages: the response with the headers every page
sends, a bare 404, and the URL of the controller's mount point."""
from __future__ import annotations

import urllib.parse

import tg

__all__ = ['url', 'respond', 'not_found', 'mount_url', 'strip_json']


def url(path: str) -> str:
    """``tg.url(path)`` inside a request (adds the app's SCRIPT_NAME), else ``path``."""
    try:
        return tg.url(path)
    except (TypeError, AttributeError):
        return path



def respond(body: str | bytes, content_type: str, status: int = 200,
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


def not_found(what: str) -> bytes:
    """A bare 404: no page, no asset URL, nothing taken from the request path."""
    return respond(f'{what} not found', 'text/plain', 404)


def mount_url() -> str | None:
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


def strip_json(jobid: str) -> str:
    """``jobid`` without a ``.json`` suffix."""
    # TG strips ".json" off the URL when request extensions are on; when an app turned
    # them off (disable_request_extensions) the id still carries it.
    return jobid[:-5] if jobid.endswith('.json') else jobid
