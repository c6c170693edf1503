"""REST API: runs (create, list, detail, cancel, retry, logs), DAG files, the schema."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dags.models import DagRun, StepRun
from dags.reports import step_log_path
from tests.roles import user_with_role

pytestmark = pytest.mark.django_db

HELLO = """\
description: says hello
params: NAME=world
steps:
  - name: greet
    command: echo "hello ${NAME}"
  - name: bye
    command: echo bye
"""
GPU = """\
name: train-model
schedule: "0 * * * *"
worker_selector:
  gpu: "true"
steps:
  - name: train
    command: python train.py
"""
BROKEN = """\
steps:
  - name: a
    command: echo a
    worker_selector:
      gpu: "true"
"""
SHELL_SELECTOR_ERROR = (
    'steps[0].worker_selector: executor type "shell" does not support worker_selector field'
)
SHELL_SELECTOR_HINT = (
    "steps[0].worker_selector: hint: to route this step, put worker_selector at the DAG level, "
    "or move the step into a sub-DAG called with call: and put worker_selector on that call step"
)
LIST_ITEM_KEYS = {
    "dag_run_id", "dag_name", "status", "waiting_reason", "execution_mode", "worker_id",
    "attempt", "queued_at", "started_at", "finished_at", "root_dag_run_id", "parent_dag_run_id",
    "parent_dag_run_name",
}  # fmt: skip


@pytest.fixture
def dagu(settings, tmp_path: Path) -> Path:
    """Point the API's config at a temporary DAGs dir and log dir holding three files."""
    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    (dags_dir / "hello.yaml").write_text(HELLO)
    (dags_dir / "gpu.yaml").write_text(GPU)
    (dags_dir / "broken.yml").write_text(BROKEN)
    (dags_dir / "notes.txt").write_text("not a DAG")
    paths = dataclasses.replace(settings.DAGU.paths, dags_dir=dags_dir, log_dir=tmp_path / "logs")
    settings.DAGU = dataclasses.replace(settings.DAGU, paths=paths)
    return tmp_path


@pytest.fixture
def wakes(monkeypatch) -> list[object]:
    """Coordinator wake-ups the API sent (none is running in these tests)."""
    calls: list[object] = []
    monkeypatch.setattr("dags.api.wake_coordinator_soon", calls.append)
    return calls


@pytest.fixture
def api() -> APIClient:
    user = user_with_role("api-user", "manager")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client


def make_run(run_id: str, *, status: str = "succeeded", age: int = 0, **fields) -> DagRun:
    queued = datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=age)
    return DagRun.objects.create(
        id=run_id,
        dag_name=fields.pop("dag_name", "etl"),
        spec=HELLO,
        execution_mode=fields.pop("execution_mode", "local"),
        queued_at=queued,
        status=status,
        **fields,
    )


def create(api: APIClient, body: object):
    return api.post("/api/v2/dag-runs", body, format="json")


# ---- create


def test_create_a_run_of_a_named_dag(api, dagu, wakes):
    response = create(api, {"dag": "hello", "params": {"NAME": "ops"}})
    assert response.status_code == 201
    run = DagRun.objects.get(pk=response.json()["dag_run_id"])
    assert response.json() == {"dag_run_id": run.id}
    assert (run.dag_name, run.status, run.params) == ("hello", "queued", {"NAME": "ops"})
    assert run.source == str(dagu / "dags" / "hello.yaml")
    assert [s.name for s in run.steps.order_by("position")] == ["greet", "bye"]
    assert len(wakes) == 1


def test_create_accepts_params_as_a_string(api, dagu, wakes):
    response = create(api, {"dag": "hello", "params": "NAME='two words' EXTRA=1"})
    assert response.status_code == 201
    run = DagRun.objects.get(pk=response.json()["dag_run_id"])
    assert run.params == {"NAME": "two words", "EXTRA": "1"}


def test_scalar_params_become_strings(api, dagu, wakes):
    response = create(api, {"dag": "hello", "params": {"NAME": 7, "FLAG": True}})
    run = DagRun.objects.get(pk=response.json()["dag_run_id"])
    assert run.params == {"NAME": "7", "FLAG": "true"}


