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
from dags import sql
from dags.models import Attempt, ExecutionMode
from workers.models import Worker


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


def fleet_load() -> tuple[dict[str, int], set[str]]:
    """What dispatch needs of the fleet in one query: held attempts per worker (as
    `held_attempts`) and the ids of workers an operator drains."""
    held: dict[str, int] = {}
    draining: set[str] = set()
    rows = sql.fetch(
        f"SELECT worker_id, COUNT(*) FROM {sql.table(Attempt)} "
        f"WHERE status IN ({sql.marks(len(ACTIVE_ATTEMPT_STATUSES))}) AND mode = %s "
        "GROUP BY worker_id "
        f"UNION ALL SELECT id, -1 FROM {sql.table(Worker)} WHERE draining = %s",
        [*ACTIVE_ATTEMPT_STATUSES, ExecutionMode.DISTRIBUTED, True],
    )
    for worker_id, n in rows:
        if n < 0:
            draining.add(worker_id)
        else:
            held[worker_id] = n
    return held, draining
