"""What an authenticated worker may do on each RPC: its own attempts, its own run trees.

Attempt tokens are bound to the worker they were assigned to, so a token seen elsewhere
(or guessed) is worth nothing to another worker. Each check raises `Denied` with the
one-line reason the caller is told (PERMISSION_DENIED at the gRPC edge).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controlplane.core.events import RUN_FINISHED, STEP_FINISHED, Event
from controlplane.core.spec import DagSpecError, parse_stored_dag_file
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from dags.models import Attempt, DagRun, RunStatus, StepStatus
from workers.presence import Running

_STEP_STATUSES = frozenset(str(s) for s in StepStatus)
_RUN_END_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class Denied(Exception):
    pass


@dataclass(frozen=True)
class ChildCall:
    dag_name: str
    selector: Mapping[str, str]


def own_running(worker_id: str, running: list[Running]) -> list[Running]:
    """The heartbeat's running attempts that were assigned to this worker; others dropped."""
    if not running:
        return []  # an idle worker's heartbeat: no query to build (most of a fleet's calls)
    tokens = [r.attempt_token for r in running]
    mine = set(
        Attempt.objects.filter(token__in=tokens, worker_id=worker_id).values_list(
            "token", flat=True
        )
    )
    return [r for r in running if r.attempt_token in mine]


def check_report_sequence(events: Iterable[Event]) -> None:
    """Every event names a valid status and follows on in sequence. Whose attempts they are
    is checked when the report is applied, in the query that reads the attempts
    (`Coordinator.report` with `worker_id`)."""
    last: dict[str, int] = {}
    for event in events:
        if event.kind == STEP_FINISHED and event.status not in _STEP_STATUSES:
            raise Denied(f'unknown step status "{event.status[:40]}" (seq {event.seq})')
        if event.kind == RUN_FINISHED and event.status not in _RUN_END_STATUSES:
            raise Denied(f'unknown run status "{event.status[:40]}" (seq {event.seq})')
        # Gaps are allowed (the worker's outbox may drop log chunks when full); going back
        # or repeating within one report is not.
        if event.seq <= last.get(event.attempt_token, 0):
            raise Denied(f"sequence number {event.seq} does not follow on")
        last[event.attempt_token] = event.seq


def check_child_call(
    worker_id: str, *, parent_run_id: str, parent_token: str, step: str, dag_name: str
) -> ChildCall:
    """The child the parent's stored spec calls at `step`, if this worker holds the parent."""
    if not parent_token:
        raise Denied("parent_attempt_token is required")
    attempt = (
        Attempt.objects.select_related("run")
        .filter(token=parent_token, run_id=parent_run_id, worker_id=worker_id)
        .first()
    )
    if attempt is None:
        raise Denied(f'run "{parent_run_id[:80]}" is not assigned to this worker')
    parent = attempt.run
    if parent.attempt != attempt.number or attempt.status not in ACTIVE_ATTEMPT_STATUSES:
        raise Denied(f'attempt of run "{parent.id}" is no longer current')
    try:
        dag = parse_stored_dag_file(parent.spec, source=parent.source).get(parent.dag_name)
    except DagSpecError:
        dag = None
    found = [s for s in dag.steps if s.name == step and s.call] if dag is not None else []
    if not found:
        raise Denied(f'run "{parent.id}" has no sub-DAG step "{step[:80]}"')
    call = found[0].call or ""
    # A `call: ${VAR}` target is only known once the worker expanded it; the name rules of
    # child_dag_file still apply to it.
    return ChildCall(
        dag_name=dag_name if "$" in call else call, selector=dict(found[0].worker_selector)
    )


def check_in_tree(worker_id: str, run_id: str) -> DagRun:
    """The run, if it belongs to a run tree this worker currently holds an attempt in."""
    run = DagRun.objects.filter(pk=run_id).first()
    if run is not None:
        root = run.root_id or run.id
        held = Attempt.objects.filter(
            worker_id=worker_id, status__in=ACTIVE_ATTEMPT_STATUSES
        ).filter(run__root_id=root) | Attempt.objects.filter(
            worker_id=worker_id, status__in=ACTIVE_ATTEMPT_STATUSES, run_id=root
        )
        if held.exists():
            return run
    raise Denied(f'run "{run_id[:80]}" is not in a run tree of this worker')
