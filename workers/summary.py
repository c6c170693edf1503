"""Workers as operators see them (SPEC section 9 shape): the API, the Workers page and the
`workers` command all read this, so the three always agree."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from controlplane.core.config import TimingConfig
from controlplane.core.health import health_status
from dags.models import DagRun, RunStatus
from dags.runs import iso
from workers.models import Worker


def running_tasks_by_worker(worker_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    runs = (
        DagRun.objects.filter(status=RunStatus.RUNNING, worker_id__in=worker_ids)
        .select_related("root", "parent")
        .order_by("started_at", "queued_at")
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        root = run.root or run
        out.setdefault(run.worker_id, []).append(
            {
                "dag_name": run.dag_name,
                "dag_run_id": run.id,
                "root_dag_run_name": root.dag_name,
                "root_dag_run_id": root.id,
                "parent_dag_run_name": run.parent.dag_name if run.parent else "",
                "parent_dag_run_id": run.parent_id or "",
                "started_at": iso(run.started_at or run.queued_at),
            }
        )
    return out


def worker_summaries(
    *,
    now: datetime,
    timing: TimingConfig,
    selector: Mapping[str, str] | None = None,
    health: str | None = None,
    worker_id: str | None = None,
) -> list[dict[str, Any]]:
    qs = Worker.objects.all()
    if selector:
        qs = qs.matching(selector)
    if worker_id is not None:
        qs = qs.filter(pk=worker_id)
    workers = list(qs.order_by("id"))
    tasks = running_tasks_by_worker([w.id for w in workers])
    out = []
    for w in workers:
        state = health_status(w.last_heartbeat_at, now=now, timing=timing)
        if health and state != health.upper():
            continue
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