def test_a_dag_can_be_named_by_its_main_dag_name(api, dagu, wakes):
    response = create(api, {"dag": "train-model"})
    assert response.status_code == 201
    run = DagRun.objects.get(pk=response.json()["dag_run_id"])
    assert (run.dag_name, run.execution_mode, run.worker_selector) == (
        "train-model",
        "distributed",
        {"gpu": "true"},
    )


def test_create_a_run_from_an_inline_spec(api, dagu, wakes):
    response = create(api, {"spec": HELLO, "name": "adhoc", "params": {"NAME": "x"}})
    assert response.status_code == 201
    run = DagRun.objects.get(pk=response.json()["dag_run_id"])
    assert (run.dag_name, run.source, run.params) == ("adhoc", "adhoc.yaml", {"NAME": "x"})


def test_an_inline_spec_keeps_its_own_name(api, dagu, wakes):
    response = create(api, {"spec": GPU, "name": "ignored"})
    assert DagRun.objects.get(pk=response.json()["dag_run_id"]).dag_name == "train-model"


def test_an_invalid_spec_is_a_400_listing_every_problem(api, dagu, wakes):
    response = create(api, {"spec": BROKEN})
    assert response.status_code == 400
    assert response.json()["errors"] == [SHELL_SELECTOR_ERROR, SHELL_SELECTOR_HINT]
    assert "invalid DAG spec" in response.json()["detail"]
    assert not DagRun.objects.exists()
    assert wakes == []


def test_an_invalid_dag_file_is_a_400_too(api, dagu, wakes):
    response = create(api, {"dag": "broken"})
    assert response.status_code == 400
    assert response.json()["errors"] == [SHELL_SELECTOR_ERROR, SHELL_SELECTOR_HINT]


def test_a_yaml_syntax_error_is_reported(api, dagu, wakes):
    response = create(api, {"spec": "steps: [\n"})
    assert response.status_code == 400
    assert len(response.json()["errors"]) == 1


@pytest.mark.parametrize("name", ["nope", "../dags/hello", "/etc/passwd", ".hidden"])
def test_unknown_or_outside_dag_names_are_a_404(api, dagu, wakes, name):
    response = create(api, {"dag": name})
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


def test_a_dag_name_never_reaches_the_working_directory(api, dagu, wakes, monkeypatch):
    monkeypatch.chdir(dagu)
    (dagu / "stray.yaml").write_text(HELLO)
    assert create(api, {"dag": "stray"}).status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, 'give exactly one of "dag"'),
        ({"dag": "hello", "spec": HELLO}, 'give exactly one of "dag"'),
        (["hello"], "expected a JSON object"),
        ({"dag": 5}, "dag: expected the name of a DAG"),
        ({"dag": "hello", "params": "NAME"}, 'params: "NAME" is not NAME=VALUE'),
        ({"dag": "hello", "params": {"1X": "a"}}, 'params: "1X" is not a valid parameter name'),
        ({"dag": "hello", "params": {"X": [1]}}, "params.X: expected a string"),
        ({"dag": "hello", "params": 3}, "params: expected an object"),
        ({"spec": HELLO, "name": "a/b"}, "name: 'a/b' is not a valid DAG name"),
    ],
)
def test_bad_create_requests_are_a_400_with_one_line(api, dagu, wakes, body, message):
    response = create(api, body)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert message in detail
    assert "\n" not in detail


# ---- list and detail


def test_run_list_is_paginated_newest_first(api):
    for i in range(5):
        make_run(f"r{i}", age=i)
    page = api.get("/api/v2/dag-runs?limit=2").json()
    assert set(page) == {"dag_runs", "count", "next", "previous"}
    assert page["count"] == 5
    assert [r["dag_run_id"] for r in page["dag_runs"]] == ["r4", "r3"]
    assert page["previous"] is None
    assert "offset=2" in page["next"]
    page = api.get("/api/v2/dag-runs?limit=2&offset=4").json()
    assert [r["dag_run_id"] for r in page["dag_runs"]] == ["r0"]
    assert page["next"] is None


def test_run_list_items_are_compact(api):
    make_run("r1", status="queued", waiting_reason="no_workers", execution_mode="distributed")
    item = api.get("/api/v2/dag-runs").json()["dag_runs"][0]
    assert set(item) == LIST_ITEM_KEYS
    assert item == {
        "dag_run_id": "r1",
        "dag_name": "etl",
        "status": "queued",
        "waiting_reason": "no_workers",
        "execution_mode": "distributed",
        "worker_id": None,
        "attempt": 0,
        "queued_at": "2026-01-01T12:00:00.000Z",
        "started_at": None,
        "finished_at": None,
        "root_dag_run_id": "r1",
        "parent_dag_run_id": None,
        "parent_dag_run_name": None,
    }


