"""What happens to runs when their worker goes silent, or never picked them up.

The seeds promise redistribution (the Go original only marks such runs failed): an attempt
held by an UNHEALTHY worker is superseded and its run queued again, to resume at the first
unfinished step on another matching worker, unless the DAG says `on_worker_lost: fail` or
`max_redispatch` is used up. Superseding bumps the run's attempt number, so anything the old
worker still reports is rejected and its next heartbeat tells it to cancel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F

from controlplane.core.health import OFFLINE, UNHEALTHY, health_status
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from controlplane.models import DecisionEvent
from dags.models import (
    Attempt,
    AttemptStatus,
    DagRun,
    ExecutionMode,
    OnWorkerLost,
    RunStatus,
    StepRun,
    StepStatus,
)
from dags.runs import record_decision
from dags.wakeups import runs_queued
from workers.models import Worker
from workers.presence import Fleet, WorkerState

logger = logging.getLogger(__name__)

# An assignment the worker has not acknowledged (in a heartbeat) after this long was lost
# in transit, e.g. the coordinator restarted between handing it out and the worker's poll.
ASSIGNMENT_ACK_SECONDS = 10.0
# A stored heartbeat this much newer than our own last contact means another coordinator
# wrote it (ours flush every second).
MOVED_AFTER = 2.0


def failover_once(
    *,
    fleet: Fleet,
    now: datetime,
    mailbox_tokens: set[str],
    judge_lost: bool = True,
    lost_since: datetime | None = None,
) -> int:
    """Supersede attempts whose worker is lost or never started them. Returns how many.

    Two kinds of rule, because several coordinators may share the database:
    - "lost" (the worker went silent) is judged from the freshest of this coordinator's memory
      and the stored `last_heartbeat_at` that whichever coordinator the worker talks to keeps
      writing; only the housekeeping lease holder judges it (`judge_lost`; `lost_since` is
      when it took the lease: like a restarted coordinator, a new holder gives every worker
      the usual time to show up before calling it lost).
    - "restarted" and "never started" need what only the worker's own coordinator knows (the
      attempts in its heartbeat, the mail waiting in its mailboxes), so every coordinator
      applies them to the workers that talk to it.
    Superseding is compare-and-set on the run row, so two coordinators deciding about the
    same attempt move it once.
    """
    attempts = list(
        Attempt.objects.filter(
            status__in=ACTIVE_ATTEMPT_STATUSES, mode=ExecutionMode.DISTRIBUTED
        ).select_related("run")
    )
    if not attempts:
        return 0
    stored = dict(
        Worker.objects.filter(id__in={a.worker_id for a in attempts}).values_list(
            "id", "last_heartbeat_at"
        )
    )
    handled = 0
    for attempt in attempts:
        reason = _lost_reason(
            attempt,
            fleet=fleet,
            now=now,
            mailbox_tokens=mailbox_tokens,
            stored=stored,
            lost_since=lost_since if judge_lost else None,
            judge_lost=judge_lost,
        )
        if reason is None:
            continue
        requeue_only = reason.startswith("assignment")
        if supersede_attempt(attempt, reason=reason, now=now, count_as_redispatch=not requeue_only):
            handled += 1
    return handled


def _lost_reason(
    attempt: Attempt,
    *,
    fleet: Fleet,
    now: datetime,
    mailbox_tokens: set[str],
    stored: Mapping[str, datetime | None],
    lost_since: datetime | None,
    judge_lost: bool,
) -> str | None:
    state = fleet.get(attempt.worker_id)
    row_seen = stored.get(attempt.worker_id)
    if judge_lost:
        seen = [t for t in (row_seen, state.last_heartbeat if state else None) if t is not None]
        # Silence counts from no earlier than this coordinator's start or its taking the lease.
        grace = max(fleet.started_at, lost_since or fleet.started_at)
        if not seen:
            # Unknown to every coordinator: give the worker the usual time to show up.
            since = max(attempt.created_at, grace)
            if (now - since).total_seconds() >= fleet.timing.health_unhealthy_after:
                return f"worker {attempt.worker_id} is unknown to the coordinators"
        else:
            last = max(seen)
            health = health_status(max(last, grace), now=now, timing=fleet.timing)
            if health in (UNHEALTHY, OFFLINE):
                return f"worker {attempt.worker_id} is {health} (last heartbeat {last.isoformat()})"
    if state is None or not _talks_here(state, row_seen):
        return None
    running = {r.attempt_token for r in state.running}
    if (
        state.started_at is not None
        and state.started_at > attempt.created_at
        and attempt.token not in running
        and attempt.token not in mailbox_tokens
    ):
        # A new process under the same worker id: whatever the old one ran died with it.
        return f"worker {attempt.worker_id} restarted (process started {state.started_at:%H:%M:%S})"
    if (
        attempt.status == AttemptStatus.ASSIGNED
        and attempt.token not in mailbox_tokens
        and attempt.token not in running
        and now - attempt.created_at > timedelta(seconds=ASSIGNMENT_ACK_SECONDS)
        and state.last_heartbeat is not None
        and state.last_heartbeat > attempt.created_at + timedelta(seconds=2)
    ):
        return f"assignment to {attempt.worker_id} was never started"
    return None


def _talks_here(state: WorkerState, row_seen: datetime | None) -> bool:
    """Whether the worker heartbeats this coordinator now, so its memory is the truth.

    A row fresher than our last contact by more than a flush was written by another
    coordinator: the worker moved there, and our copy of its attempts is stale.
    """
    if state.contacted_at is None:
        return False
    return row_seen is None or row_seen <= state.contacted_at + timedelta(seconds=MOVED_AFTER)


def supersede_attempt(
    attempt: Attempt, *, reason: str, now: datetime, count_as_redispatch: bool = True
) -> bool:
    """Queue the run again (or fail it) and retire the attempt. False if it moved on already."""
    run = attempt.run
    give_up = count_as_redispatch and (
        run.on_worker_lost == OnWorkerLost.FAIL or run.redispatch_count >= run.max_redispatch
    )
    with transaction.atomic():
        current = DagRun.objects.filter(pk=run.pk, attempt=attempt.number, status=RunStatus.RUNNING)
        # `run` may predate an operator's cancel: requeue or fail only a run nobody is
        # cancelling (the update re-checks the flag), so a cancel wins every race.
        if give_up:
            why = (
                "on_worker_lost is fail"
                if run.on_worker_lost == OnWorkerLost.FAIL
                else f"max_redispatch ({run.max_redispatch}) reached"
            )
            moved = current.filter(cancel_requested=False).update(
                status=RunStatus.FAILED, finished_at=now, error=f"{reason}; {why}"
            )
            event, detail = DecisionEvent.FAILED_WORKER_LOST, f"{reason}; {why}: run failed"
            steps_to = StepStatus.FAILED
        else:
            moved = current.filter(cancel_requested=False).update(
                status=RunStatus.QUEUED,
                worker_id="",
                waiting_reason="",
                redispatch_count=F("redispatch_count") + (1 if count_as_redispatch else 0),
            )
            event = DecisionEvent.REDISPATCHED if count_as_redispatch else DecisionEvent.REQUEUED
            runs_queued()  # after the commit: any coordinator's worker may take it
            detail = f"{reason}: attempt {attempt.number} superseded, run queued to resume"
            steps_to = StepStatus.PENDING
        if not moved:
            moved = current.filter(cancel_requested=True).update(
                status=RunStatus.CANCELLED, finished_at=now, error=f"cancelled; {reason}"
            )
            event, detail = DecisionEvent.FAILED_WORKER_LOST, f"{reason}; run was being cancelled"
            steps_to = StepStatus.CANCELLED
        Attempt.objects.filter(pk=attempt.pk).update(
            status=AttemptStatus.SUPERSEDED, finished_at=now, end_reason=reason
        )
        if not moved:
            return False
        StepRun.objects.filter(run=run, status=StepStatus.RUNNING).update(
            status=steps_to, finished_at=None if steps_to == StepStatus.PENDING else now
        )
        if steps_to != StepStatus.PENDING:
            StepRun.objects.filter(run=run, status=StepStatus.PENDING).update(
                status=StepStatus.SKIPPED if steps_to == StepStatus.FAILED else steps_to
            )
        run.refresh_from_db()
        record_decision(run, event=event, now=now, chosen_worker=attempt.worker_id, detail=detail)
    logger.warning("run %s attempt %d: %s", run.id, attempt.number, detail)
    return True
