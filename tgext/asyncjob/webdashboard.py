"""The HTML of the jobs dashboard: counts per state, the filters form, the table with
its action buttons, the pager, a job's detail page and the notices actions leave.

Like :mod:`~tgext.asyncjob.webview`, escaped small strings rather than templates, and
nothing here reads the request: :mod:`~tgext.asyncjob.web` passes what it found.
Action buttons are small POST forms carrying the CSRF token (:mod:`.webcsrf`).
"""
from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Any, Mapping, Sequence

from markupsafe import Markup

from . import jsonsafe
from .job import JobState, JobStatus
from .trackers.base import STATES
from .webcsrf import FIELD
from .webview import (STATE_TEXT, breakable, error_body, error_text, message_of, percent_of,
                      time_text, took_text)

__all__ = ['ACTIONS', 'FILTER_STATES', 'Listing', 'actions_for', 'dashboard', 'detail',
           'NOTICES', 'notice_html']

#: The states a listing can be filtered by, in the order the counts bar shows them.
FILTER_STATES = STATES

#: Action -> (button text, the states of jobs it is offered for).
ACTIONS: dict[str, tuple[str, frozenset[str]]] = {
    'cancel': ('Cancel', frozenset({'queued', 'running'})),
    'retry': ('Retry', frozenset({'failed', 'cancelled'})),
    'delete': ('Delete', frozenset({'succeeded', 'failed', 'cancelled'})),
}

#: What an action's redirect says (``?notice=<code>&job=<id>``): fixed texts, so a
#: crafted link cannot put words on the page.
NOTICES = {
    'cancelled': 'Job {job} cancelled.',
    'cancel_requested': 'Job {job} was asked to stop: it ends when it next checks.',
    'not_cancelled': 'Job {job} was not cancelled: it had already finished.',
    'retried': 'Job {job} queued again as {new}.',
    'not_retried': 'Job {job} was not retried: only failed or cancelled jobs can be, once.',
    'deleted': 'Job {job} deleted.',
    'not_deleted': 'Job {job} was not deleted: only finished jobs can be.',
}


def actions_for(status: JobStatus) -> list[str]:
    """The actions offered for a job: by its state, and retry only once."""
    state = status.state.value
    return [name for name, (_, states) in ACTIONS.items() if state in states
            and not (name == 'retry' and status.retried_as)]


def _button(base: str, action: str, jobid: str, token: str, back: str) -> Markup:
    text = ACTIONS[action][0]
    return Markup(
        '<form class="asyncjob-action" method="post" action="{base}/{action}/{id}">'
        '<input type="hidden" name="{field}" value="{token}">'
        '<input type="hidden" name="next" value="{back}">'
        '<button type="submit" name="action" value="{action}" data-action="{action}"'
        ' aria-label="{text} job {short}">{text}</button></form>'
    ).format(base=base, action=action, id=jobid, field=FIELD, token=token, back=back,
             text=text, short=jobid[:12])


def buttons(base: str, status: JobStatus, token: str | None, back: str) -> Markup:
    """The action buttons for ``status``: none without a token (actions not offered)."""
    if token is None:
        return Markup('')
    return Markup('').join(_button(base, action, status.id, token, back)
                           for action in actions_for(status))


def notice_html(code: str, jobid: str, new: str, base: str) -> Markup:
    """The notice an action's redirect asked for; nothing for an unknown code."""
    text = NOTICES.get(code)
    if text is None:
        return Markup('')

    def link(value: str) -> Markup:
        return Markup('<a href="{}/job/{}"><code>{}</code></a>').format(base, value, value[:12])
    return Markup('<p class="asyncjob-notice" role="status">{}</p>\n').format(
        Markup(text).format(job=link(jobid), new=link(new) if new else ''))


@dataclasses.dataclass(frozen=True)
class Listing:
    """One page of the dashboard, as the controller found it."""

    jobs: Sequence[JobStatus]
    counts: Mapping[str, int]
    state: str | None
    name: str | None
    offset: int
    limit: int
    has_more: bool

    def query(self, **changes: Any) -> str:
        """The query string of this listing with ``changes`` (``None`` drops a key)."""
        params = {'state': self.state, 'name': self.name, 'offset': self.offset or None,
                  'limit': self.limit if self.limit != 50 else None}
        params.update(changes)
        kept = {k: v for k, v in params.items() if v not in (None, '')}
        return '?' + urllib.parse.urlencode(kept) if kept else ''


