"""Proto <-> coordinator data for the servicer (server side only)."""

from __future__ import annotations

from controlplane.coordinator import TaskPayload
from controlplane.core.labels import LabelError, check_host, check_labels, check_worker_id
from controlplane.core.rpc.events import from_ms, ms
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from workers.presence import Identity, Running, WorkerState


def identity_from_pb(info: pb.WorkerInfo) -> Identity:
    """The worker's identity; LabelError (one line) if any part is out of bounds."""
    if info.max_active_runs < 0 or info.pid < 0:
        raise LabelError("worker.pid and worker.max_active_runs must not be negative")
    return Identity(
        id=check_worker_id(info.worker_id),
        host=check_host(info.host),
        pid=info.pid,
        labels=check_labels(info.labels),
        max_active_runs=info.max_active_runs,
        started_at=from_ms(info.started_at_ms),
    )


def identity_to_pb(who: Identity) -> pb.WorkerInfo:
    return pb.WorkerInfo(
        worker_id=who.id,
        host=who.host,
        pid=who.pid,
        labels=dict(who.labels),
        max_active_runs=who.max_active_runs,
        started_at_ms=ms(who.started_at),
    )


def running_from_pb(items: list[pb.RunningTask]) -> list[Running]:
    return [Running(r.dag_run_id, r.attempt_token, from_ms(r.started_at_ms)) for r in items]


def task_to_pb(task: TaskPayload) -> pb.Task:
    return pb.Task(
        dag_run_id=task.dag_run_id,
        dag_name=task.dag_name,
        attempt=task.attempt,
        attempt_token=task.attempt_token,
        definition=task.definition,
        params=dict(task.params),
        root_dag_run_id=task.root_dag_run_id,
        root_dag_name=task.root_dag_name,
        parent_dag_run_id=task.parent_dag_run_id,
        parent_dag_name=task.parent_dag_name,
        completed_steps=[
            pb.CompletedStep(name=name, status=status, exit_code=code, output_value=output)
            for name, status, code, output in task.completed
        ],
        source=task.source,
    )


def identity_of(state: WorkerState) -> Identity:
    return Identity(
        id=state.id,
        host=state.host,
        pid=state.pid or 0,
        labels=state.labels,
        max_active_runs=state.max_active_runs,
        started_at=state.started_at,
    )
