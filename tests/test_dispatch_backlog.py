"""Dispatch under a backlog and after a coordinator restart, one pass at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.core.config import TimingConfig
from controlplane.core.routing import WorkerView
from controlplane.core.spec import parse_dag_file
from controlplane.dispatch import dispatch_once
from controlplane.models import DispatchDecision
from dags.models import DagRun
from dags.runs import TaskPayload, create_run
from workers.models import Worker
from workers.presence import Fleet, Identity

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def dag_with(selector: str) -> str:
    return f"""
worker_selector:
  {selector}
steps:
  - name: one
    command: echo 1
"""


def new_run(selector: str = 'gpu: "true"', *, at: datetime = T0) -> DagRun:
    return create_run(
        parse_dag_file(dag_with(selector), source="x.yaml", default_name="x"),
        now=at,
        default_mode="local",
    )


def test_after_a_restart_only_workers_heard_from_since_get_runs():
    # A worker last seen a day before the coordinator (re)started: failover gives it time to
    # reconnect, but dispatch must not hand it runs on that grace.
    start = T0
    Worker.objects.create(
        id="ghost",
        labels={"gpu": "true"},
        max_active_runs=4,
        registered_at=start - timedelta(days=1),
        last_heartbeat_at=start - timedelta(days=1),
    )
    fleet = Fleet(timing=TimingConfig(), started_at=start)
    fleet.load(Worker.objects.all())
    run = new_run(at=start)
    delivered: list[TaskPayload] = []
    now = start + timedelta(seconds=2)
    assert (
        dispatch_once(now=now, workers=fleet.views(now=now, held={}), deliver=delivered.append) == 0
    )
    run.refresh_from_db()
    assert (run.status, run.waiting_reason) == ("queued", "no_workers")
    # Once it does heartbeat, it gets the run.
    fleet.record_heartbeat(
        Identity("ghost", "h", 1, {"gpu": "true"}, 4), running=[], stopping=False, now=now
    )
    later = now + timedelta(seconds=1)
    assert (
        dispatch_once(now=later, workers=fleet.views(now=later, held={}), deliver=delivered.append)
        == 1
    )
    assert [t.worker_id for t in delivered] == ["ghost"]


def test_a_worker_seen_just_before_the_restart_waits_for_its_next_heartbeat():
    start = T0
    fleet = Fleet(timing=TimingConfig(), started_at=start)
    fleet.record_heartbeat(
        Identity("w", "h", 1, {"gpu": "true"}, 4),
        running=[],
        stopping=False,
        now=start - timedelta(seconds=1),
    )
    [view] = fleet.views(now=start + timedelta(seconds=1), held={})
    assert view.health == "UNHEALTHY"
    # Failover still counts its silence from the start: it is not lost.
    assert fleet.health(fleet.get("w"), now=start + timedelta(seconds=1)) == "HEALTHY"


def test_a_backlog_nothing_matches_never_holds_up_a_run_that_a_worker_can_take():
    # More unmatched runs than one pass used to look at (200), all older than the gpu run.
    backlog = [new_run("region: mars", at=T0 + timedelta(milliseconds=i)) for i in range(240)]
    # The same two-key selector written in both key orders is still one group.
    backlog += [
        new_run('{zone: "z9", tier: "t"}', at=T0 + timedelta(seconds=1)),
        new_run('{tier: "t", zone: "z9"}', at=T0 + timedelta(seconds=1)),
    ]
    wanted = new_run(at=T0 + timedelta(seconds=2))
    worker = WorkerView("g1", {"gpu": "true"}, "HEALTHY", False, 2)
    delivered: list[TaskPayload] = []
    now = T0 + timedelta(seconds=3)
    assert dispatch_once(now=now, workers=[worker], deliver=delivered.append) == 1
    assert [t.dag_run_id for t in delivered] == [wanted.id]
    waiting = DagRun.objects.filter(pk__in=[r.id for r in backlog])
    assert set(waiting.values_list("status", "waiting_reason")) == {
        ("queued", "no_matching_worker")
    }
    decisions = DispatchDecision.objects.filter(run__in=waiting, event="waiting")
    assert decisions.count() == len(backlog)
    # Each row says what the run's own decision and the pass saw (written in the database).
    first = decisions.get(run=backlog[0])
    assert (first.attempt, first.mode, first.why, first.selector) == (
        0,
        "distributed",
        "selector",
        {"region": "mars"},
    )
    assert (first.workers_considered, first.workers_matched, first.chosen_worker) == (1, 0, "")
    assert (first.waiting_reason, first.detail) == (
        "no_matching_worker",
        "waiting: no matching worker",
    )
    assert first.decided_at == now
    # Nothing changed: the next pass writes nothing and reads the backlog as a few groups.
    with CaptureQueriesContext(connection) as queries:
        assert dispatch_once(now=now, workers=[worker], deliver=delivered.append) == 0
    assert decisions.count() == len(backlog)
    assert len(queries) <= 4, [q["sql"] for q in queries]
    # A worker for the mars runs appears with one slot: the oldest goes, the rest are busy.
    mars = WorkerView("m1", {"region": "mars"}, "HEALTHY", False, 1)
    assert dispatch_once(now=now, workers=[worker, mars], deliver=delivered.append) == 1
    assert delivered[-1].dag_run_id == backlog[0].id
    assert (
        waiting.filter(worker_selector={"region": "mars"}, status="queued")
        .exclude(waiting_reason="matching_workers_busy")
        .count()
        == 0
    )
