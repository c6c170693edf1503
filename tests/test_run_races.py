"""Races in the run lifecycle: cancel against failover, children created once, retries."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection

from controlplane.core.config import Config, TimingConfig, resolve
from controlplane.core.spec import parse_dag_file
from controlplane.failover import failover_once, supersede_attempt
from dags import runs
from dags.models import Attempt, DagRun
from dags.runs import create_run, request_cancel, retry_run, start_attempt, start_child_run
from tests.test_run_lifecycle import T0, new_run
from workers.presence import Fleet, Identity, Running

pytestmark = pytest.mark.django_db


def test_a_cancel_that_lands_while_failover_decides_still_wins():
    run = new_run()
    start_attempt(run, now=T0, mode="distributed", worker_id="g1")
    # Failover read the attempt (and its run) before the operator's cancel was stored.
    stale = Attempt.objects.select_related("run").get(run=run)
    request_cancel(run.id, now=T0)
    assert supersede_attempt(stale, reason="worker g1 is UNHEALTHY", now=T0)
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert {s.status for s in run.steps.all()} == {"cancelled"}


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


PARENT = """
name: parent
steps:
  - name: train
    call: child
---
name: child
steps:
  - name: fit
    command: echo fit
"""


def parent_run(tmp_path: Path) -> tuple[DagRun, Config]:
    config = resolve(env={"DAGU_HOME": str(tmp_path)})
    parent = create_run(
        parse_dag_file(PARENT, source="parent.yaml", default_name="parent"),
        now=T0,
        default_mode="local",
    )
    return parent, config


def child_of(parent: DagRun, config: Config, item: int | None = None) -> DagRun:
    return start_child_run(
        DagRun.objects.get(pk=parent.pk),
        step="train",
        item_index=item,
        dag_name="child",
        params={},
        selector={},
        config=config,
        now=T0,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("item", [None, 0])
def test_concurrent_start_child_requests_create_one_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, item: int | None
):
    parent, config = parent_run(tmp_path)
    # Hold both requests between "is there a child?" and "create it", as a StartChild retried
    # after its deadline does while the first call is still in flight.
    both_checked = threading.Barrier(2, timeout=10)
    original = runs.child_dag_file

    def in_step(*args, **kwargs):
        both_checked.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(runs, "child_dag_file", in_step)
    results: list[str] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            results.append(child_of(parent, config, item).id)
        except BaseException as exc:  # whatever escapes is what the test reports
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == 2 and results[0] == results[1]
    assert DagRun.objects.filter(parent=parent).count() == 1


def test_a_retried_parent_runs_its_failed_child_again(tmp_path: Path):
    parent, config = parent_run(tmp_path)
    first = child_of(parent, config)
    assert child_of(parent, config).id == first.id  # a replay gets the same child
    DagRun.objects.filter(pk=first.pk).update(status="failed", finished_at=T0)
    DagRun.objects.filter(pk=parent.pk).update(status="failed", finished_at=T0)
    retry_run(parent.id, now=T0)
    second = child_of(parent, config)
    assert second.id != first.id
    assert (second.status, second.parent_step) == ("queued", "train")
    assert child_of(parent, config).id == second.id  # and again exactly once
    DagRun.objects.filter(pk=first.pk).update(status="failed")  # the old one stays history
    assert DagRun.objects.filter(parent=parent).count() == 2


def test_a_retried_parent_keeps_a_child_that_succeeded(tmp_path: Path):
    parent, config = parent_run(tmp_path)
    first = child_of(parent, config)
    DagRun.objects.filter(pk=first.pk).update(status="succeeded", outputs={"X": "1"})
    DagRun.objects.filter(pk=parent.pk).update(status="cancelled", finished_at=T0)
    retry_run(parent.id, now=T0)
    again = child_of(parent, config)
    assert (again.id, again.outputs) == (first.id, {"X": "1"})
