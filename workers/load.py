"""What a worker is busy with: the one definition, shared by dispatch, the API, the pages,
placement and the metrics.

A worker is busy with the active distributed attempts it holds. The attempt rows are what
survive a coordinator restart and what the worker's reports are checked against, so
dispatch, the operator's view and the metrics all count the same thing; a run's own
`worker_id` also names the worker of a finished or superseded attempt and is not used here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Count, QuerySet

from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from dags.models import Attempt, ExecutionMode


def active_attempts(worker_ids: Iterable[str] | QuerySet[Any] | None = None) -> QuerySet[Attempt]:
    """The attempts workers are running now (all workers, or these ids: a list or a subquery)."""
    qs = Attempt.objects.filter(status__in=ACTIVE_ATTEMPT_STATUSES, mode=ExecutionMode.DISTRIBUTED)
    if worker_ids is not None:
        qs = qs.filter(worker_id__in=worker_ids)
    return qs


def held_attempts(worker_ids: Iterable[str] | QuerySet[Any] | None = None) -> dict[str, int]:
    """Active attempts per worker id (a worker holding none is absent)."""
    return dict(
        active_attempts(worker_ids)
        .order_by()
        .values("worker_id")
        .annotate(n=Count("id"))
        .values_list("worker_id", "n")
    )
