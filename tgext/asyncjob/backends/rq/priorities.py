"""Priorities on rq: three RQ queues per backend, which workers take highest first.

RQ has no priorities within a queue, but a worker listening on several queues always
takes from the first that has a job, in the order given. So a job with
``priority > 0`` goes to ``<queue_name>:high``, ``priority < 0`` to
``<queue_name>:low``, and ``0`` or none to ``<queue_name>`` itself; the worker command
listens on :func:`queue_names`: high, default, low. Within a band jobs run in the
order queued (priorities 1 and 100 are both "high").
"""
from __future__ import annotations

HIGH, LOW = ':high', ':low'


def queue_names(base: str) -> list[str]:
    """The RQ queues of the backend whose queue is ``base``, in the order workers
    take from them."""
    return [base + HIGH, base, base + LOW]


def queue_for(base: str, priority: int | None) -> str:
    """The RQ queue a job with ``priority`` goes to."""
    if not priority:
        return base
    return base + (HIGH if priority > 0 else LOW)
