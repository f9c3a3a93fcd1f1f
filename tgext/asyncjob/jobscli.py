"""``python -m tgext.asyncjob jobs`` and ``gearbox asyncjob-jobs``: operate on an
application's jobs from the command line.

::

    gearbox asyncjob-jobs -c production.ini list --state failed --limit 20
    gearbox asyncjob-jobs -c production.ini show JOBID
    gearbox asyncjob-jobs -c production.ini cancel JOBID
    gearbox asyncjob-jobs -c production.ini retry JOBID
    gearbox asyncjob-jobs -c production.ini delete JOBID
    gearbox asyncjob-jobs -c production.ini purge --older-than 7d
    gearbox asyncjob-jobs -c production.ini counts
    gearbox asyncjob-jobs -c production.ini health

The application is loaded from its .ini as the worker command loads it, but inside
:func:`~tgext.asyncjob.tgwiring.operating_only`: its queue runs nothing here (no worker
threads, no periodic jobs). Every action takes ``--json`` (one JSON document on
stdout, for scripts); without it the output is a table. Exit status: 0 done, 1 the
action was refused (no such job, wrong state, an unhealthy deployment: the reason on
stderr, one line), 2 a mistake in the command line or the configuration.
"""
from __future__ import annotations

import argparse
import datetime
import re
import sys
from typing import Any, Callable, TextIO

from . import jsonsafe, operations
from .errors import AsyncJobError
from .job import JobState, JobStatus
from .trackers.base import STATES

#: Seconds per unit of a ``--older-than`` duration.
UNITS = {'': 1, 's': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}
_PART = re.compile(r'(\d+(?:\.\d+)?)\s*([smhdw]?)')

#: Exit status of a refused action (no such job, wrong state, unhealthy).
REFUSED = 1


class Refused(Exception):
    """The action could not be done; the message says why (exit status 1)."""


def duration(text: str) -> float:
    """Seconds in ``text``: ``3600``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or a sum
    such as ``1d12h``; ``argparse.ArgumentTypeError`` otherwise."""
    spec = text.strip().lower()
    pos, total = 0, 0.0
    for match in _PART.finditer(spec):
        if match.start() != pos:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if not spec or pos != len(spec):
        raise argparse.ArgumentTypeError(
            f'not a duration: {text!r} (seconds, or a number with s, m, h, d or w: 7d, 12h)')
    return total


# -- output ------------------------------------------------------------------------

def _when(epoch: float | None) -> str:
    if epoch is None:
        return '-'
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M:%S')


