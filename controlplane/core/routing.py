"""Where a run goes, as pure rules: local or distributed, which worker, or why it waits.

Plain data in, plain data out, so every rule has a table test (SPEC section 5). The dispatch
step that applies them to the database is `controlplane.dispatch`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.core.health import DISPATCHABLE, OFFLINE
from controlplane.core.labels import matches
from controlplane.core.spec import Dag
from controlplane.core.states import ExecutionMode, WaitingReason


@dataclass(frozen=True)
class ModeDecision:
    mode: str  # an ExecutionMode value (the default mode comes from config as a string)
    why: str  # "forced_local" | "selector" | "default_mode"
    selector: Mapping[str, str] = field(default_factory=dict)


def decide_execution_mode(
    dag: Dag, *, step_selector: Mapping[str, str], default_mode: str
) -> ModeDecision:
    """SPEC section 5: forced local, else a non-empty selector, else the default mode.

    A step-level selector (on the parent's call step) overrides the child DAG's own.
    """
    if dag.force_local:
        return ModeDecision(ExecutionMode.LOCAL, "forced_local")
    selector = dict(step_selector) if step_selector else dict(dag.worker_selector)
    if selector:
        return ModeDecision(ExecutionMode.DISTRIBUTED, "selector", selector)
    return ModeDecision(default_mode, "default_mode")


@dataclass(frozen=True)
class WorkerView:
    """What dispatch needs to know about one worker, as of now."""

    id: str
    labels: Mapping[str, str]
    health: str
    draining: bool
    free_slots: int


def waiting_reason(selector: Mapping[str, str], workers: Sequence[WorkerView]) -> WaitingReason:
    """Why no worker can take a run with this selector (SPEC section 5), most basic first."""
    known = [w for w in workers if w.health != OFFLINE]
    if not known:
        return WaitingReason.NO_WORKERS
    matching = [w for w in known if matches(w.labels, selector)]
    if not matching:
        return WaitingReason.NO_MATCHING_WORKER
    healthy = [w for w in matching if w.health in DISPATCHABLE]
    if not healthy:
        return WaitingReason.MATCHING_WORKERS_UNHEALTHY
    if all(w.draining for w in healthy):
        return WaitingReason.MATCHING_WORKERS_DRAINING
    return WaitingReason.MATCHING_WORKERS_BUSY


def can_take_a_run(worker: WorkerView) -> bool:
    return worker.health in DISPATCHABLE and not worker.draining and worker.free_slots > 0


def choose_worker(
    selector: Mapping[str, str], workers: Sequence[WorkerView]
) -> tuple[WorkerView | None, int]:
    """The matching, dispatchable worker with the most free slots, and how many matched.

    Most-free-first spreads runs across equal workers; ties break on id for determinism.
    """
    matching = [w for w in workers if w.health != OFFLINE and matches(w.labels, selector)]
    candidates = [w for w in matching if can_take_a_run(w)]
    if not candidates:
        return None, len(matching)
    best = min(candidates, key=lambda w: (-w.free_slots, w.id))
    return best, len(matching)
