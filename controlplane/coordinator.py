"""The coordinator: what each RPC does, and the background loops that keep runs moving.

`Coordinator` owns the in-memory fleet and the wake-up event; the gRPC servicer converts
messages and calls one method here per RPC. Loops follow one shape: call a one-step
function, then sleep on the stop event so a shutdown is never kept waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.db import connection, transaction
from django.db.models import F

from controlplane.core import registry
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from controlplane.dispatch import SelectorGroup, dispatch_once, dispatch_view, slots_view
from controlplane.failover import failover_once
from controlplane.lease import LeaseKeeper
from controlplane.rights import Denied
from dags.models import Attempt, DagRun, RunStatus
from dags.reports import (
    ApplyResult,
    Event,
    GroupCommit,
    Report,
    apply_batches,
    write_report_logs,
)
from dags.runs import (
    RunError,
    TaskPayload,
    get_run,
    request_cancel,
    start_child_run,
    still_current,
)
from dags.wakeups import runs_queued
from workers.models import Worker
from workers.presence import Fleet, Identity, Running, flush_fleet, purge_offline

logger = logging.getLogger(__name__)

MAX_POLL_WAIT = 20.0
# Under load, a report group commit waits this long for more reports before it takes the
# write lock (GroupCommit's `linger`). 3 ms cut the coordinator's CPU per run by a fifth and
# its statements per run by half in the dispatch benchmark, and raised its throughput by a
# tenth; it adds that much to a report's round trip under load, and nothing after a quiet
# spell (docs/benchmarks.md, session 7).
REPORT_GROUP_LINGER_SECONDS = 0.003


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
        # The housekeeping lease, renewed by a loop of controlplane.service; on SQLite the
        # only coordinator (service.start_coordinator makes sure of it) takes it at once.
        self.lease = LeaseKeeper(sole=connection.vendor == "sqlite")
        self.log_dir = Path(config.paths.log_dir)
        # Concurrent Report calls share one transaction (group commit), which also claims
        # the runs that refill the slots they free (claim on report).
        self.reports = GroupCommit(
            self._apply_reports,
            prepare=lambda reports: write_report_logs(reports, log_dir=self.log_dir),
            hold=self._report_transaction,
            linger=REPORT_GROUP_LINGER_SECONDS,
        )
        # Passes that claim runs take turns: each reads the slots workers hold before its
        # claim, so two at once could both fill the same free slot (claim on report runs
        # in a Report call's thread, beside the dispatcher's loop). Always taken before a
        # write transaction begins, never inside one.
        self._dispatching = threading.Lock()
        # The queued runs' selector groups as the dispatcher's last pass read them, for
        # claim on report (read and written under `_dispatching`).
        self._queued_groups: list[SelectorGroup] = []

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
        return await in_thread(lambda: self._task_for(items))

    def _task_for(self, items: list[object]) -> list[TaskPayload]:
        """The tasks taken from the mailbox that may still be handed out (one query for all).

        Each was built when its run was claimed; only whether its attempt is still current
        is read again, since a cancel or a failover may have come while it waited."""
        tasks = [item for item in items if isinstance(item, TaskPayload)]
        current = still_current(tasks, now=utcnow())
        if len(current) < len(tasks):
            self.wake()  # a cancelled or superseded attempt no longer holds a slot
        return current

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

    def report(self, events: Iterable[Event], *, worker_id: str | None = None) -> ApplyResult:
        """Apply a report (with concurrent ones: group commit). With `worker_id`, a report
        naming another worker's attempt is refused whole (Denied)."""
        result = self._apply_report(Report(list(events), worker_id))
        if result.finished_runs:
            self._slots_freed()
        return result

    def report_and_claim(
        self, events: Iterable[Event], *, worker_id: str, want: int
    ) -> tuple[ApplyResult, list[TaskPayload]]:
        """`report`, and when it ends runs, up to `want` queued runs claimed for the worker
        that sent it in the same transaction (claim on report): the tasks go back in the
        reply, so a busy worker's freed slot is refilled without a poll or a second commit.
        The slots come from the database, as any pass's do, so whatever its parked poll
        gets besides, the worker is never over-filled."""
        result = self._apply_report(Report(list(events), worker_id, want=want))
        if len(result.tasks) < len(result.finished_runs):
            # Only slots refilled here need no pass: the dispatcher takes the rest (free
            # slots this queue cannot fill, waiting reasons, other coordinators' runs).
            self._slots_freed()
        return result, result.tasks

    def _apply_report(self, report: Report) -> ApplyResult:
        result = self.reports.submit(report)
        if result.foreign_run:
            assert report.worker_id is not None
            raise Denied(
                f'run "{result.foreign_run}" is not assigned to worker "{report.worker_id[:80]}"'
            )
        return result

    def _slots_freed(self) -> None:
        self.wake()  # a slot freed up
        runs_queued()  # ... which a run waiting on another coordinator may need

    @contextmanager
    def _report_transaction(self) -> Iterator[None]:
        """Where a report group is written: the dispatch lock (its claim on report is a
        pass), then the write transaction."""
        with self._dispatching, transaction.atomic():
            yield

    def _apply_reports(self, reports: list[Report]) -> list[ApplyResult]:
        """One group commit, inside its transaction (with the dispatch lock held): apply the
        reports, then claim queued runs for the workers whose reports ended runs and asked
        for more. Their log chunks were written before the transaction."""
        return apply_batches(
            reports,
            log_dir=self.log_dir,
            write_logs=False,
            then=lambda results: self._refill(reports, results),
        )

    def _refill(self, reports: list[Report], results: list[ApplyResult]) -> None:
        """Claim runs for the slots these applied reports freed; each worker's tasks go in
        its report's result. One pass over the reporting workers only, so waiting reasons
        are left to the full passes."""
        wants: dict[str, int] = {}
        for report, result in zip(reports, results, strict=True):
            if report.worker_id and report.want > 0 and result.finished_runs:
                wants[report.worker_id] = max(wants.get(report.worker_id, 0), report.want)
        if not wants:
            return
        # The selector groups the last full pass saw, not a read of the whole queue per
        # group commit (with a queue of hundreds that read was a sixth of the report
        # handlers' time, inside the write lock). A group queued since then waits for the
        # dispatcher, which its creation woke; an emptied one finds no runs.
        if not self._queued_groups:
            return
        held, draining = slots_view(list(wants))
        now = utcnow()
        workers = [
            dataclasses.replace(mine, free_slots=min(mine.free_slots, want))
            for worker_id, want in wants.items()
            if worker_id not in draining
            and (mine := self.fleet.view_of(worker_id, now=now, held=held)) is not None
        ]
        claimed: dict[str, list[TaskPayload]] = {}
        dispatch_once(
            now=now,
            workers=workers,
            deliver=lambda task: claimed.setdefault(task.worker_id, []).append(task),
            groups=self._queued_groups,
            record_waiting=False,
        )
        for report, result in zip(reports, results, strict=True):
            if report.worker_id in claimed and result.finished_runs:
                result.tasks = claimed.pop(report.worker_id)

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
        with self._dispatching:
            view = dispatch_view()
            self._queued_groups = view.groups
            if not view.groups:
                return 0  # the common idle case: one indexed query, no fleet snapshot
            now = utcnow()
            # Drain flags are read on every pass, with the queued runs: an operator's drain
            # must win any race with a run queued right after it.
            self.fleet.set_draining(view.draining)
            return dispatch_once(
                now=now,
                workers=self.fleet.views(now=now, held=view.held),
                deliver=lambda task: self.fleet.deliver(task.worker_id, task),
                groups=view.groups,
            )

    def housekeeping_step(self) -> None:
        """Flush heartbeats, sync drain flags, supersede lost attempts.

        Every coordinator flushes its own workers and applies the failover rules that need
        its memory; judging silent workers fleet-wide is the lease holder's alone.
        """
        now = utcnow()
        flush_fleet(self.fleet, now=now)
        self.sync_draining()
        lease = self.lease.held()
        if failover_once(
            fleet=self.fleet,
            now=now,
            mailbox_tokens=self._mailbox_tokens(),
            judge_lost=lease is not None,
            lost_since=lease.acquired_at if lease else None,
        ):
            self.wake()

    def sync_draining(self) -> None:
        self.fleet.set_draining(
            set(Worker.objects.filter(draining=True).values_list("id", flat=True))
        )

    def _mailbox_tokens(self) -> set[str]:
        return {t.attempt_token for t in self.fleet.pending_mail() if isinstance(t, TaskPayload)}

    def registry_step(self) -> None:
        """Mirror worker files into the fleet; the lease holder cleans up stale or dead ones."""
        now = utcnow()
        root = Path(self.config.paths.service_registry_dir)
        leader = self.lease.held() is not None
        if leader:
            registry.cleanup(
                root,
                now=now,
                stale_after=self.config.timing.registry_stale_after,
                this_host=socket.gethostname(),
            )
        scanned = registry.scan(root, "worker")
        records = [
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
        ]
        self.fleet.merge_registry(_not_fresher_elsewhere(records, self.fleet), now=now)
        if leader:
            self.fleet.forget(purge_offline(now=now, timing=self.config.timing))

    def load_fleet(self) -> None:
        self.fleet.load(Worker.objects.all())


def _not_fresher_elsewhere(
    records: list[tuple[str, Identity, datetime]], fleet: Fleet
) -> list[tuple[str, Identity, datetime]]:
    """Registry records worth merging: not for a worker whose stored row is fresher.

    Such a row was written by the coordinator the worker talks to; merging the older file
    time here and flushing it would move that worker's last heartbeat backwards.
    """
    stored = dict(
        Worker.objects.filter(id__in=[who.id for _, who, _ in records]).values_list(
            "id", "last_heartbeat_at"
        )
    )
    out = []
    for record in records:
        _, who, seen = record
        state = fleet.get(who.id)
        row_seen = stored.get(who.id)
        ours = state is not None and state.contacted_at is not None
        if ours or row_seen is None or row_seen < seen:
            out.append(record)
    return out


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
