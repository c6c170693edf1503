"""Races in the run lifecycle: cancel against failover, children created once, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.config import TimingConfig
from controlplane.failover import failover_once, supersede_attempt
from dags.models import Attempt, DagRun
from dags.runs import create_run, request_cancel, start_attempt
from dags.spec import parse_dag_file
from workers.presence import Fleet, Identity, Running

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = """
worker_selector:
  gpu: "true"
steps:
  - name: one
    command: echo 1
"""


def new_run(text: str = SPEC, *, at: datetime = T0) -> DagRun:
    return create_run(
        parse_dag_file(text, source="train.yaml", default_name="train"),
        now=at,
        default_mode="local",
    )


def test_a_cancel_that_lands_while_failover_decides_still_wins():
    run = new_run()
    start_attempt(run, now=T0, mode="distributed", worker_id="g1")
    # Failover read the attempt (and its run) before the operator's cancel was stored.
    stale = Attempt.objects.select_related("run").get(run=run)
    request_cancel(run.id, now=T0)
    assert supersede_attempt(stale, reason="worker g1 is UNHEALTHY", now=T0)
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert run.steps.get().status == "cancelled"


def test_failover_of_a_run_being_cancelled_cancels_it():
    fleet = Fleet(timing=TimingConfig(), started_at=T0)
    run = new_run()
    attempt = start_attempt(run, now=T0, mode="distributed", worker_id="g1")
    fleet.record_heartbeat(
        Identity("g1", "h", 1, {"gpu": "true"}, 2),
        running=[Running(run.id, attempt.token, T0)],
        stopping=False,
        now=T0,
    )
    request_cancel(run.id, now=T0)
    assert failover_once(fleet=fleet, now=T0 + timedelta(seconds=20), mailbox_tokens=set()) == 1
    run.refresh_from_db()
    assert (run.status, run.cancel_requested) == ("cancelled", True)