def test_run_list_filters(api):
    root = make_run("root", status="running", worker_id="w1", dag_name="parent")
    make_run("child", status="running", worker_id="w2", root=root, parent=root, age=1)
    make_run("other", status="failed", dag_name="other", age=2)

    def ids(query: str) -> list[str]:
        return [r["dag_run_id"] for r in api.get(f"/api/v2/dag-runs?{query}").json()["dag_runs"]]

    assert ids("status=running") == ["child", "root"]
    assert ids("dag_name=other") == ["other"]
    assert ids("worker_id=w2") == ["child"]
    assert ids("root=root") == ["child", "root"]
    assert ids("parent=root") == ["child"]
    child = api.get("/api/v2/dag-runs?parent=root").json()["dag_runs"][0]
    assert (child["root_dag_run_id"], child["parent_dag_run_name"]) == ("root", "parent")


def test_unknown_status_filter_is_a_400(api):
    response = api.get("/api/v2/dag-runs?status=done")
    assert response.status_code == 400
    assert response.json()["detail"].startswith('status: unknown status "done"')


def test_run_detail_is_the_run_json(api, dagu, wakes):
    run_id = create(api, {"dag": "hello"}).json()["dag_run_id"]
    run = api.get(f"/api/v2/dag-runs/{run_id}").json()
    for key in ("dag_run_id", "dag_name", "status", "waiting_reason", "worker_id", "attempt",
                "params", "queued_at", "started_at", "finished_at", "root_dag_run_id",
                "parent_dag_run_id", "children", "steps", "attempts",
                "dispatch_decisions"):  # fmt: skip
        assert key in run
    assert (run["dag_run_id"], run["status"], run["root_dag_run_id"]) == (run_id, "queued", run_id)
    assert [s["name"] for s in run["steps"]] == ["greet", "bye"]
    assert set(run["steps"][0]) >= {"name", "status", "exit_code", "started_at", "finished_at"}
    assert run["dispatch_decisions"][0]["event"] == "created"
    assert run["queued_at"].endswith("Z")


def test_unknown_run_is_a_404(api):
    response = api.get("/api/v2/dag-runs/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": 'run "nope" not found'}


# ---- cancel and retry


