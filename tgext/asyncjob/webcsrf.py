"""CSRF protection of the job pages' actions: a signed double-submit cookie and a
same-origin check.

TurboGears has no CSRF token of its own, and an application may run without sessions,
so the token does not live in a session. Instead (OWASP's "signed double-submit
cookie"): the pages set a cookie holding a random nonce, and every form carries
``HMAC(secret, nonce | user)``; a POST is accepted only when its token is that HMAC
of its cookie's nonce and of the user it is made as. A page of another site can make
the browser send the cookie, but cannot read it nor compute the token; binding the
user means a token leaked before a login does not work after it.

On top of the token, a POST whose ``Origin`` (or, without one, ``Referer``) names
another host is refused: a second, independent line.

The secret is ``asyncjob.secret``, else the application's session secret
(``session.secret`` or ``beaker.session.secret``), else one made for this process
(logged once at WARNING: forms then stop working across restarts, and between the
processes of a multi-process server).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import urllib.parse
from typing import Any, Mapping

log = logging.getLogger('tgext.asyncjob')

__all__ = ['COOKIE', 'FIELD', 'HEADER', 'secret_of', 'form_token', 'check_post']

#: The cookie holding the nonce, the form field and the header carrying the token.
COOKIE = 'asyncjob_csrf'
FIELD = '_csrf'
HEADER = 'X-CSRF-Token'

_NONCE = re.compile(r'[0-9a-f]{32}')
_SECRET_KEYS = ('asyncjob.secret', 'session.secret', 'beaker.session.secret')
_process_secret: bytes | None = None
_process_lock = threading.Lock()


def secret_of(conf: Mapping[str, Any]) -> bytes:
    """The key tokens are signed with: the first of ``asyncjob.secret``,
    ``session.secret`` and ``beaker.session.secret`` that is set, else one made for
    this process (said once, at WARNING)."""
    for key in _SECRET_KEYS:
        value = conf.get(key)
        if value:
            return str(value).encode('utf-8')
    global _process_secret
    with _process_lock:
        if _process_secret is None:
            _process_secret = secrets.token_bytes(32)
            log.warning('tgext.asyncjob: neither asyncjob.secret nor a session secret is '
                        'set: the job pages\' actions use a secret made for this process, '
                        'so their forms fail (403) after a restart and between the '
                        'processes of a multi-process server. Set asyncjob.secret.')
        return _process_secret


def _user(environ: Mapping[str, Any]) -> str:
    # The logged-in user as TurboGears' repoze.who sees it, or the server's REMOTE_USER.
    identity = environ.get('repoze.who.identity') or {}
    user = identity.get('repoze.who.userid') if isinstance(identity, Mapping) else None
    return str(user if user is not None else environ.get('REMOTE_USER') or '')


def _sign(secret: bytes, nonce: str, user: str) -> str:
    message = f'{nonce}|{user}'.encode('utf-8', 'replace')
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def form_token(request: Any, response: Any, conf: Mapping[str, Any], path: str) -> str:
    """The token the forms of this page carry; sets the nonce cookie (scoped to
    ``path``, the controller's mount point) when the browser has none yet."""
    nonce = request.cookies.get(COOKIE, '')
    if not _NONCE.fullmatch(nonce):
        nonce = secrets.token_hex(16)
        response.set_cookie(COOKIE, nonce, path=path or '/', httponly=True, samesite='strict',
                            secure=request.scheme == 'https')
    return _sign(secret_of(conf), nonce, _user(request.environ))


def _same_origin(request: Any) -> bool:
    """False when ``Origin`` (or, lacking it, ``Referer``) names another host.

    Host names are compared, not schemes or ports: behind a proxy that ends TLS the
    application sees http on port 80 while the browser says https, and cookies (the
    token's other half) are shared by all ports of a host anyway."""
    origin = request.headers.get('Origin') or request.referer
    if not origin:
        return True  # a script, or a browser told to send neither: the token decides
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme not in ('http', 'https') or not parts.hostname:
        return False  # "null", a file: page, a sandboxed frame
    own = urllib.parse.urlsplit('//' + request.host).hostname
    return parts.hostname == own


def check_post(request: Any, conf: Mapping[str, Any]) -> str | None:
    """``None`` if this POST may act, else why not (for a 403): a foreign origin, no
    nonce cookie, or a token that is missing or not the one of this cookie and user."""
    if not _same_origin(request):
        return 'the request comes from another site'
    nonce = request.cookies.get(COOKIE, '')
    if not _NONCE.fullmatch(nonce):
        return 'the CSRF cookie is missing: reload the page and try again'
    given = request.POST.get(FIELD) or request.headers.get(HEADER) or ''
    expected = _sign(secret_of(conf), nonce, _user(request.environ))
    if not hmac.compare_digest(str(given).encode('utf-8', 'replace'), expected.encode()):
        return 'the CSRF token is missing or wrong: reload the page and try again'
    return None
