"""REST API: authentication and the workers endpoints (SPEC section 9)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dags.models import Attempt, DagRun
from tests.roles import user_with_role
from workers.models import Worker, WorkerLabel

pytestmark = pytest.mark.django_db

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
WORKER_KEYS = {
    "id", "labels", "health_status", "last_heartbeat", "running_tasks", "host", "pid",
    "max_active_runs", "busy", "draining", "registered_via",
}  # fmt: skip
TASK_KEYS = {
    "dag_name", "dag_run_id", "root_dag_run_name", "root_dag_run_id", "parent_dag_run_name",
    "parent_dag_run_id", "started_at",
}  # fmt: skip


def make_worker(wid: str, *, age: float | None, labels: dict[str, str] | None = None,
                **fields) -> Worker:  # fmt: skip
    now = datetime.now(UTC)
    worker = Worker.objects.create(
        id=wid,
        labels=labels or {},
        registered_at=now - timedelta(hours=1),
        last_heartbeat_at=None if age is None else now - timedelta(seconds=age),
        host=fields.pop("host", "node1"),
        pid=fields.pop("pid", 4242),
        **fields,
    )
    WorkerLabel.objects.bulk_create(
        WorkerLabel(worker=worker, key=k, value=v) for k, v in (labels or {}).items()
    )
    return worker


def make_run(run_id: str, *, worker: str = "", status: str = "running", **fields) -> DagRun:
    """A distributed run as dispatch leaves it: a running one holds its worker's active
    attempt (what makes the worker busy), a finished one a finished attempt."""
    now = datetime.now(UTC)
    run = DagRun.objects.create(
        id=run_id,
        dag_name=fields.pop("dag_name", "etl"),
        spec="steps: []",
        execution_mode="distributed",
        queued_at=now - timedelta(seconds=30),
        started_at=now - timedelta(seconds=20),
        status=status,
        worker_id=worker,
        attempt=1,
        **fields,
    )
    Attempt.objects.create(
        run=run,
        number=1,
        token=f"token-{run_id}",
        mode="distributed",
        worker_id=worker,
        status="running" if status == "running" else "succeeded",
        created_at=run.queued_at,
        started_at=run.started_at,
    )
    return run


@pytest.fixture
def token() -> str:
    user = user_with_role("api-user", "manager")
    return Token.objects.create(user=user).key


@pytest.fixture
def api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def fleet() -> None:
    make_worker("gpu-1@100", age=1, labels={"gpu": "true", "region": "us-east-1"})
    make_worker("cpu-1.example.com@200", age=8, labels={"region": "us-east-1"}, draining=True)
    make_worker("cpu-2@300", age=20, labels={"region": "eu-west-1"})
    make_worker("old@400", age=120, labels={"region": "eu-west-1"})


def by_id(response) -> dict[str, dict]:
    return {w["id"]: w for w in response.json()["workers"]}


def test_missing_credentials_get_401_json():
    response = APIClient().get("/api/v2/workers")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_token_gets_401_json():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")
    response = client.get("/api/v2/workers")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


def test_bearer_token_is_accepted(api: APIClient):
    response = api.get("/api/v2/workers")
    assert response.status_code == 200
    assert response.json()["workers"] == []


def test_admin_session_is_accepted(admin_client: Client):
    response = admin_client.get("/api/v2/workers")
    assert response.status_code == 200
    assert response.json()["workers"] == []


def test_session_post_without_csrf_token_is_refused(admin_user):
    make_worker("w@1", age=1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post("/api/v2/workers/w@1/drain")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Worker.objects.get(pk="w@1").draining


def test_worker_json_has_the_exact_keys_and_formats(api: APIClient, fleet: None):
    response = api.get("/api/v2/workers")
    assert response.status_code == 200
    workers = response.json()["workers"]
    assert [w["id"] for w in workers] == sorted(w["id"] for w in workers)
    for worker in workers:
        assert set(worker) == WORKER_KEYS
        assert RFC3339_UTC.match(worker["last_heartbeat"]), worker["last_heartbeat"]
    gpu = by_id(response)["gpu-1@100"]
    assert gpu["labels"] == {"gpu": "true", "region": "us-east-1"}
    assert (gpu["host"], gpu["pid"], gpu["max_active_runs"], gpu["busy"]) == ("node1", 4242, 10, 0)
    assert gpu["draining"] is False
    assert gpu["running_tasks"] == []


def test_health_is_computed_from_the_last_heartbeat(api: APIClient, fleet: None):
    make_worker("never@500", age=None)
    health = {wid: w["health_status"] for wid, w in by_id(api.get("/api/v2/workers")).items()}
    assert health == {
        "gpu-1@100": "HEALTHY",
        "cpu-1.example.com@200": "WARNING",
        "cpu-2@300": "UNHEALTHY",
        "old@400": "OFFLINE",
        "never@500": "OFFLINE",
    }
    assert by_id(api.get("/api/v2/workers"))["never@500"]["last_heartbeat"] is None


def test_running_tasks_carry_the_run_hierarchy(api: APIClient):
    make_worker("w@1", age=1, max_active_runs=4)
    root = make_run("root1", dag_name="parent", worker="main")
    make_run("child1", dag_name="train", worker="w@1", root=root, parent=root)
    make_run("solo1", dag_name="solo", worker="w@1")
    make_run("done1", worker="w@1", status="succeeded")
    worker = api.get("/api/v2/workers/w@1").json()
    assert worker["busy"] == 2
    tasks = {t["dag_run_id"]: t for t in worker["running_tasks"]}
    assert set(tasks) == {"child1", "solo1"}
    for task in tasks.values():
        assert set(task) == TASK_KEYS
        assert RFC3339_UTC.match(task["started_at"])
    assert tasks["child1"] | {"started_at": None} == {
        "dag_name": "train",
        "dag_run_id": "child1",
        "root_dag_run_name": "parent",
        "root_dag_run_id": "root1",
        "parent_dag_run_name": "parent",
        "parent_dag_run_id": "root1",
        "started_at": None,
    }
    solo = tasks["solo1"]
    assert (solo["root_dag_run_id"], solo["parent_dag_run_id"], solo["parent_dag_run_name"]) == (
        "solo1",
        "",
        "",
    )


def test_health_filter(api: APIClient, fleet: None):
    assert list(by_id(api.get("/api/v2/workers?health=WARNING"))) == ["cpu-1.example.com@200"]
    assert list(by_id(api.get("/api/v2/workers?health=offline"))) == ["old@400"]


def test_unknown_health_filter_is_a_400_with_one_line(api: APIClient):
    response = api.get("/api/v2/workers?health=SICK")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "\n" not in detail
    assert detail.startswith('health: unknown state "SICK"')


def test_selector_filter_requires_every_pair(api: APIClient, fleet: None):
    assert set(by_id(api.get("/api/v2/workers?selector=region=us-east-1"))) == {
        "gpu-1@100",
        "cpu-1.example.com@200",
    }
    assert list(by_id(api.get("/api/v2/workers?selector=region=us-east-1,gpu=true"))) == [
        "gpu-1@100"
    ]
    assert by_id(api.get("/api/v2/workers?selector=gpu=false")) == {}


def test_bad_selector_is_a_400_naming_the_item(api: APIClient):
    response = api.get("/api/v2/workers?selector=gpu")
    assert response.status_code == 400
    assert response.json() == {"detail": 'selector: invalid label "gpu": expected key=value'}


def test_worker_detail_accepts_ids_with_at_and_dots(api: APIClient, fleet: None):
    response = api.get("/api/v2/workers/cpu-1.example.com@200")
    assert response.status_code == 200
    assert response.json()["id"] == "cpu-1.example.com@200"
    assert set(response.json()) == WORKER_KEYS


def test_unknown_worker_is_a_404_json(api: APIClient):
    response = api.get("/api/v2/workers/nobody@1")
    assert response.status_code == 404
    assert response.json() == {"detail": 'worker "nobody@1" not found'}


def test_drain_and_undrain(api: APIClient, fleet: None):
    response = api.post("/api/v2/workers/gpu-1@100/drain")
    assert response.status_code == 200
    assert response.json()["draining"] is True
    assert Worker.objects.get(pk="gpu-1@100").draining
    response = api.post("/api/v2/workers/gpu-1@100/undrain")
    assert response.status_code == 200
    assert response.json()["draining"] is False
    assert not Worker.objects.get(pk="gpu-1@100").draining


def test_draining_an_unknown_worker_is_a_404(api: APIClient):
    response = api.post("/api/v2/workers/nobody@1/drain")
    assert response.status_code == 404
    assert "nobody@1" in response.json()["detail"]


def test_drain_needs_post(api: APIClient, fleet: None):
    assert api.get("/api/v2/workers/gpu-1@100/drain").status_code == 405


def test_workers_are_paged_with_limit_offset_and_count(api: APIClient):
    for i in range(5):
        make_worker(f"w{i}", age=1, labels={"pool": "a" if i % 2 else "b"})
    body = api.get("/api/v2/workers?limit=2&offset=1").json()
    assert [w["id"] for w in body["workers"]] == ["w1", "w2"]
    assert body["count"] == 5
    assert "offset=3" in body["next"] and "offset=0" not in body["previous"]
    filtered = api.get("/api/v2/workers?selector=pool=a&limit=1").json()
    assert ([w["id"] for w in filtered["workers"]], filtered["count"]) == (["w1"], 2)


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "offset=-1", "offset=99999999999"])
def test_a_bad_page_is_a_400_naming_the_parameter(api: APIClient, query: str):
    response = api.get(f"/api/v2/workers?{query}")
    assert response.status_code == 400
    assert response.json()["detail"].startswith(query.split("=")[0] + ": expected an integer")


def test_ten_thousand_workers_list_one_page_in_a_few_queries(api: APIClient):
    now = datetime.now(UTC)
    Worker.objects.bulk_create(
        Worker(id=f"w{i:05d}", registered_at=now, labels={"pool": f"p{i % 10}"},
               last_heartbeat_at=now, max_active_runs=4)
        for i in range(10_000)
    )  # fmt: skip
    with CaptureQueriesContext(connection) as queries:
        body = api.get("/api/v2/workers?health=healthy").json()
    assert body["count"] == 10_000
    assert len(body["workers"]) == 100  # the default page
    assert len(api.get("/api/v2/workers?limit=100000").json()["workers"]) == 1000  # the cap
    assert len(queries) <= 6  # auth, count, the page, its running runs: not one per worker