def _counts_bar(base: str, listing: Listing) -> Markup:
    total = sum(listing.counts.get(state, 0) for state in FILTER_STATES)
    items = [(None, 'All', total)] + [
        (state, STATE_TEXT[state], listing.counts.get(state, 0)) for state in FILTER_STATES]
    links = []
    for state, text, count in items:
        current = Markup(' aria-current="page"') if state == listing.state else Markup('')
        links.append(Markup(
            '<li><a href="{base}/jobs{query}" data-count-state="{key}"{current}>{text} '
            '<span class="asyncjob-count">{count}</span></a></li>'
        ).format(base=base, query=listing.query(state=state, offset=None), key=state or 'all',
                 current=current, text=text, count=count))
    return Markup('<nav aria-label="Jobs by state"><ul class="asyncjob-counts">{}</ul></nav>\n'
                  ).format(Markup('').join(links))


def _filters(base: str, listing: Listing) -> Markup:
    options = [Markup('<option value="">Any state</option>')]
    for state in FILTER_STATES:
        selected = Markup(' selected') if state == listing.state else Markup('')
        options.append(Markup('<option value="{}"{}>{}</option>').format(
            state, selected, STATE_TEXT[state]))
    limit = (Markup('<input type="hidden" name="limit" value="{}">').format(listing.limit)
             if listing.limit != 50 else Markup(''))
    return Markup(
        '<form class="asyncjob-filters" method="get" action="{base}/jobs" role="search">'
        '<label>State <select name="state">{options}</select></label> '
        '<label>Callable <input type="search" name="name" value="{name}" '
        'placeholder="module.function"></label>{limit} '
        '<button type="submit">Filter</button> <a href="{base}/jobs">Clear</a></form>\n'
    ).format(base=base, options=Markup('').join(options), name=listing.name or '', limit=limit)


def _pager(base: str, listing: Listing) -> Markup:
    if not listing.jobs and not listing.offset:
        return Markup('')
    first = listing.offset + 1
    last = listing.offset + len(listing.jobs)
    newer = older = Markup('')
    if listing.offset > 0:
        newer = Markup('<a rel="prev" href="{}/jobs{}">Newer</a>').format(
            base, listing.query(offset=max(listing.offset - listing.limit, 0) or None))
    if listing.has_more:
        older = Markup('<a rel="next" href="{}/jobs{}">Older</a>').format(
            base, listing.query(offset=listing.offset + listing.limit))
    shown = (Markup('Jobs {}&ndash;{}').format(first, last) if listing.jobs
             else Markup('No jobs here'))
    return Markup('<nav class="asyncjob-pager" aria-label="Pages">{newer} '
                  '<span class="asyncjob-range">{shown}</span> {older}</nav>\n').format(
        newer=newer, shown=shown, older=older)


def _table(base: str, jobs: Sequence[JobStatus], details: bool, token: str | None,
           back: str) -> Markup:
    rows = []
    for status in jobs:
        percent = percent_of(status)
        state = status.state.value
        rows.append(Markup(
            '<tr data-state="{state}" data-job="{id}"><td><a href="{base}/job/{id}">'
            '<code>{short}</code></a></td><td class="asyncjob-name">{name}</td>'
            '<td><span class="asyncjob-badge">{state_text}</span></td>'
            '<td>{percent}</td><td class="asyncjob-time">{enqueued}</td>'
            '<td class="asyncjob-time">{took}</td><td>{error}</td>'
            '<td class="asyncjob-actions">{buttons}</td></tr>'
        ).format(state=state, base=base, id=status.id, short=status.id[:12],
                 name=breakable(status.name or ''), state_text=STATE_TEXT.get(state, state),
                 percent='' if percent is None else f'{percent}%',
                 enqueued=time_text(status.enqueued_at), took=took_text(status),
                 error=error_text(error_body(status.error, details)) or status.detail,
                 buttons=buttons(base, status, token, back)))
    return Markup(
        '<div class="asyncjob-scroll"><table class="asyncjob-jobs">\n<thead><tr>'
        '<th scope="col">Job</th><th scope="col">Callable</th><th scope="col">State</th>'
        '<th scope="col">Progress</th><th scope="col">Queued (UTC)</th><th scope="col">Took</th>'
        '<th scope="col">Detail</th><th scope="col">Actions</th></tr></thead>\n<tbody>\n{}\n'
        '</tbody>\n</table></div>\n'
    ).format(Markup('\n').join(rows))


