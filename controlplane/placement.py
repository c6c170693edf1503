"""Why a queued run is not running: per-worker placement diagnosis (like Kubernetes'
`0/5 nodes are available: 3 node(s) didn't match node selector`).

`diagnose` is pure (plain data in, plain data out) so every rule has a table test;
`run_placement` reads the fleet from the database, so every web replica and the `status`
command give the same answer whichever coordinator holds the fleet in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controlplane.core.config import TimingConfig
from controlplane.core.health import DISPATCHABLE, OFFLINE, health_status
from controlplane.core.labels import format_labels
from dags.models import DagRun, ExecutionMode, RunStatus
from workers.load import held_attempts
from workers.models import Worker

# Reasons in the order the summary lists them: the most basic mismatch first.
LACKS = "lacks"
REASON_ORDER = ("lack", "offline", "unhealthy", "draining", "busy")


@dataclass(frozen=True)
class FleetWorker:
    """One worker as placement sees it: labels, health, drain flag and slot use."""

    id: str
    labels: Mapping[str, str]
    health: str
    draining: bool
    busy: int
    capacity: int


def missing_labels(labels: Mapping[str, str], selector: Mapping[str, str]) -> list[str]:
    """The selector's `key=value` pairs this worker does not carry (sorted by key)."""
    return [f"{k}={v}" for k, v in sorted(selector.items()) if k not in labels or labels[k] != v]


def worker_verdict(worker: FleetWorker, selector: Mapping[str, str]) -> dict[str, Any]:
    """`{id, matches, missing, reason}`; reason is "" when the worker could take the run now.

    Labels are judged first (a worker that can never take the run says so even while it is
    offline), then health, drain, and free slots: the same rules dispatch applies.
    """
    missing = missing_labels(worker.labels, selector)
    if missing:
        reason = f"lacks {','.join(missing)}"
    elif worker.health == OFFLINE:
        reason = "offline"
    elif worker.health not in DISPATCHABLE:
        reason = "unhealthy"
    elif worker.draining:
        reason = "draining"
    elif worker.busy >= worker.capacity:
        reason = f"busy ({worker.busy}/{worker.capacity})"
    else:
        reason = ""
    return {"id": worker.id, "matches": not missing, "missing": missing, "reason": reason}


def _summary_key(reason: str) -> tuple[int, str]:
    kind = reason.split(" ", 1)[0]
    kind = "lack" if kind == LACKS else kind
    return REASON_ORDER.index(kind), reason


def summarize(verdicts: Sequence[Mapping[str, Any]]) -> str:
    """`0 of 5 workers can take it: 3 lack gpu=true, 1 draining, 1 busy (10/10)`."""
    total = len(verdicts)
    able = sum(1 for v in verdicts if not v["reason"])
    head = f"{able} of {total} worker{'' if total == 1 else 's'} can take it"
    if total == 0:
        return f"{head}: no workers registered"
    counts: dict[str, int] = {}
    for v in verdicts:
        if v["reason"]:
            counts[v["reason"]] = counts.get(v["reason"], 0) + 1
    if not counts:
        return head
    parts = []
    for reason in sorted(counts, key=lambda r: (_summary_key(r)[0], -counts[r], r)):
        n = counts[reason]
        # "1 lacks gpu=true" but "3 lack gpu=true"; other reasons read the same either way.
        text = reason if n == 1 or not reason.startswith(LACKS) else "lack" + reason[len(LACKS) :]
        parts.append(f"{n} {text}")
    return f"{head}: {', '.join(parts)}"


def diagnose(selector: Mapping[str, str], workers: Sequence[FleetWorker]) -> dict[str, Any]:
    """The placement of a run with this selector over this fleet: summary and per worker."""
    verdicts = [worker_verdict(w, selector) for w in sorted(workers, key=lambda w: w.id)]
    return {
        "selector": format_labels(selector),
        "summary": summarize(verdicts),
        "can_take": sum(1 for v in verdicts if not v["reason"]),
        "workers": verdicts,
    }


def fleet_from_db(*, now: datetime, timing: TimingConfig) -> list[FleetWorker]:
    """Every known worker with its health (from its last heartbeat) and held attempts."""
    held = held_attempts()
    rows = Worker.objects.order_by("id").values_list(
        "id", "labels", "last_heartbeat_at", "draining", "max_active_runs"
    )
    return [
        FleetWorker(
            id=wid,
            labels=labels or {},
            health=health_status(seen, now=now, timing=timing),
            draining=draining,
            busy=held.get(wid, 0),
            capacity=capacity,
        )
        for wid, labels, seen, draining, capacity in rows
    ]


def needs_placement(run: DagRun) -> bool:
    """Only a queued distributed run waits for a worker; others have nothing to diagnose."""
    return (
        run.status == RunStatus.QUEUED
        and run.execution_mode == ExecutionMode.DISTRIBUTED
        and not run.cancel_requested
    )


def run_placement(run: DagRun, *, now: datetime, timing: TimingConfig) -> dict[str, Any] | None:
    """The run's placement diagnosis, or None when it is not waiting for a worker."""
    if not needs_placement(run):
        return None
    return diagnose(run.worker_selector or {}, fleet_from_db(now=now, timing=timing))
