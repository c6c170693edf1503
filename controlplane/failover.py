"""What happens to runs when their worker goes silent, or never picked them up.

The seeds promise redistribution (the Go original only marks such runs failed): an attempt
held by an UNHEALTHY worker is superseded and its run queued again, to resume at the first
unfinished step on another matching worker, unless the DAG says `on_worker_lost: fail` or
`max_redispatch` is used up. Superseding bumps the run's attempt number, so anything the old
worker still reports is rejected and its next heartbeat tells it to cancel.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F

from controlplane.core.health import OFFLINE, UNHEALTHY
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
from workers.presence import Fleet

logger = logging.getLogger(__name__)

# An assignment the worker has not acknowledged (in a heartbeat) after this long was lost
# in transit, e.g. the coordinator restarted between handing it out and the worker's poll.
ASSIGNMENT_ACK_SECONDS = 10.0


def failover_once(*, fleet: Fleet, now: datetime, mailbox_tokens: set[str]) -> int:
    """Supersede attempts whose worker is lost or never started them. Returns how many."""
    handled = 0
    attempts = Attempt.objects.filter(
        status__in=ACTIVE_ATTEMPT_STATUSES, mode=ExecutionMode.DISTRIBUTED
    )
    for attempt in attempts.select_related("run"):
        reason = _lost_reason(attempt, fleet=fleet, now=now, mailbox_tokens=mailbox_tokens)
        if reason is None:
            continue
        requeue_only = reason.startswith("assignment")
        if supersede_attempt(attempt, reason=reason, now=now, count_as_redispatch=not requeue_only):
            handled += 1
    return handled


def _lost_reason(
    attempt: Attempt, *, fleet: Fleet, now: datetime, mailbox_tokens: set[str]
) -> str | None:
    state = fleet.get(attempt.worker_id)
    if state is None:
        # Unknown to this coordinator: give the worker the usual time to show up.
        since = max(attempt.created_at, fleet.started_at)
        if (now - since).total_seconds() >= fleet.timing.health_unhealthy_after:
            return f"worker {attempt.worker_id} is unknown to the coordinator"
        return None
    health = fleet.health(state, now=now)
    if health in (UNHEALTHY, OFFLINE):
        last = state.last_heartbeat.isoformat() if state.last_heartbeat else "never"
        return f"worker {attempt.worker_id} is {health} (last heartbeat {last})"
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