def dashboard(base: str, listing: Listing, details: bool, token: str | None,
              back: str, notice: Markup = Markup('')) -> Markup:
    """The jobs page's body: counts, filters, notice, table (or why empty), pager.
    ``back`` is this page's own URL, where the buttons' actions come back to."""
    if listing.jobs:
        table = _table(base, listing.jobs, details, token, back)
    elif listing.state or listing.name or listing.offset:
        table = Markup('<p>No jobs match.</p>\n')
    else:
        table = Markup('<p>No jobs yet.</p>\n')
    return (_counts_bar(base, listing) + _filters(base, listing) + notice + table
            + _pager(base, listing))


def _link(base: str, jobid: Any) -> Markup:
    if not isinstance(jobid, str) or not jobid:
        return Markup('')
    return Markup('<a href="{}/job/{}"><code>{}</code></a>').format(base, jobid, jobid)


def _pre(value: Any) -> Markup:
    return Markup('<pre>{}</pre>').format(jsonsafe.dumps(value))


def detail(base: str, status: JobStatus, details: bool, show_arguments: bool,
           token: str | None, back: str, notice: Markup = Markup('')) -> Markup:
    """A job's detail page: every field of its status, links to the jobs it is a retry
    of or was retried as, its arguments only when ``show_arguments``, its
    error as :func:`error_body` shows it (``details``), and the action buttons."""
    state = status.state.value
    percent = percent_of(status)
    error = error_body(status.error, details)
    rows: list[tuple[str, Markup | str]] = [
        ('Id', Markup('<code>{}</code>').format(status.id)),
        ('Callable', Markup('<code>{}</code>').format(breakable(status.name or ''))),
        ('State', Markup('<span class="asyncjob-badge" data-state="{}">{}</span>').format(
            state, STATE_TEXT.get(state, state))),
        ('Progress', '' if percent is None else f'{percent}%'),
        ('Message', message_of(status)),
        ('Queued (UTC)', time_text(status.enqueued_at)),
        ('Started (UTC)', time_text(status.started_at)),
        ('Finished (UTC)', time_text(status.finished_at)),
        ('Took', took_text(status)),
        ('Attempt', str(status.attempt) if status.attempt else ''),
        ('Retry of', _link(base, status.retry_of)),
        ('Retried as', _link(base, status.retried_as)),
    ]
    if show_arguments:
        recorded = status.args is not None or status.kwargs is not None
        rows.append(('Arguments', _pre({'args': list(status.args or ()),
                                        'kwargs': status.kwargs or {}})
                     if recorded else 'not recorded'))
    else:
        rows.append(('Arguments', 'hidden'))
    if status.state is JobState.SUCCEEDED:
        rows.append(('Result', _pre(status.result)))
    if error is not None:
        rows.append(('Error', error_text(error)))
    if status.detail:
        rows.append(('Detail', status.detail))
    items = Markup('').join(
        Markup('<div data-field="{key}"><dt>{key}</dt><dd>{value}</dd></div>').format(
            key=key, value=value) for key, value in rows if value)
    traceback = Markup('')
    if error is not None and error.get('traceback'):
        traceback = Markup('<details class="asyncjob-traceback"><summary>Traceback'
                           '</summary><pre>{}</pre></details>\n').format(error['traceback'])
    return Markup(
        '{notice}<dl class="asyncjob-detail">{items}</dl>\n{traceback}'
        '<div class="asyncjob-actions">{buttons}</div>\n'
        '<p><a href="{base}/progress/{id}">Progress page</a> &middot; '
        '<a href="{base}/jobs">All jobs</a></p>\n'
    ).format(notice=notice, items=items, traceback=traceback,
             buttons=buttons(base, status, token, back), base=base, id=status.id)
