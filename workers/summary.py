"""Workers as operators see them (SPEC section 9 shape): the API, the Workers page and the
`workers` command all read this, so the three always agree."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from controlplane.core.config import TimingConfig
from controlplane.core.health import HEALTHY, OFFLINE, UNHEALTHY, WARNING, health_status
from dags.runs import iso
from workers.load import active_attempts
from workers.models import Worker


def running_tasks_by_worker(worker_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each worker's active attempts with their runs' hierarchy: the runs that make it busy."""
    attempts = (
        active_attempts(worker_ids)
        .select_related("run", "run__root", "run__parent")
        .order_by("run__started_at", "run__queued_at", "run_id")
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for attempt in attempts:
        run = attempt.run
        root = run.root or run
        out.setdefault(attempt.worker_id, []).append(
            {
                "dag_name": run.dag_name,
                "dag_run_id": run.id,
                "root_dag_run_name": root.dag_name,
                "root_dag_run_id": root.id,
                "parent_dag_run_name": run.parent.dag_name if run.parent else "",
                "parent_dag_run_id": run.parent_id or "",
                "started_at": iso(attempt.started_at or run.started_at or run.queued_at),
            }
        )
    return out


def worker_queryset(
    *,
    now: datetime,
    timing: TimingConfig,
    selector: Mapping[str, str] | None = None,
    health: str | None = None,
    worker_id: str | None = None,
) -> QuerySet[Worker]:
    """The workers matching these filters, by id (a page of it is what callers summarize)."""
    qs = Worker.objects.all()
    if selector:
        qs = qs.matching(selector)
    if worker_id is not None:
        qs = qs.filter(pk=worker_id)
    if health:
        qs = qs.filter(health_q(health.upper(), now=now, timing=timing))
    return qs.order_by("id")


def worker_summaries(
    *,
    now: datetime,
    timing: TimingConfig,
    selector: Mapping[str, str] | None = None,
    health: str | None = None,
    worker_id: str | None = None,
) -> list[dict[str, Any]]:
    qs = worker_queryset(
        now=now, timing=timing, selector=selector, health=health, worker_id=worker_id
    )
    return summarize(list(qs), now=now, timing=timing)


def summarize(
    workers: list[Worker], *, now: datetime, timing: TimingConfig
) -> list[dict[str, Any]]:
    """The SPEC section 9 shape of these workers, with one query for all their running runs."""
    tasks = running_tasks_by_worker([w.id for w in workers])
    out = []
    for w in workers:
        state = health_status(w.last_heartbeat_at, now=now, timing=timing)
        running = tasks.get(w.id, [])
        out.append(
            {
                "id": w.id,
                "labels": w.labels,
                "health_status": state,
                "last_heartbeat": iso(w.last_heartbeat_at),
                "running_tasks": running,
                "host": w.host,
                "pid": w.pid,
                "max_active_runs": w.max_active_runs,
                "busy": len(running),
                "draining": w.draining,
                "registered_via": w.registered_via,
            }
        )
    return out


def health_q(state: str, *, now: datetime, timing: TimingConfig) -> Q:
    """`health_status(...) == state` as a filter on the indexed heartbeat time, so a page of
    one health state is a range scan instead of a pass over the whole fleet in Python."""
    warning = now - timedelta(seconds=timing.health_warning_after)
    unhealthy = now - timedelta(seconds=timing.health_unhealthy_after)
    offline = now - timedelta(seconds=timing.health_offline_after)
    if state == HEALTHY:
        return Q(last_heartbeat_at__gt=warning)
    if state == WARNING:
        return Q(last_heartbeat_at__gt=unhealthy, last_heartbeat_at__lte=warning)
    if state == UNHEALTHY:
        return Q(last_heartbeat_at__gte=offline, last_heartbeat_at__lte=unhealthy)
    if state == OFFLINE:
        return Q(last_heartbeat_at__isnull=True) | Q(last_heartbeat_at__lt=offline)
    raise ValueError(f"unknown health state {state!r}")


def search_q(query: str) -> Q:
    """Case-insensitive substring of the id or of a `key=value` label, in the database.

    Label keys never hold "=", so "gpu=tr" is a key ending in "gpu" and a value starting
    with "tr": the same answer as a substring test on the joined text.
    """
    needle = query.strip()
    if not needle:
        return Q()
    if "=" in needle:
        key, value = needle.split("=", 1)
        labels = Worker.objects.filter(
            label_rows__key__iendswith=key, label_rows__value__istartswith=value
        )
        return Q(pk__in=labels.values("pk"))
    labels = Worker.objects.filter(
        Q(label_rows__key__icontains=needle) | Q(label_rows__value__icontains=needle)
    )
    return Q(pk__icontains=needle) | Q(pk__in=labels.values("pk"))


def filtered_workers(
    *, now: datetime, timing: TimingConfig, health: str = "", query: str = ""
) -> QuerySet[Worker]:
    qs = Worker.objects.filter(search_q(query))
    if health:
        qs = qs.filter(health_q(health, now=now, timing=timing))
    return qs.order_by("id")


def fleet_overview(*, now: datetime, timing: TimingConfig) -> dict[str, int]:
    """The Workers page cards, from aggregates: the same at 10 workers or 10,000.

    Slots count only workers that are not offline: an offline worker's capacity is not
    available, and counting it would make the fleet look idle.
    """
    online = ~health_q(OFFLINE, now=now, timing=timing)
    fleet = Worker.objects.aggregate(
        workers=Count("pk"),
        healthy=Count("pk", filter=health_q(HEALTHY, now=now, timing=timing)),
        total=Sum("max_active_runs", filter=online, default=0),
    )
    active = active_attempts(Worker.objects.values("pk")).count()
    busy = active_attempts(Worker.objects.filter(online).values("pk")).count()
    total = fleet["total"]
    return {
        "workers": fleet["workers"],
        "healthy": fleet["healthy"],
        "busy": busy,
        "total": total,
        "active_tasks": active,
        "utilisation": round(busy * 100 / total) if total else 0,
    }