def table(rows: list[list[str]], header: list[str]) -> str:
    """``rows`` under ``header``, in columns as wide as their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [header] + rows
    return '\n'.join('  '.join(str(cell).ljust(width) for cell, width in zip(line, widths))
                     .rstrip() for line in lines)


def _status_dict(status: JobStatus, full: bool) -> dict[str, Any]:
    # The command line is the operator's: arguments always, tracebacks for one job.
    return status.to_dict(include_traceback=full, include_arguments=True)


def _emit(out: TextIO, options: argparse.Namespace, document: Any, text: str) -> None:
    out.write((jsonsafe.dumps(document) if options.json else text) + '\n')


# -- the actions -------------------------------------------------------------------

def do_list(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """Jobs newest first, filtered and paged."""
    jobs = operations.list_jobs(queue, options.state, options.name, options.offset,
                                options.limit)
    counts = operations.count_jobs(queue)
    rows = [[s.id, s.state.value, s.name or '-', _when(s.enqueued_at), _when(s.finished_at),
             str(s.attempt)] for s in jobs]
    text = (table(rows, ['ID', 'STATE', 'NAME', 'ENQUEUED (UTC)', 'FINISHED (UTC)',
                         'ATTEMPT']) if rows else 'no jobs')
    text += (f'\n{len(rows)} shown from {options.offset}; kept: '
             + ', '.join(f'{state} {n}' for state, n in counts.items()))
    _emit(out, options, {'jobs': [_status_dict(s, False) for s in jobs],
                         'offset': options.offset, 'limit': options.limit,
                         'counts': counts}, text)
    return 0


def do_show(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """One job, with its arguments and traceback."""
    status = queue.get_status(options.id)
    if status.state is JobState.NOT_FOUND:
        raise Refused(f'no job {options.id}: never queued, or its record expired or was '
                      'deleted')
    fields = _status_dict(status, True)
    error = fields.pop('error') or {}
    lines = [[name, '-' if value is None else jsonsafe.dumps(value)
              if not isinstance(value, str) else value] for name, value in fields.items()
             if name not in ('enqueued_at', 'started_at', 'finished_at')]
    lines += [[f'{name}', _when(getattr(status, name))]
              for name in ('enqueued_at', 'started_at', 'finished_at')]
    text = table(lines, ['FIELD', 'VALUE'])
    if error:
        text += f'\nerror: {error.get("type")}: {error.get("message")}'
        if error.get('traceback'):
            text += '\n' + error['traceback'].rstrip()
    _emit(out, options, _status_dict(status, True), text)
    return 0


def _other_process_jobs(queue: Any, what: str) -> None:
    if not queue.backend.spans_processes:
        raise Refused(f'cannot {what} from another process: the threads backend runs jobs in '
                      "the web process's own threads; use the jobs page or the API there")


def _records_visible(queue: Any) -> None:
    from .trackers.memory import MemoryProgressTracker
    if isinstance(queue.store, MemoryProgressTracker):
        raise Refused('the memory tracker keeps job records in the memory of the web '
                      'process: another process cannot see them; set asyncjob.tracker to a '
                      'Redis URL, or use the sqlalchemy or rq backend')


def do_cancel(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """Cancel a queued job, or ask a running one to stop."""
    _other_process_jobs(queue, 'cancel jobs')
    before = queue.get_status(options.id)
    if not queue.cancel(options.id):
        after = queue.get_status(options.id)
        if after.state is JobState.NOT_FOUND:
            raise Refused(f'no job {options.id}')
        raise Refused(f'job {options.id} is {after.state.value}: only queued or running jobs '
                      'can be cancelled')
    running = before.state is JobState.RUNNING
    text = (f'{options.id}: cancel requested (it is running: it stops when it next checks '
            'asyncjob_cancelled())' if running else f'{options.id}: cancelled')
    _emit(out, options, {'id': options.id, 'cancelled': not running,
                         'cancel_requested': running}, text)
    return 0


def do_retry(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """Queue a copy of a failed or cancelled job."""
    _other_process_jobs(queue, 'retry jobs')
    new = operations.retry_job(queue, options.id)
    _emit(out, options, {'id': new, 'retry_of': options.id},
          f'{options.id}: retried as {new}')
    return 0


def do_delete(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """Delete a finished job's record."""
    operations.delete_job(queue, options.id)
    _emit(out, options, {'deleted': options.id}, f'{options.id}: deleted')
    return 0


def do_purge(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """Delete the records of jobs finished more than ``--older-than`` ago."""
    purged = operations.purge_jobs(queue, options.older_than)
    _emit(out, options, {'purged': purged, 'older_than': options.older_than},
          f'purged {purged} finished job(s) older than {options.older_than:g} s')
    return 0


def do_counts(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """Jobs kept per state."""
    counts = operations.count_jobs(queue)
    _emit(out, options, counts, table([[s, str(n)] for s, n in counts.items()],
                                      ['STATE', 'JOBS']))
    return 0


def do_health(queue: Any, options: argparse.Namespace, out: TextIO) -> int:
    """0 if the tracker answers and workers are alive, else 1 with the reason."""
    from . import health
    from .cli import backend_name
    answer = health.check(queue, backend_name(queue.backend), timeout=options.timeout,
                          min_workers=options.min_workers)
    _emit(out, options, answer.to_dict(), f'{"OK" if answer.ok else "FAIL"}: {answer.reason}')
    if not answer.ok:
        raise Refused(answer.reason)
    return 0


# -- the command line --------------------------------------------------------------

def _job_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('id', metavar='ID', help='the job id')


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--state', choices=STATES, help='only jobs in this state')
    parser.add_argument('--name', metavar='NAME',
                        help="only jobs of this callable (its dotted name, e.g. "
                        "myapp.jobs.export)")
    parser.add_argument('--offset', type=int, default=0, metavar='N',
                        help='skip the N newest (default 0)')
    parser.add_argument('--limit', type=int, default=50, metavar='N',
                        help='show at most N (default 50)')


def _purge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--older-than', dest='older_than', type=duration, required=True,
                        metavar='AGE', help='finished more than AGE ago: seconds, or 90m, '
                        '12h, 7d, 2w')


def _health_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--timeout', type=float, default=2.0, metavar='S',
                        help="seconds the tracker may take to answer (default 2)")
    parser.add_argument('--min-workers', dest='min_workers', type=int, default=1,
                        metavar='N', help='live workers needed (default 1)')


