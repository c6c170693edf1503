"""The DAG pages, server-rendered: list (broken files too), search, detail, Start form."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.test import Client

from controlplane.core.spec import parse_dag_file
from controlplane.dag_pages import dag_matches_search, next_run, step_graph
from dags.models import DagRun
from tests.roles import user_with_role
from tests.test_api_runs import HELLO

pytestmark = pytest.mark.django_db

GPU = """\
name: train-model
schedule: "0 * * * *"
worker_selector:
  gpu: "true"
steps:
  - name: prep
    command: echo prep
  - name: train
    command: python train.py
    depends: [prep]
  - name: report
    command: echo done
    depends: [prep]
"""
BROKEN = "steps:\n  - name: a\n    command: echo a\n    worker_selector:\n      gpu: 'true'\n"


@pytest.fixture
def staff(client: Client, settings, tmp_path: Path, monkeypatch) -> Client:
    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    (dags_dir / "hello.yaml").write_text(HELLO)
    (dags_dir / "gpu.yaml").write_text(GPU)
    (dags_dir / "broken.yml").write_text(BROKEN)
    paths = dataclasses.replace(settings.DAGU.paths, dags_dir=dags_dir, log_dir=tmp_path / "logs")
    settings.DAGU = dataclasses.replace(settings.DAGU, paths=paths)
    monkeypatch.setattr("controlplane.dag_pages.wake_coordinator_soon", lambda config: False)
    client.force_login(user_with_role("ops", "manager"))
    return client


def test_next_run_is_the_earliest_cron_time():
    now = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    assert next_run(["0 * * * *", "45 12 * * *"], now=now) == datetime(
        2026, 1, 1, 12, 45, tzinfo=UTC
    )
    assert next_run([], now=now) is None


def test_search_by_name_or_label():
    entry = {"name": "train-model", "worker_selector": {"gpu": "true"}}
    assert dag_matches_search(entry, query="TRAIN")
    assert dag_matches_search(entry, query="gpu=true")
    assert not dag_matches_search(entry, query="region=eu")
    assert dag_matches_search({"name": "x", "worker_selector": "local"}, query="local")


def test_step_graph_follows_depends_or_file_order():
    graph = step_graph(parse_dag_file(GPU, source="gpu.yaml", default_name="gpu").main)
    assert [n["id"] for n in graph["nodes"]] == ["prep", "train", "report"]
    assert graph["edges"] == [["prep", "train"], ["prep", "report"]]
    ordered = step_graph(parse_dag_file(HELLO, source="hello.yaml", default_name="hello").main)
    assert ordered["edges"] == [["greet", "bye"]]


def test_dags_page_lists_every_file_and_broken_ones_with_their_error(staff):
    DagRun.objects.create(id="r1", dag_name="hello", spec=HELLO, execution_mode="local",
                          queued_at=datetime.now(UTC), status="failed")  # fmt: skip
    html = staff.get("/dags/").content.decode()
    assert 'data-dag="hello"' in html and 'data-dag="train-model"' in html
    assert 'data-dag="broken" data-valid="false"' in html
    assert "does not support worker_selector" in html
    assert "gpu=true" in html and "0 * * * *" in html
    assert "status-failed" in html  # hello's last run
    searched = staff.get("/dags/?q=gpu=true").content.decode()
    assert 'data-dag="train-model"' in searched and 'data-dag="hello"' not in searched


def test_dag_page_shows_graph_yaml_params_and_history(staff):
    html = staff.get("/dags/train-model/").content.decode()
    assert 'id="dag-graph-data"' in html and "&quot;prep&quot;" not in html
    assert '"edges": [["prep", "train"], ["prep", "report"]]' in html
    assert "python train.py" in html
    assert "vendor/dagre/dagre.min.js" in html
    hello = staff.get("/dags/hello/").content.decode()
    assert 'name="param_NAME" value="world"' in hello
    assert staff.get("/dags/nope/").status_code == 404


def test_start_form_starts_a_run_with_params_and_opens_its_page(staff):
    response = staff.post("/dags/hello/", {"param_NAME": "ops"})
    assert response.status_code == 302
    run = DagRun.objects.get()
    assert response["Location"] == f"/runs/{run.id}/"
    assert (run.dag_name, run.params) == ("hello", {"NAME": "ops"})


def test_start_form_needs_staff(client, staff):
    client.logout()
    assert client.post("/dags/hello/", {"param_NAME": "x"}).status_code == 302  # to login
    assert not DagRun.objects.exists()


def test_run_page_carries_the_step_graph_of_the_run(staff):
    staff.post("/dags/train-model/", {})
    run = DagRun.objects.get()
    html = staff.get(f"/runs/{run.id}/").content.decode()
    assert '"edges": [["prep", "train"], ["prep", "report"]]' in html
    assert "dag_graph.js" in html


def test_the_start_form_asks_the_one_permission_check(staff, monkeypatch):
    monkeypatch.setattr("controlplane.dag_pages.can_start_runs", lambda user: False)
    assert 'id="start-form"' not in staff.get("/dags/hello/").content.decode()
    assert staff.post("/dags/hello/", {}).status_code == 403
    assert not DagRun.objects.exists()
