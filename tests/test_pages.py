"""Operator pages, server-rendered (no JavaScript): access, content, and the pure helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from controlplane.models import DispatchDecision
from controlplane.pages import relative_age, worker_matches_search, workers_overview
from dags.models import Attempt, DagRun, StepRun
from dags.reports import step_log_path
from workers.models import Worker

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


# ---- pure helpers


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s ago"), (59, "59s ago"), (60, "1m ago"), (7200, "2h ago"), (200000, "2d ago")],
)
def test_relative_age(seconds: int, text: str):
    assert relative_age(NOW - timedelta(seconds=seconds), now=NOW) == text


def test_relative_age_of_never_and_of_clock_skew():
    assert relative_age(None, now=NOW) == "never"
    assert relative_age(NOW + timedelta(seconds=3), now=NOW) == "0s ago"


def summary(wid: str, health: str, *, busy: int = 0, slots: int = 10, tasks: int = 0) -> dict:
    return {"id": wid, "labels": {"gpu": "true"} if wid.startswith("gpu") else {},
            "health_status": health, "busy": busy, "max_active_runs": slots,
            "running_tasks": [{}] * tasks}  # fmt: skip


def test_overview_counts_slots_of_workers_that_are_not_offline():
    rows = [
        summary("gpu-1", "HEALTHY", busy=3, slots=4, tasks=3),
        summary("cpu-1", "WARNING", busy=1, slots=4, tasks=1),
        summary("cpu-2", "OFFLINE", busy=0, slots=8),
    ]
    assert workers_overview(rows) == {
        "workers": 3,
        "healthy": 1,
        "busy": 4,
        "total": 8,
        "active_tasks": 4,
        "utilisation": 50,
    }
    assert workers_overview([])["utilisation"] == 0


def test_search_matches_id_or_label_pair_case_insensitively():
    worker = summary("gpu-1@host", "HEALTHY")
    assert worker_matches_search(worker, query="")
    assert worker_matches_search(worker, query="GPU-1")
    assert worker_matches_search(worker, query="gpu=tr")
    assert not worker_matches_search(worker, query="region=")


# ---- pages


@pytest.fixture
def staff_client(client: Client) -> Client:
    user = get_user_model().objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(user)
    return client


@pytest.fixture
def run(settings, tmp_path: Path) -> DagRun:
    """A child run on a worker, with steps, a log, an attempt and dispatch decisions."""
    import dataclasses

    settings.DAGU = dataclasses.replace(
        settings.DAGU, paths=dataclasses.replace(settings.DAGU.paths, log_dir=tmp_path)
    )
    now = datetime.now(UTC)
    Worker.objects.create(id="gpu-1@7", labels={"gpu": "true"}, registered_at=now,
                          last_heartbeat_at=now, host="gpu-host")  # fmt: skip
    parent = DagRun.objects.create(id="parent1", dag_name="pipeline", spec="", queued_at=now,
                                   execution_mode="local", status="running")  # fmt: skip
    child = DagRun.objects.create(
        id="child1", dag_name="train", spec="", queued_at=now, started_at=now,
        execution_mode="distributed", status="running", worker_id="gpu-1@7", attempt=1,
        root=parent, parent=parent, parent_step="train", worker_selector={"gpu": "true"},
    )  # fmt: skip
    log = step_log_path(child.id, 1, "fit")
    (tmp_path / log).parent.mkdir(parents=True)
    (tmp_path / log).write_text("epoch 1 <done>\n")
    StepRun.objects.create(run=child, name="fit", status="succeeded", exit_code=0, attempt=1,
                           log_path=log)  # fmt: skip
    StepRun.objects.create(run=child, name="save", position=1, status="running", attempt=1)
    Attempt.objects.create(run=child, number=1, token="t1", mode="distributed",
                           worker_id="gpu-1@7", created_at=now, status="running")  # fmt: skip
    DispatchDecision.objects.create(run=child, attempt=1, event="assigned", mode="distributed",
                                    why="selector", selector={"gpu": "true"},
                                    workers_considered=3, workers_matched=1,
                                    chosen_worker="gpu-1@7", detail="picked the idlest",
                                    decided_at=now)  # fmt: skip
    return child


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/workers/", "/runs/", "/runs/anything/"])
def test_anonymous_visitors_are_sent_to_the_admin_login(client: Client, url: str):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.django_db
def test_non_staff_users_are_sent_to_the_admin_login(client: Client):
    client.force_login(get_user_model().objects.create_user("viewer"))
    assert client.get("/workers/").status_code == 302


@pytest.mark.django_db
def test_root_redirects_to_the_workers_page(staff_client: Client):
    response = staff_client.get("/")
    assert (response.status_code, response["Location"]) == (302, "/workers/")


@pytest.mark.django_db
def test_workers_page_empty_state(staff_client: Client):
    html = staff_client.get("/workers/").content.decode()
    assert "No workers connected" in html


@pytest.mark.django_db
def test_workers_page_renders_rows_cards_and_tasks(staff_client: Client, run: DagRun):
    now = datetime.now(UTC)
    Worker.objects.create(id="old@1", registered_at=now, draining=True,
                          last_heartbeat_at=now - timedelta(minutes=5))  # fmt: skip
    response = staff_client.get("/workers/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-worker-id="gpu-1@7" data-health="HEALTHY"' in html
    assert 'class="worker health-offline" data-worker-id="old@1"' in html
    assert '<span class="chip">gpu=true</span>' in html
    assert "draining</span>" in html
    assert "5m ago" in html
    assert 'id="m-workers">2<' in html and "1 healthy" in html
    assert 'id="m-slots">1/10<' in html
    # The running child shows its parent, both linked to their run pages.
    assert '<a href="/runs/parent1/">pipeline</a> \u203a ' in html
    assert '<a class="task-run" href="/runs/child1/">train</a>' in html
    assert "controlplane/workers.js" in html


@pytest.mark.django_db
def test_workers_page_search_without_javascript(staff_client: Client, run: DagRun):
    assert "gpu-1@7" in staff_client.get("/workers/?q=gpu=true").content.decode()
    html = staff_client.get("/workers/?q=region=eu").content.decode()
    assert "gpu-1@7" not in html and "No workers match the search" in html


@pytest.mark.django_db
def test_runs_page_lists_runs_with_a_status_filter(staff_client: Client, run: DagRun):
    html = staff_client.get("/runs/").content.decode()
    assert 'href="/runs/child1/">train</a>' in html
    assert "child of" in html
    assert 'data-run-id="parent1"' in html
    html = staff_client.get("/runs/?status=succeeded").content.decode()
    assert "No runs yet" in html


@pytest.mark.django_db
def test_run_page_shows_steps_logs_attempts_decisions_and_hierarchy(
    staff_client: Client, run: DagRun
):
    response = staff_client.get("/runs/child1/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-step="fit" data-status="succeeded"' in html
    assert "epoch 1 &lt;done&gt;" in html  # logs are escaped
    assert "picked the idlest" in html
    assert "gpu-1@7" in html
    assert 'Parent: <a href="/runs/parent1/">pipeline</a>' in html
    assert 'action="/api/v2/dag-runs/child1/cancel"' in html
    assert 'name="csrf-token"' in html


@pytest.mark.django_db
def test_run_page_of_a_parent_links_its_children(staff_client: Client, run: DagRun):
    html = staff_client.get("/runs/parent1/").content.decode()
    assert '<a href="/runs/child1/">train</a>' in html


@pytest.mark.django_db
def test_unknown_run_page_is_a_404(staff_client: Client):
    assert staff_client.get("/runs/nope/").status_code == 404
