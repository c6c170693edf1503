"""The coordinator: what each RPC does, and the background loops that keep runs moving.

`Coordinator` owns the in-memory fleet and the wake-up event; the gRPC servicer converts
messages and calls one method here per RPC. Loops follow one shape: call a one-step
function, then sleep on the stop event so a shutdown is never kept waiting.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.db.models import F

from controlplane.core import registry
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from controlplane.dispatch import dispatch_once
from controlplane.failover import failover_once
from dags.models import Attempt, DagRun, ExecutionMode, RunStatus
from dags.reports import ApplyResult, Event, apply_events
from dags.runs import RunError, completed_steps, get_run, request_cancel, start_child_run
from workers.load import held_attempts
from workers.models import Worker
from workers.presence import Fleet, Identity, Running, flush_fleet, purge_offline

logger = logging.getLogger(__name__)

MAX_POLL_WAIT = 20.0


@dataclass(frozen=True)
class TaskPayload:
    """A claimed attempt as handed to a worker (converted to a proto `Task` by the servicer)."""

    dag_run_id: str
    dag_name: str
    attempt: int
    attempt_token: str
    definition: str
    params: Mapping[str, str]
    root_dag_run_id: str
    root_dag_name: str
    parent_dag_run_id: str
    parent_dag_name: str
    completed: list[tuple[str, str, int | None, str | None]]  # name, status, exit, output
    source: str


@dataclass(frozen=True)
class ChildStatus:
    found: bool
    status: str = ""
    error: str = ""
    outputs: Mapping[str, str] | None = None


class Coordinator:
    def __init__(self, config: Config, *, now: datetime | None = None) -> None:
        self.config = config
        self.started_at = now or utcnow()
        self.fleet = Fleet(
            timing=config.timing,
            started_at=self.started_at,
            workers_per_credential=config.limits.workers_per_credential,
        )
        self.wake_event = threading.Event()
        self.log_dir = Path(config.paths.log_dir)

    # -- RPC handlers ----------------------------------------------------------------------

    async def poll(
        self,
        who: Identity,
        *,
        free_slots: int,
        wait: float,
        in_thread: Callable[[Callable[[], list[TaskPayload]]], Awaitable[list[TaskPayload]]],
    ) -> list[TaskPayload]:
        """Wait (on the event loop, holding no thread) for this worker's mail, up to `wait`.

        Only mail needs the database: `in_thread` runs building its tasks in the RPC pool.
        """
        state = self.fleet.record_poll(who, now=utcnow())
        if free_slots <= 0 or state.draining or state.stopping:
            return []
        # No wake-up here: slots free up through reports and workers appear through
        # heartbeats, and both wake the dispatcher; waking per poll would only make it spin.
        items = await self.fleet.wait_for_mail(
            who.id, max_items=free_slots, timeout=min(wait, MAX_POLL_WAIT)
        )
        if not items:
            return []
        return await in_thread(
            lambda: [task for item in items if (task := self._task_for(item)) is not None]
        )

    def _task_for(self, item: object) -> TaskPayload | None:
        assert isinstance(item, Attempt)
        run = DagRun.objects.select_related("root", "parent").get(pk=item.run_id)
        if run.attempt != item.number or run.status != RunStatus.RUNNING:
            return None  # cancelled or superseded while it sat in the mailbox
        root = run.root or run
        return TaskPayload(
            dag_run_id=run.id,
            dag_name=run.dag_name,
            attempt=item.number,
            attempt_token=item.token,
            definition=run.spec,
            params=run.params,
            root_dag_run_id=root.id,
            root_dag_name=root.dag_name,
            parent_dag_run_id=run.parent_id or "",
            parent_dag_name=run.parent.dag_name if run.parent else "",
            completed=[
                (s.name, s.status, s.exit_code, s.output_value or None)
                for s in completed_steps(run)
            ],
            source=run.source,
        )

    def heartbeat(
        self, who: Identity, *, running: list[Running], stopping: bool
    ) -> tuple[list[str], bool]:
        """Record liveness; return (attempt tokens the worker must cancel, draining)."""
        state = self.fleet.record_heartbeat(who, running=running, stopping=stopping, now=utcnow())
        if state.heartbeats == 1:
            self.wake()  # a newly reachable worker may be the match queued runs wait for
        return self.tokens_to_cancel([r.attempt_token for r in running]), state.draining

    def tokens_to_cancel(self, tokens: list[str]) -> list[str]:
        if not tokens:
            return []
        keep = set(
            Attempt.objects.filter(
                token__in=tokens,
                status__in=ACTIVE_ATTEMPT_STATUSES,
                run__attempt=F("number"),
                run__status=RunStatus.RUNNING,
                run__cancel_requested=False,
            ).values_list("token", flat=True)
        )
        return [t for t in tokens if t not in keep]

    def report(self, events: Iterable[Event]) -> ApplyResult:
        result = apply_events(events, log_dir=self.log_dir)
        if result.finished_runs:
            self.wake()  # a slot freed up
        return result

    def start_child(
        self,
        *,
        parent_run_id: str,
        parent_token: str,
        step: str,
        item_index: int | None,
        dag_name: str,
        params: Mapping[str, str],
        selector: Mapping[str, str],
    ) -> str:
        """Create (or find again, on a replay) the child run of a parent's sub-DAG step."""
        parent = get_run(parent_run_id)
        current = Attempt.objects.filter(
            run=parent,
            token=parent_token,
            number=parent.attempt,
            status__in=ACTIVE_ATTEMPT_STATUSES,
        ).exists()
        if not parent_token or not current:
            raise RunError(f'attempt of run "{parent_run_id}" is no longer current')
        run = start_child_run(
            parent,
            step=step,
            item_index=item_index,
            dag_name=dag_name,
            params=params,
            selector=selector,
            config=self.config,
            now=utcnow(),
        )
        self.wake()
        return run.id

    def run_status(self, run_id: str) -> ChildStatus:
        run = DagRun.objects.filter(pk=run_id).first()
        if run is None:
            return ChildStatus(found=False)
        return ChildStatus(True, run.status, run.error, run.outputs)

    def cancel(self, run_id: str) -> None:
        request_cancel(run_id, now=utcnow())

    def wake(self) -> None:
        self.wake_event.set()

    # -- loops -----------------------------------------------------------------------------

    def dispatch_step(self) -> int:
        if not DagRun.objects.filter(
            status=RunStatus.QUEUED,
            execution_mode=ExecutionMode.DISTRIBUTED,
            cancel_requested=False,
        ).exists():
            return 0  # the common idle case: one indexed query, no fleet snapshot
        now = utcnow()
        # Drain flags are read on every pass: an operator's drain must win any race with a
        # run queued right after it.
        self.sync_draining()
        return dispatch_once(
            now=now,
            workers=self.fleet.views(now=now, held=held_attempts()),
            deliver=lambda attempt: self.fleet.deliver(attempt.worker_id, attempt),
        )

    def housekeeping_step(self) -> None:
        """Flush heartbeats, sync drain flags, supersede lost attempts."""
        now = utcnow()
        flush_fleet(self.fleet, now=now)
        self.fleet.set_draining(
            set(Worker.objects.filter(draining=True).values_list("id", flat=True))
        )
        if failover_once(fleet=self.fleet, now=now, mailbox_tokens=self._mailbox_tokens()):
            self.wake()

    def sync_draining(self) -> None:
        self.fleet.set_draining(
            set(Worker.objects.filter(draining=True).values_list("id", flat=True))
        )

    def _mailbox_tokens(self) -> set[str]:
        return {a.token for a in self.fleet.pending_mail() if isinstance(a, Attempt)}

    def registry_step(self) -> None:
        """Mirror worker files into the fleet and clean up stale or dead entries."""
        now = utcnow()
        root = Path(self.config.paths.service_registry_dir)
        registry.cleanup(
            root,
            now=now,
            stale_after=self.config.timing.registry_stale_after,
            this_host=socket.gethostname(),
        )
        scanned = registry.scan(root, "worker")
        self.fleet.merge_registry(
            [
                (
                    str(entry.path),
                    Identity(
                        id=rec.id,
                        host=rec.host,
                        pid=rec.pid,
                        labels=rec.labels,
                        max_active_runs=rec.max_active_runs,
                        started_at=rec.started_at,
                    ),
                    max(rec.last_heartbeat, entry.mtime),
                )
                for entry in scanned.entries
                if isinstance(rec := entry.record, registry.WorkerRecord)
            ],
            now=now,
        )
        self.fleet.forget(purge_offline(now=now, timing=self.config.timing))

    def load_fleet(self) -> None:
        self.fleet.load(Worker.objects.all())


def coordinator_record(
    config: Config, *, started_at: datetime, status: str
) -> registry.CoordinatorRecord:
    return registry.CoordinatorRecord(
        id=config.coordinator.id or f"{config.coordinator.advertise}@{config.coordinator.port}",
        host=config.coordinator.advertise,
        port=config.coordinator.port,
        pid=os.getpid(),
        status=status,
        started_at=started_at,
        last_heartbeat=utcnow(),
    )
