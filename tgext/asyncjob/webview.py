"""What the job pages show of a job: its percent, its status as JSON, its error as
the viewer may see it, and the HTML pieces of the pages (escaped small strings rather
than templates, so the pages work whatever template engines the application has).

Used by :mod:`tgext.asyncjob.web`'s controller; nothing here reads the request.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, TypeGuard

from markupsafe import Markup

from .job import JobError, JobState, JobStatus

__all__ = ['HIDDEN_ERROR', 'percent_of', 'status_body', 'error_body', 'error_text',
           'message_of', 'bar_html', 'PAGE', 'STATE_TEXT', 'time_text', 'took_text',
           'breakable']

#: Shown instead of a failed job's message unless tracebacks are allowed or the job
#: raised :class:`~tgext.asyncjob.errors.JobFailed` (a message meant for the user):
#: messages of other exceptions can carry SQL, parameters, paths or secrets.
HIDDEN_ERROR = 'The job could not be completed. The details are in the server log.'


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


def bar_html(jobid: str, status_url: str, state: str, percent: int | None, text: str,
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


def status_body(status: JobStatus, details: bool, traceback: bool = True,
                arguments: bool = False) -> dict[str, Any]:
    """The status JSON of a job: its :class:`JobStatus` fields, ``percent`` and
    ``finished``; the error as :func:`error_body` shows it; ``args`` and ``kwargs``
    only with ``arguments`` (anyone with the id may read a status).

    Built from the fields one level deep (not ``dataclasses.asdict``, which deep-copies
    and fails on circular or uncopyable results); :func:`jsonsafe.dumps` encodes it.
    """
    body = {field.name: getattr(status, field.name) for field in dataclasses.fields(status)}
    body['state'] = status.state.value
    body['error'] = error_body(status.error, details, traceback)
    body['percent'] = percent_of(status)
    body['finished'] = status.finished
    if not arguments:
        body.pop('args', None)
        body.pop('kwargs', None)
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


def error_text(error: dict[str, Any] | None) -> str:
    """One line for a page (the same rule as asyncjob.js): a public message alone,
    otherwise ``Type: message``."""
    if error is None:
        return ''
    return error['message'] if error['public'] else f"{error['type']}: {error['message']}"


def message_of(status: JobStatus) -> str:
    """What the job says of itself: its data if text, ``data['message']``, or the detail
    (the same rule as asyncjob.js)."""
    data = status.data
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and isinstance(data.get('message'), str):
        return data['message']
    return status.detail or ''


STATE_TEXT = {
    'queued': 'Queued',
    'running': 'Running',
    'succeeded': 'Completed',
    'failed': 'Failed',
    'cancelled': 'Cancelled',
    'not_found': 'Not found',
    'unknown': 'Unknown',
}


def time_text(ts: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS`` in UTC; empty for ``None``."""
    if ts is None:
        return ''
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M:%S')


def took_text(status: JobStatus) -> str:
    """How long a finished job ran, ``1.5 s``; empty if it never ran or still runs."""
    if status.started_at is None or status.finished_at is None:
        return ''
    return f'{max(status.finished_at - status.started_at, 0):.1f} s'


PAGE = Markup('''<!DOCTYPE html>
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


def breakable(name: str) -> Markup:
    """A dotted name that may wrap after its dots."""
    # A dotted name may wrap after each dot, and only there: a narrow column then
    # shows "tgext.asyncjob." / "demo.app.write_rows", never "dem" / "o.app".
    return Markup('.<wbr>').join(name.split('.'))
