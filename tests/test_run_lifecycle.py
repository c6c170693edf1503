"""Run state in the database: claiming, dispatch, reports (replay, rejection), failover."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.core.config import TimingConfig
from controlplane.core.events import (
    ATTEMPT_STARTED,
    RUN_FINISHED,
    STEP_FINISHED,
    STEP_LOG,
    STEP_STARTED,
    Event,
)
from controlplane.core.routing import WorkerView
from controlplane.core.spec import parse_dag_file
from controlplane.dispatch import dispatch_once
from controlplane.failover import failover_once
from dags.models import Attempt, DagRun
from dags.reports import apply_events
from dags.runs import TaskPayload, create_run, request_cancel, retry_run, start_attempt
from workers.presence import Fleet, Identity, Running

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = """
worker_selector:
  gpu: "true"
max_redispatch: 1
steps:
  - name: one
    command: echo 1
  - name: two
    command: echo 2
"""


def new_run(text: str = SPEC, *, at: datetime = T0) -> DagRun:
    return create_run(
        parse_dag_file(text, source="train.yaml", default_name="train"),
        now=at,
        default_mode="local",
    )


def gpu(wid: str = "g1", *, free: int = 2) -> WorkerView:
    return WorkerView(wid, {"gpu": "true"}, "HEALTHY", False, free)


def test_create_run_records_the_mode_decision():
    run = new_run()
    assert (run.status, run.execution_mode, run.worker_selector) == (
        "queued",
        "distributed",
        {"gpu": "true"},
    )
    assert [s.name for s in run.steps.order_by("position")] == ["one", "two"]
    decision = run.dispatch_decisions.get()
    assert (decision.event, decision.why, decision.mode) == ("created", "selector", "distributed")


def test_dispatch_assigns_oldest_first_and_respects_free_slots():
    runs = [new_run(at=T0 + timedelta(seconds=i)) for i in range(3)]
    delivered: list[TaskPayload] = []
    assigned = dispatch_once(
        now=T0 + timedelta(seconds=10), workers=[gpu(free=2)], deliver=delivered.append
    )
    assert assigned == 2
    assert [t.dag_run_id for t in delivered] == [runs[0].id, runs[1].id]
    last = DagRun.objects.get(pk=runs[2].id)
    assert (last.status, last.waiting_reason) == ("queued", "matching_workers_busy")
    assert last.dispatch_decisions.last().event == "waiting"


def test_a_claim_can_only_be_won_once():
    run = new_run()
    first = start_attempt(run, now=T0, mode="distributed", worker_id="a")
    stale = DagRun.objects.get(pk=run.pk)
    stale.attempt, stale.status = 0, "queued"  # a second dispatcher's out-of-date view
    assert first is not None
    assert start_attempt(stale, now=T0, mode="distributed", worker_id="b") is None
    assert Attempt.objects.filter(run=run).count() == 1


def events_for(attempt: Attempt, *kinds_and_fields: tuple[str, dict]) -> list[Event]:
    return [
        Event(
            seq=i + 1,
            dag_run_id=attempt.run_id,
            attempt_token=attempt.token,
            kind=kind,
            at=T0,
            **fields,
        )
        for i, (kind, fields) in enumerate(kinds_and_fields)
    ]


def full_success(attempt: Attempt) -> list[Event]:
    return events_for(
        attempt,
        (ATTEMPT_STARTED, {}),
        (STEP_STARTED, {"step": "one"}),
        (STEP_LOG, {"step": "one", "stream": "stdout", "data": b"hello\n", "offset": 0}),
        (STEP_FINISHED, {"step": "one", "status": "succeeded", "exit_code": 0}),
        (STEP_STARTED, {"step": "two"}),
        (STEP_FINISHED, {"step": "two", "status": "succeeded", "exit_code": 0}),
        (RUN_FINISHED, {"status": "succeeded"}),
    )


def test_reports_are_applied_once_even_when_replayed(tmp_path: Path):
    run = new_run()
    attempt = start_attempt(run, now=T0, mode="distributed", worker_id="g1")
    events = full_success(attempt)
    first = apply_events(events, log_dir=tmp_path)
    replay = apply_events(events, log_dir=tmp_path)
    assert first.applied == replay.applied == len(events)
    assert not first.rejected_tokens and not replay.rejected_tokens
    run.refresh_from_db()
    assert run.status == "succeeded"
    step = run.steps.get(name="one")
    assert (tmp_path / step.log_path).read_bytes() == b"hello\n"


def test_reports_of_a_superseded_attempt_are_rejected(tmp_path: Path):
    fleet = Fleet(timing=TimingConfig(), started_at=T0)
    who = Identity("g1", "h", 1, {"gpu": "true"}, 2)
    run = new_run()
    old = start_attempt(run, now=T0, mode="distributed", worker_id="g1")
    fleet.record_heartbeat(who, running=[Running(run.id, old.token, T0)], stopping=False, now=T0)
    apply_events(full_success(old)[:4], log_dir=tmp_path)  # step one done, step two not
    later = T0 + timedelta(seconds=20)  # the worker went silent: UNHEALTHY
    assert failover_once(fleet=fleet, now=later, mailbox_tokens=set()) == 1
    run.refresh_from_db()
    assert (run.status, run.redispatch_count) == ("queued", 1)
    assert run.dispatch_decisions.last().event == "redispatched"
    # The new attempt resumes after step one; the old worker's late report is refused.
    new = start_attempt(run, now=later, mode="distributed", worker_id="g2")
    late = apply_events(full_success(old)[4:], log_dir=tmp_path)
    assert late.rejected_tokens == {old.token}
    run.refresh_from_db()
    assert (run.status, run.attempt) == ("running", new.number)
    assert run.steps.get(name="one").status == "succeeded"
    assert run.steps.get(name="two").status == "pending"


def test_max_redispatch_fails_the_run_instead(tmp_path: Path):
    fleet = Fleet(timing=TimingConfig(), started_at=T0)
    run = new_run()
    for n, worker in enumerate(("g1", "g2")):
        attempt = start_attempt(
            DagRun.objects.get(pk=run.pk), now=T0, mode="distributed", worker_id=worker
        )
        fleet.record_heartbeat(
            Identity(worker, "h", 1, {"gpu": "true"}, 2),
            running=[Running(run.id, attempt.token, T0)],
            stopping=False,
            now=T0,
        )
        failover_once(fleet=fleet, now=T0 + timedelta(seconds=20 + n), mailbox_tokens=set())
    run.refresh_from_db()
    assert run.status == "failed"
    assert "max_redispatch (1) reached" in run.error
    assert run.dispatch_decisions.last().event == "failed_worker_lost"


def test_cancel_and_retry():
    run = new_run()
    assert request_cancel(run.id, now=T0).status == "cancelled"
    again = retry_run(run.id, now=T0)
    assert (again.status, again.cancel_requested) == ("queued", False)
    assert again.dispatch_decisions.last().event == "retry"


def test_a_run_that_fails_after_its_cancel_was_asked_for_ends_cancelled(tmp_path: Path):
    # A call step sees its child cancelled (with the parent) before the parent's own cancel
    # watcher does, and fails; the run still ends the way the operator asked.
    run = new_run()
    attempt = start_attempt(run, now=T0, mode="distributed", worker_id="g1")
    apply_events(full_success(attempt)[:1], log_dir=tmp_path)
    assert request_cancel(run.id, now=T0).status == "running"
    failed = events_for(
        attempt,
        (STEP_STARTED, {"step": "one"}),
        (STEP_FINISHED, {"step": "one", "status": "failed", "exit_code": 1}),
        (RUN_FINISHED, {"status": "failed", "error": "step one failed"}),
    )
    apply_events([replace(e, seq=e.seq + 1) for e in failed], log_dir=tmp_path)
    run.refresh_from_db()
    attempt.refresh_from_db()
    assert (run.status, attempt.status) == ("cancelled", "cancelled")


def test_a_run_that_succeeds_despite_a_late_cancel_stays_succeeded(tmp_path: Path):
    run = new_run()
    attempt = start_attempt(run, now=T0, mode="distributed", worker_id="g1")
    events = full_success(attempt)
    apply_events(events[:1], log_dir=tmp_path)
    request_cancel(run.id, now=T0)
    apply_events(events[1:], log_dir=tmp_path)
    run.refresh_from_db()
    assert run.status == "succeeded"
