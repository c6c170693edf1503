"""Where a run goes: the local/distributed decision, worker choice, and the dispatch step.

The first three functions are pure (plain data in, plain data out) so every rule has a
table test; `dispatch_once` is the one place that claims queued runs for workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from workers.health import DISPATCHABLE, OFFLINE
from workers.labels import matches

if TYPE_CHECKING:
    from dags.models import Attempt, DagRun
    from dags.spec import Dag

logger = logging.getLogger(__name__)

LOCAL = "local"
DISTRIBUTED = "distributed"


@dataclass(frozen=True)
class ModeDecision:
    mode: str  # "local" | "distributed"
    why: str  # "forced_local" | "selector" | "default_mode"
    selector: Mapping[str, str] = field(default_factory=dict)


def decide_execution_mode(
    dag: Dag, *, step_selector: Mapping[str, str], default_mode: str
) -> ModeDecision:
    """SPEC section 5: forced local, else a non-empty selector, else the default mode.

    A step-level selector (on the parent's call step) overrides the child DAG's own.
    """
    if dag.force_local:
        return ModeDecision(LOCAL, "forced_local")
    selector = dict(step_selector) if step_selector else dict(dag.worker_selector)
    if selector:
        return ModeDecision(DISTRIBUTED, "selector", selector)
    return ModeDecision(default_mode, "default_mode")


@dataclass(frozen=True)
class WorkerView:
    """What dispatch needs to know about one worker, as of now."""

    id: str
    labels: Mapping[str, str]
    health: str
    draining: bool
    free_slots: int


def waiting_reason(selector: Mapping[str, str], workers: Sequence[WorkerView]) -> str:
    """Why no worker can take a run with this selector (SPEC section 5), most basic first."""
    known = [w for w in workers if w.health != OFFLINE]
    if not known:
        return "no_workers"
    matching = [w for w in known if matches(w.labels, selector)]
    if not matching:
        return "no_matching_worker"
    healthy = [w for w in matching if w.health in DISPATCHABLE]
    if not healthy:
        return "matching_workers_unhealthy"
    if all(w.draining for w in healthy):
        return "matching_workers_draining"
    return "matching_workers_busy"


def choose_worker(
    selector: Mapping[str, str], workers: Sequence[WorkerView]
) -> tuple[WorkerView | None, int]:
    """The matching, dispatchable worker with the most free slots, and how many matched.

    Most-free-first spreads runs across equal workers; ties break on id for determinism.
    """
    matching = [w for w in workers if w.health != OFFLINE and matches(w.labels, selector)]
    candidates = [
        w for w in matching if w.health in DISPATCHABLE and not w.draining and w.free_slots > 0
    ]
    if not candidates:
        return None, len(matching)
    best = min(candidates, key=lambda w: (-w.free_slots, w.id))
    return best, len(matching)


def dispatch_once(
    *,
    now: datetime,
    workers: list[WorkerView],
    deliver: Callable[[Attempt], None],
    limit: int = 200,
) -> int:
    """Assign queued distributed runs, oldest first, to matching workers with free slots.

    Each claim is a compare-and-set on the run row, so two dispatchers can never hand the
    same attempt to two workers. Runs nobody can take get their waiting reason updated (and
    a decision recorded when the reason changes). Returns how many runs were assigned.
    """
    from django.db import transaction

    from dags.models import DagRun, ExecutionMode, RunStatus

    views = {w.id: w for w in workers}
    claimed: list[Attempt] = []
    # One transaction for the whole pass: with SQLite's single write lock, the number of
    # write transactions per run is what bounds throughput. Mailboxes are filled only after
    # the commit, so no worker can see an attempt that might still roll back.
    with transaction.atomic():
        queued = list(
            DagRun.objects.filter(
                status=RunStatus.QUEUED,
                execution_mode=ExecutionMode.DISTRIBUTED,
                cancel_requested=False,
            )
            .defer("spec")
            .order_by("queued_at", "id")[:limit]
        )
        for run in queued:
            pool = list(views.values())
            if run.waiting_reason == "matching_workers_busy" and not any(
                w.free_slots for w in pool
            ):
                continue  # nothing can change for it until a slot frees up
            worker, matched = choose_worker(run.worker_selector, pool)
            if worker is None:
                _record_waiting(
                    run,
                    waiting_reason(run.worker_selector, pool),
                    now=now,
                    considered=len(pool),
                    matched=matched,
                )
                continue
            attempt = _assign(run, worker, now=now, considered=len(pool), matched=matched)
            if attempt is None:
                continue
            views[worker.id] = WorkerView(
                worker.id, worker.labels, worker.health, worker.draining, worker.free_slots - 1
            )
            claimed.append(attempt)
    for attempt in claimed:
        deliver(attempt)
    return len(claimed)


def _assign(
    run: DagRun, worker: WorkerView, *, now: datetime, considered: int, matched: int
) -> Attempt | None:
    from controlplane.models import DecisionEvent
    from dags.runs import record_decision, start_attempt

    attempt = start_attempt(run, now=now, mode=DISTRIBUTED, worker_id=worker.id)
    if attempt is None:
        return None  # another dispatcher, or a cancel, got there first
    record_decision(
        run,
        event=DecisionEvent.ASSIGNED,
        now=now,
        chosen_worker=worker.id,
        workers_considered=considered,
        workers_matched=matched,
        detail=f"attempt {attempt.number} assigned to {worker.id} "
        f"({matched} of {considered} workers matched)",
    )
    logger.info("run %s attempt %d assigned to %s", run.id, attempt.number, worker.id)
    return attempt


def _record_waiting(
    run: DagRun, reason: str, *, now: datetime, considered: int, matched: int
) -> None:
    from controlplane.models import DecisionEvent
    from dags.models import DagRun as Model
    from dags.runs import record_decision

    if reason == run.waiting_reason:
        return
    Model.objects.filter(pk=run.pk, status=run.status).update(waiting_reason=reason)
    run.waiting_reason = reason
    record_decision(
        run,
        event=DecisionEvent.WAITING,
        now=now,
        waiting_reason=reason,
        workers_considered=considered,
        workers_matched=matched,
        detail=f"waiting: {reason.replace('_', ' ')}",
    )