def test_cancel_a_queued_run_then_cancelling_again_is_a_409(api, dagu, wakes):
    run_id = create(api, {"dag": "hello"}).json()["dag_run_id"]
    response = api.post(f"/api/v2/dag-runs/{run_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    again = api.post(f"/api/v2/dag-runs/{run_id}/cancel")
    assert again.status_code == 409
    assert again.json() == {"detail": f'run "{run_id}" already finished (cancelled)'}


def test_cancel_a_running_run_flags_it(api):
    make_run("r1", status="running", worker_id="w1")
    response = api.post("/api/v2/dag-runs/r1/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert DagRun.objects.get(pk="r1").cancel_requested


def test_retry_a_finished_run(api, wakes):
    run = make_run("r1", status="failed", error="boom")
    StepRun.objects.create(run=run, name="a", position=0, status="succeeded", exit_code=0)
    StepRun.objects.create(run=run, name="b", position=1, status="failed", exit_code=3)
    response = api.post("/api/v2/dag-runs/r1/retry")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "queued"
    assert [(s["name"], s["status"]) for s in body["steps"]] == [
        ("a", "succeeded"),
        ("b", "pending"),
    ]
    assert len(wakes) == 1


def test_retry_of_an_unfinished_run_is_a_409(api, wakes):
    make_run("r1", status="running")
    response = api.post("/api/v2/dag-runs/r1/retry")
    assert response.status_code == 409
    assert "only a finished run can be retried" in response.json()["detail"]
    assert wakes == []


def test_cancel_and_retry_of_unknown_runs_are_404(api, wakes):
    assert api.post("/api/v2/dag-runs/nope/cancel").status_code == 404
    assert api.post("/api/v2/dag-runs/nope/retry").status_code == 404


# ---- logs


def test_logs_per_step(api, dagu):
    run = make_run("r1", status="succeeded")
    log_dir = dagu / "logs"
    for position, (name, text) in enumerate([("greet", "hello ops\n"), ("bye", "")]):
        path = step_log_path(run.id, 1, name)
        if text:
            (log_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (log_dir / path).write_text(text)
        StepRun.objects.create(run=run, name=name, position=position, status="succeeded",
                               attempt=1, log_path=path)  # fmt: skip
    body = api.get("/api/v2/dag-runs/r1/logs").json()
    assert body == {
        "steps": [
            {
                "name": "greet",
                "status": "succeeded",
                "attempt": 1,
                "tries": 1,
                "try": 1,
                "log": "hello ops\n",
                "start": 0,
                "end": 10,
            },
            {
                "name": "bye",
                "status": "succeeded",
                "attempt": 1,
                "tries": 1,
                "try": 1,
                "log": "",
                "start": 0,
                "end": 0,
            },
        ]
    }
    one = api.get("/api/v2/dag-runs/r1/logs?step=greet").json()
    assert [s["name"] for s in one["steps"]] == ["greet"]
    missing = api.get("/api/v2/dag-runs/r1/logs?step=nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": 'run "r1" has no step "nope"'}


# ---- DAG files


def test_dag_list(api, dagu):
    dags = {d["file"]: d for d in api.get("/api/v2/dags").json()["dags"]}
    assert list(dags) == ["broken.yml", "gpu.yaml", "hello.yaml"]
    assert dags["hello.yaml"] == {
        "name": "hello",
        "file": "hello.yaml",
        "description": "says hello",
        "schedule": [],
        "worker_selector": {},
        "valid": True,
        "errors": [],
        "warnings": [],
    }
    assert dags["gpu.yaml"]["schedule"] == ["0 * * * *"]
    assert dags["gpu.yaml"]["worker_selector"] == {"gpu": "true"}
    assert dags["broken.yml"]["valid"] is False
    assert dags["broken.yml"]["errors"] == [SHELL_SELECTOR_ERROR, SHELL_SELECTOR_HINT]


def test_dag_list_without_a_dags_dir_is_empty(api, dagu):
    for path in (dagu / "dags").iterdir():
        path.unlink()
    (dagu / "dags").rmdir()
    assert api.get("/api/v2/dags").json() == {"dags": []}


def test_dag_detail_has_steps_and_yaml(api, dagu):
    dag = api.get("/api/v2/dags/hello").json()
    assert dag["name"] == "hello"
    assert dag["yaml"] == HELLO
    assert dag["params"] == {"NAME": "world"}
    assert [s["name"] for s in dag["steps"]] == ["greet", "bye"]
    assert dag["steps"][0]["command"] == 'echo "hello ${NAME}"'
    assert set(dag["steps"][0]) == {
        "name", "executor_type", "command", "script", "depends", "call", "worker_selector"
    }  # fmt: skip


def test_detail_of_an_invalid_dag_shows_its_errors(api, dagu):
    dag = api.get("/api/v2/dags/broken").json()
    assert (dag["valid"], dag["steps"], dag["yaml"]) == (False, [], BROKEN)


def test_unknown_dag_detail_is_a_404(api, dagu):
    assert api.get("/api/v2/dags/nope").status_code == 404


# ---- schema


def test_schema_is_served_with_auth(api):
    response = api.get("/api/v2/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/v2/workers", "/api/v2/dag-runs", "/api/v2/dag-runs/{run_id}/logs"} <= set(paths)
    assert APIClient().get("/api/v2/schema/").status_code == 401


def test_schema_generates_without_warnings(tmp_path):
    call_command("spectacular", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "createDagRun" in (tmp_path / "schema.yaml").read_text()


@pytest.mark.parametrize("params", [{"LD_PRELOAD": "/tmp/x.so"}, "NAME=a LD_PRELOAD=/tmp/x.so"])
def test_a_protected_param_is_refused_with_400_and_no_run(api, dagu, wakes, params):
    response = create(api, {"dag": "hello", "params": params})
    assert response.status_code == 400
    assert "LD_PRELOAD" in response.json()["detail"]
    assert "protected variable" in response.json()["detail"]
    assert not DagRun.objects.exists() and not wakes