Action = Callable[[Any, argparse.Namespace, TextIO], int]

#: The actions: name -> (help, arguments, run).
ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Action]] = {
    'list': ('list jobs, newest first', _list_arguments, do_list),
    'show': ('show one job: its record, arguments and traceback', _job_id, do_show),
    'cancel': ('cancel a queued job, or ask a running one to stop', _job_id, do_cancel),
    'retry': ('queue a copy of a failed or cancelled job (linked to it)', _job_id, do_retry),
    'delete': ('delete the record of a finished job', _job_id, do_delete),
    'purge': ('delete the records of jobs finished before some age', _purge_arguments,
              do_purge),
    'counts': ('count the jobs kept in each state', lambda parser: None, do_counts),
    'health': ('exit 0 if the tracker answers and workers are alive, else 1',
               _health_arguments, do_health),
}


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jobs`` options and one subparser per :data:`ACTIONS` entry."""
    parser.add_argument('-c', '--config', dest='config', metavar='INI',
                        default='development.ini',
                        help='the application .ini file (file.ini or file.ini#section; '
                        'default development.ini)')
    parser.add_argument('--app', metavar='MODULE:FACTORY',
                        help='load the application by calling this factory instead')
    parser.add_argument('-n', '--app-name', dest='app_name', metavar='NAME',
                        help='application section of the .ini file (default main)')
    actions = parser.add_subparsers(dest='action', metavar='ACTION', required=True)
    for name, (help_text, add_arguments, run) in ACTIONS.items():
        sub = actions.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.add_argument('--json', action='store_true',
                         help='print one JSON document instead of a table')
        sub.set_defaults(act=run)


def run_jobs(options: argparse.Namespace, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    """Load the application (running nothing in this process) and do the action;
    return the exit status. A refused action prints its reason on ``err``."""
    from .cli import find_queue, load_app
    from .tgwiring import operating_only
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    with operating_only(f'the jobs command ({options.action})'):
        queue = find_queue(load_app(None if options.app else options.config, options.app,
                                    options.app_name))
    try:
        if options.action != 'health':
            _records_visible(queue)
        return int(options.act(queue, options, out))
    except (Refused, AsyncJobError, ValueError, TypeError) as exc:
        # AsyncJobError: JobNotFound, JobStateError, NotRetryable, OperationUnsupported,
        # TrackerUnavailable; ValueError/TypeError: a bad --offset or --limit.
        err.write(f'asyncjob jobs {options.action}: {exc}\n')
        return REFUSED
    finally:
        queue.stop(0)


try:
    from gearbox.command import Command as _GearboxCommand
except ImportError:  # pragma: no cover - gearbox ships with TurboGears
    _GearboxCommand = None

if _GearboxCommand is not None:
    class JobsCommand(_GearboxCommand):
        """Operate on the application's asyncjob jobs (list, show, cancel, retry, delete,
        purge, counts, health), e.g. gearbox asyncjob-jobs -c production.ini list."""

        def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
            parser = super().get_parser(prog_name)
            add_jobs_arguments(parser)
            return parser

        def take_action(self, parsed_args: argparse.Namespace) -> int:
            from .cli import CommandError
            try:
                return run_jobs(parsed_args)
            except CommandError as exc:
                sys.stderr.write(f'gearbox asyncjob-jobs: error: {exc.message}\n')
                return 2
