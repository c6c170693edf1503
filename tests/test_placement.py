"""Why a queued run is not running: the pure diagnosis, the run JSON and `status --json`."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.placement import FleetWorker, diagnose, summarize, worker_verdict
from dags.models import Attempt, DagRun
from tests.roles import user_with_role
from workers.models import Worker

GPU = {"gpu": "true"}


def fw(wid: str, labels=None, *, health="HEALTHY", draining=False, busy=0, capacity=10):
    return FleetWorker(wid, labels if labels is not None else GPU, health, draining, busy, capacity)


@pytest.mark.parametrize(
    ("worker", "selector", "matches", "missing", "reason"),
    [
        (fw("a"), GPU, True, [], ""),
        (fw("a", {}), GPU, False, ["gpu=true"], "lacks gpu=true"),
        (fw("a", {"gpu": "false"}), GPU, False, ["gpu=true"], "lacks gpu=true"),
        (fw("a", {"gpu": "true"}), {"gpu": "true", "region": "eu"}, False, ["region=eu"],
         "lacks region=eu"),
        (fw("a", {}), {"z": "1", "a": "2"}, False, ["a=2", "z=1"], "lacks a=2,z=1"),
        (fw("a", {}), {}, True, [], ""),  # an empty selector matches every worker
        # Labels come first: a worker that can never take it says so even when offline.
        (fw("a", {}, health="OFFLINE"), GPU, False, ["gpu=true"], "lacks gpu=true"),
        (fw("a", health="OFFLINE"), GPU, True, [], "offline"),
        (fw("a", health="UNHEALTHY"), GPU, True, [], "unhealthy"),
        (fw("a", health="WARNING"), GPU, True, [], ""),  # WARNING still takes runs
        (fw("a", draining=True), GPU, True, [], "draining"),
        (fw("a", busy=10), GPU, True, [], "busy (10/10)"),
        (fw("a", busy=9), GPU, True, [], ""),
        (fw("a", capacity=0), GPU, True, [], "busy (0/0)"),
    ],
)  # fmt: skip
def test_worker_verdict(worker, selector, matches, missing, reason):
    assert worker_verdict(worker, selector) == {
        "id": "a", "matches": matches, "missing": missing, "reason": reason
    }  # fmt: skip


def test_summary_reads_like_kubernetes():
    fleet = [
        fw("w1", {}), fw("w2", {"gpu": "false"}), fw("w3", {"region": "eu"}),
        fw("w4", draining=True), fw("w5", busy=10),
    ]  # fmt: skip
    placement = diagnose(GPU, fleet)
    assert placement["summary"] == (
        "0 of 5 workers can take it: 3 lack gpu=true, 1 draining, 1 busy (10/10)"
    )
    assert placement["can_take"] == 0
    assert placement["selector"] == "gpu=true"
    assert [w["id"] for w in placement["workers"]] == ["w1", "w2", "w3", "w4", "w5"]


def test_summary_counts_and_orders_reasons():
    verdicts = [
        {"reason": "busy (2/2)"}, {"reason": "lacks a=1"}, {"reason": "offline"},
        {"reason": "lacks b=2"}, {"reason": "lacks b=2"}, {"reason": ""},
    ]  # fmt: skip
    assert summarize(verdicts) == (
        "1 of 6 workers can take it: 2 lack b=2, 1 lacks a=1, 1 offline, 1 busy (2/2)"
    )


def test_summary_with_no_workers_and_with_free_workers():
    assert summarize([]) == "0 of 0 workers can take it: no workers registered"
    assert diagnose(GPU, [fw("a")])["summary"] == "1 of 1 worker can take it"


# ---- from the database: the run JSON and `status --json`

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _worker(wid: str, labels: dict[str, str], *, seen: datetime | None, **fields) -> Worker:
    return Worker.objects.create(
        id=wid, labels=labels, registered_at=NOW, last_heartbeat_at=seen, **fields
    )


@pytest.fixture
def fleet(db) -> None:
    now = datetime.now(UTC)
    _worker("cpu-1", {"region": "eu"}, seen=now)
    _worker("gpu-drain", GPU, seen=now, draining=True)
    _worker("gpu-full", GPU, seen=now, max_active_runs=1)
    _worker("gpu-gone", GPU, seen=now - timedelta(days=1))
    busy = DagRun.objects.create(
        id="busy-run", dag_name="b", spec="", execution_mode="distributed", queued_at=now,
        status="running", worker_id="gpu-full", attempt=1,
    )  # fmt: skip
    Attempt.objects.create(
        run=busy, number=1, token="t-busy", mode="distributed", worker_id="gpu-full",
        status="running", created_at=now,
    )  # fmt: skip


def _queued(run_id: str, selector: dict[str, str], **fields) -> DagRun:
    return DagRun.objects.create(
        id=run_id, dag_name="train", spec="", execution_mode=fields.pop("mode", "distributed"),
        worker_selector=selector, queued_at=datetime.now(UTC), **fields,
    )  # fmt: skip


EXPECTED = "0 of 4 workers can take it: 1 lacks gpu=true, 1 offline, 1 draining, 1 busy (1/1)"


@pytest.mark.django_db
def test_run_json_explains_a_queued_run(fleet):
    _queued("q1", GPU)
    user = user_with_role("viewer", "manager")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    placement = client.get("/api/v2/dag-runs/q1").json()["placement"]
    assert placement["summary"] == EXPECTED
    by_id = {w["id"]: w for w in placement["workers"]}
    assert by_id["cpu-1"] == {
        "id": "cpu-1", "matches": False, "missing": ["gpu=true"], "reason": "lacks gpu=true"
    }  # fmt: skip
    assert by_id["gpu-full"]["reason"] == "busy (1/1)"
    assert by_id["gpu-gone"]["reason"] == "offline"


@pytest.mark.django_db
def test_runs_not_waiting_for_a_worker_have_no_placement(fleet, settings):
    _queued("local", {}, mode="local")
    _queued("done", GPU, status="succeeded")
    for run_id in ("local", "done", "busy-run"):
        out = io.StringIO()
        call_command("status", run_id, "--json", stdout=out)
        assert json.loads(out.getvalue())["placement"] is None


@pytest.mark.django_db
def test_status_shows_the_placement(fleet):
    _queued("q2", GPU)
    out = io.StringIO()
    call_command("status", "q2", "--json", stdout=out)
    assert json.loads(out.getvalue())["placement"]["summary"] == EXPECTED
    out = io.StringIO()
    call_command("status", "q2", stdout=out)
    assert f"placement: {EXPECTED}" in out.getvalue()


@pytest.mark.django_db
def test_run_page_shows_why_a_queued_run_waits(fleet, client):
    _queued("q3", GPU)
    user = user_with_role("op", "manager")
    client.force_login(user)
    html = client.get("/runs/q3/").content.decode()
    assert EXPECTED in html
    assert '<tr data-worker="cpu-1"><td>cpu-1</td><td>no</td>' in html
    assert "busy (1/1)" in html
