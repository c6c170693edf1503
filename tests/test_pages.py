"""Operator pages, server-rendered (no JavaScript): access, content, and the pure helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.test import Client

from controlplane.core.config import TimingConfig
from controlplane.core.health import HEALTH_STATES, health_status
from controlplane.lease import LEASE_SECONDS, hold_lease
from controlplane.models import DispatchDecision
from controlplane.pages import relative_age
from dags.models import Attempt, DagRun, StepRun
from dags.reports import step_log_path
from tests.roles import user_with_role
from workers.models import Worker
from workers.summary import filtered_workers, fleet_overview

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


def make_worker(wid: str, *, age: float | None, slots: int = 10, **labels: str) -> Worker:
    beat = None if age is None else NOW - timedelta(seconds=age)
    worker = Worker.objects.create(id=wid, labels=labels, registered_at=NOW,
                                   last_heartbeat_at=beat, max_active_runs=slots)  # fmt: skip
    for key, value in labels.items():
        worker.label_rows.create(key=key, value=value)
    return worker


def running_on(wid: str, n: int) -> None:
    """Runs as dispatch leaves them: each holds an active attempt on the worker."""
    for i in range(n):
        run = DagRun.objects.create(id=f"{wid}-{i}", dag_name="d", spec="", queued_at=NOW,
                                    execution_mode="distributed", status="running",
                                    worker_id=wid, attempt=1)  # fmt: skip
        Attempt.objects.create(run=run, number=1, token=f"t-{run.id}", mode="distributed",
                               worker_id=wid, status="running", created_at=NOW)  # fmt: skip


@pytest.mark.django_db
def test_overview_counts_slots_of_workers_that_are_not_offline():
    make_worker("gpu-1", age=1, slots=4, gpu="true")
    make_worker("cpu-1", age=20, slots=4)
    make_worker("cpu-2", age=None, slots=8)
    running_on("gpu-1", 3)
    running_on("cpu-1", 1)
    assert fleet_overview(now=NOW, timing=TimingConfig()) == {
        "workers": 3,
        "healthy": 1,
        "busy": 4,
        "total": 8,
        "active_tasks": 4,
        "utilisation": 50,
    }
    Worker.objects.all().delete()
    assert fleet_overview(now=NOW, timing=TimingConfig())["utilisation"] == 0


@pytest.mark.django_db
def test_search_matches_id_or_label_pair_case_insensitively():
    make_worker("gpu-1@host", age=1, gpu="true")
    make_worker("cpu-1@host", age=1, region="eu-west-1")

    def found(query: str) -> list[str]:
        return list(filtered_workers(now=NOW, timing=TimingConfig(), query=query)
                    .values_list("id", flat=True))  # fmt: skip

    assert found("") == ["cpu-1@host", "gpu-1@host"]
    assert found("GPU-1") == ["gpu-1@host"]
    assert found("gpu=tr") == ["gpu-1@host"]
    assert found("U=TRUE") == ["gpu-1@host"]
    assert found("west") == ["cpu-1@host"]
    assert found("region=us") == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("age", "state"),
    [(0, "HEALTHY"), (4.9, "HEALTHY"), (5, "WARNING"), (14.9, "WARNING"), (15, "UNHEALTHY"),
     (30, "UNHEALTHY"), (30.1, "OFFLINE"), (None, "OFFLINE")],
)  # fmt: skip
def test_health_filter_in_the_database_agrees_with_health_status(age, state):
    timing = TimingConfig(health_warning_after=5, health_unhealthy_after=15,
                          health_offline_after=30)  # fmt: skip
    worker = make_worker("w", age=age)
    assert health_status(worker.last_heartbeat_at, now=NOW, timing=timing) == state
    for other in HEALTH_STATES:
        ids = list(filtered_workers(now=NOW, timing=timing, health=other))
        assert ids == ([worker] if other == state else []), other


# ---- pages


@pytest.fixture
def staff_client(client: Client) -> Client:
    user = user_with_role("ops", "manager", password="pw")
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
    worker = Worker.objects.create(id="gpu-1@7", labels={"gpu": "true"}, registered_at=now,
                                   last_heartbeat_at=now, host="gpu-host")  # fmt: skip
    worker.label_rows.create(key="gpu", value="true")
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
def test_users_without_a_role_get_403_naming_the_role(client: Client):
    client.force_login(user_with_role("nobody", None))
    response = client.get("/workers/")
    assert response.status_code == 403
    assert '"viewer" role' in response.content.decode()


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
def test_workers_page_names_the_housekeeping_coordinator(staff_client: Client):
    assert 'id="housekeeping"' not in staff_client.get("/workers/").content.decode()
    now = datetime.now(UTC)
    hold_lease("host-a:11:aaaa", now=now - timedelta(seconds=LEASE_SECONDS + 5))
    html = staff_client.get("/workers/").content.decode()
    assert "housekeeping: host-a:11:aaaa, fencing 1 (term ended" in html
    hold_lease("host-b:22:bbbb", now=now)  # another coordinator took it over
    html = staff_client.get("/workers/").content.decode()
    assert "housekeeping: host-b:22:bbbb, fencing 2<" in html


@pytest.mark.django_db
def test_workers_page_search_without_javascript(staff_client: Client, run: DagRun):
    assert "gpu-1@7" in staff_client.get("/workers/?q=gpu=true").content.decode()
    html = staff_client.get("/workers/?q=region=eu").content.decode()
    assert "gpu-1@7" not in html and "No workers match the filter" in html


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


# ---- Workers page: health filter, pages, Drain/Undrain


@pytest.mark.django_db
def test_workers_page_filters_by_health_and_pages_the_rows(staff_client: Client, settings):
    now = datetime.now(UTC)
    Worker.objects.bulk_create(
        Worker(id=f"w{i:03d}", registered_at=now,
               last_heartbeat_at=now if i % 2 else now - timedelta(days=1))
        for i in range(120)
    )  # fmt: skip
    first = staff_client.get("/workers/?health=offline").content.decode()
    assert "w000" in first and "w001" not in first
    assert "workers 1-50 of 60" in first
    last = staff_client.get("/workers/?health=offline&page=2").content.decode()
    assert "w118" in last and "w000" not in last
    # An unknown state is ignored rather than an error: the page shows everyone.
    assert "workers 1-50 of 120" in staff_client.get("/workers/?health=nope").content.decode()
    # The script's live refresh gets only the changing part.
    fragment = staff_client.get("/workers/?health=healthy&fragment=1").content.decode()
    assert "<html" not in fragment and "w001" in fragment and "w000" not in fragment


@pytest.mark.django_db
def test_drain_and_undrain_buttons_change_the_row_and_come_back(staff_client: Client):
    make_worker("gpu-1@7", age=0)
    html = staff_client.get("/workers/?q=gpu").content.decode()
    assert 'action="/workers/gpu-1@7/drain"' in html
    response = staff_client.post("/workers/gpu-1@7/drain", {"next": "/workers/?q=gpu"})
    assert (response.status_code, response["Location"]) == (302, "/workers/?q=gpu")
    assert Worker.objects.get(pk="gpu-1@7").draining
    assert 'action="/workers/gpu-1@7/undrain"' in staff_client.get("/workers/").content.decode()
    # `next` never sends the browser off the site.
    response = staff_client.post("/workers/gpu-1@7/undrain", {"next": "https://evil.example/"})
    assert response["Location"] == "/workers/"
    assert not Worker.objects.get(pk="gpu-1@7").draining


@pytest.mark.django_db
def test_drain_needs_a_post_a_known_worker_and_the_permission(staff_client: Client, monkeypatch):
    make_worker("gpu-1@7", age=0)
    assert staff_client.get("/workers/gpu-1@7/drain").status_code == 405
    assert staff_client.post("/workers/nobody/drain").status_code == 404
    # The one permission check: with it denied, no button and no drain.
    monkeypatch.setattr("controlplane.pages.can_drain_workers", lambda user: False)
    assert "/drain" not in staff_client.get("/workers/").content.decode()
    assert staff_client.post("/workers/gpu-1@7/drain").status_code == 403
    assert not Worker.objects.get(pk="gpu-1@7").draining


@pytest.mark.django_db
def test_operators_cannot_drain(client: Client):
    make_worker("gpu-1@7", age=0)
    client.force_login(user_with_role("op", "operator"))
    assert client.post("/workers/gpu-1@7/drain").status_code == 403
    assert not Worker.objects.get(pk="gpu-1@7").draining
