"""Django admin: every model's pages render with data, the actions go through the core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from controlplane.models import DispatchDecision
from dags.models import Attempt, DagRun, StepRun
from workers.models import Worker, WorkerLabel

pytestmark = pytest.mark.django_db


@pytest.fixture
def data() -> DagRun:
    now = datetime.now(UTC)
    for wid, age, labels in (("gpu@1", 1, {"gpu": "true"}), ("old@2", 300, {"zone": "b"})):
        worker = Worker.objects.create(
            id=wid, labels=labels, registered_at=now, last_heartbeat_at=now - timedelta(seconds=age)
        )
        WorkerLabel.objects.bulk_create(
            WorkerLabel(worker=worker, key=k, value=v) for k, v in labels.items()
        )
    run = DagRun.objects.create(
        id="run1", dag_name="etl", spec="steps: []", execution_mode="distributed",
        queued_at=now, started_at=now, status="running", worker_id="gpu@1", attempt=1,
    )  # fmt: skip
    DagRun.objects.create(
        id="run2", dag_name="etl", spec="steps: []", execution_mode="local",
        queued_at=now, status="failed", finished_at=now,
    )  # fmt: skip
    StepRun.objects.create(run=run, name="train", status="running", attempt=1)
    Attempt.objects.create(run=run, number=1, token="secret-token", mode="distributed",
                           worker_id="gpu@1", created_at=now)  # fmt: skip
    DispatchDecision.objects.create(run=run, attempt=1, event="assigned", mode="distributed",
                                    why="selector", selector={"gpu": "true"},
                                    workers_considered=2, workers_matched=1,
                                    chosen_worker="gpu@1", decided_at=now)  # fmt: skip
    return run


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/workers/worker/",
        "/admin/workers/worker/gpu@1/change/",
        "/admin/dags/dagrun/",
        "/admin/dags/dagrun/run1/change/",
        "/admin/dags/attempt/",
        "/admin/dags/steprun/",
        "/admin/controlplane/dispatchdecision/",
    ],
)
def test_admin_pages_render_with_data(admin_client: Client, data: DagRun, url: str):
    assert admin_client.get(url).status_code == 200


def test_worker_changelist_shows_health_labels_and_usage(admin_client: Client, data: DagRun):
    html = admin_client.get("/admin/workers/worker/").content.decode()
    assert "<code>gpu=true</code>" in html
    assert "HEALTHY" in html and "OFFLINE" in html
    assert "1/10" in html  # one running run out of ten slots


def test_worker_health_filter(admin_client: Client, data: DagRun):
    html = admin_client.get("/admin/workers/worker/?health=OFFLINE").content.decode()
    assert "old@2" in html and "gpu@1" not in html


def test_worker_search_by_label_pair(admin_client: Client, data: DagRun):
    html = admin_client.get("/admin/workers/worker/?q=zone=b").content.decode()
    assert "old@2" in html and "gpu@1" not in html
    html = admin_client.get("/admin/workers/worker/?q=gpu").content.decode()
    assert "gpu@1" in html


def test_workers_cannot_be_added_by_hand(admin_client: Client):
    assert admin_client.get("/admin/workers/worker/add/").status_code == 403


def test_draining_is_the_only_editable_worker_field(admin_client: Client, data: DagRun):
    html = admin_client.get("/admin/workers/worker/gpu@1/change/").content.decode()
    assert 'name="draining"' in html
    assert 'name="max_active_runs"' not in html
    assert 'name="host"' not in html


def test_drain_and_undrain_actions(admin_client: Client, data: DagRun):
    url = "/admin/workers/worker/"
    response = admin_client.post(url, {"action": "drain_workers", "_selected_action": ["gpu@1"]})
    assert response.status_code == 302
    assert Worker.objects.get(pk="gpu@1").draining
    assert not Worker.objects.get(pk="old@2").draining
    admin_client.post(url, {"action": "undrain_workers", "_selected_action": ["gpu@1"]})
    assert not Worker.objects.get(pk="gpu@1").draining


def test_cancel_and_retry_actions(admin_client: Client, data: DagRun):
    url = "/admin/dags/dagrun/"
    admin_client.post(url, {"action": "cancel_runs", "_selected_action": ["run1"]})
    assert DagRun.objects.get(pk="run1").cancel_requested
    admin_client.post(url, {"action": "retry_runs", "_selected_action": ["run2"]})
    assert DagRun.objects.get(pk="run2").status == "queued"


def test_retrying_an_unfinished_run_reports_why(admin_client: Client, data: DagRun):
    response = admin_client.post(
        "/admin/dags/dagrun/",
        {"action": "retry_runs", "_selected_action": ["run1"]},
        follow=True,
    )
    assert "only a finished run can be retried" in response.content.decode()
    assert DagRun.objects.get(pk="run1").status == "running"


def test_run_admin_is_view_only_and_links_to_the_run_page(admin_client: Client, data: DagRun):
    html = admin_client.get("/admin/dags/dagrun/run1/change/").content.decode()
    assert 'href="/runs/run1/"' in html
    assert 'name="_save"' not in html
    assert "secret-token" not in admin_client.get("/admin/dags/attempt/").content.decode()
    assert admin_client.get("/admin/dags/dagrun/add/").status_code == 403
    assert admin_client.get("/admin/controlplane/dispatchdecision/add/").status_code == 403


def test_admin_links_to_the_operator_pages(admin_client: Client):
    html = admin_client.get("/admin/").content.decode()
    assert 'href="/workers/"' in html
    assert 'href="/runs/"' in html
