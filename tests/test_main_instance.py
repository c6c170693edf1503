"""The main instance as an operator runs it: `start_all` serving the API next to the
coordinator, and the `make run` demo bringing the whole system up."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import pytest

from tests.procs import Cluster, free_port, wait_for, write_dag

pytestmark = pytest.mark.processes


def get(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_start_all_serves_the_workers_api_with_bearer_tokens(cluster: Cluster):
    web = cluster.start_main()
    cluster.start_worker("api-w", "gpu=true,region=eu-west-1")
    token = api_token(cluster)
    url = f"http://127.0.0.1:{web}/api/v2/workers"
    status, body = get(url)
    assert status == 401 and "detail" in body
    assert get(url, "wrong-token")[0] == 401
    status, body = get(url, token)
    assert status == 200
    worker = next(w for w in body["workers"] if w["id"] == "api-w")
    assert worker["labels"] == {"gpu": "true", "region": "eu-west-1"}
    assert worker["health_status"] == "HEALTHY"
    assert worker["last_heartbeat"].endswith("Z")
    assert {"running_tasks", "host", "pid", "max_active_runs", "busy", "draining"} <= set(worker)
    assert get(url + "?selector=gpu=false", token)[1]["workers"] == []
    assert cluster.stop("main") == 0


def api_token(cluster: Cluster) -> str:
    created = cluster.manage("create_api_token", "ops", "--role", "manager")
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


def test_start_all_serves_the_dags_and_registry_its_flags_name(cluster: Cluster, tmp_path):
    dags, registry = tmp_path / "flagged-dags", tmp_path / "flagged-registry"
    dags.mkdir()
    (cluster.home / "dags").mkdir()
    write_dag(dags, "flagged", "steps:\n  - name: hello\n    command: echo from-the-flagged-dir\n")
    write_dag(cluster.home / "dags", "default-dir", "steps:\n  - name: a\n    command: 'true'\n")
    web = cluster.start_main("main", "--dags", str(dags), "--service-registry-dir", str(registry))
    token = api_token(cluster)
    api = f"http://127.0.0.1:{web}/api/v2"
    status, body = get(f"{api}/dags", token)
    assert status == 200, body
    assert [d["name"] for d in body["dags"]] == ["flagged"]
    assert get(f"{api}/dags/flagged", token)[0] == 200
    status, body = get(f"{api}/dag-runs", token, {"dag": "flagged"})
    assert status == 201, body
    run_id = body["dag_run_id"]
    assert cluster.wait_run(run_id, timeout=30)["status"] == "succeeded"
    logs = get(f"{api}/dag-runs/{run_id}/logs", token)[1]
    assert "from-the-flagged-dir" in json.dumps(logs)
    # The coordinator registered where the flag says, and nowhere else.
    assert list((registry / "coordinator").glob("*.json"))
    assert not cluster.registry.exists()
    assert cluster.stop("main") == 0


def test_make_run_brings_up_the_demo_and_routes_its_run_by_labels(cluster: Cluster):
    # `demo` hands fixed ports to the processes it starts, so this test picks them.
    web = free_port()
    cluster.env["DAGU_COORDINATOR_PORT"] = str(free_port())
    proc = cluster.spawn("demo", "demo", "--port", str(web))
    wait_for(
        lambda: "Ctrl-C stops everything" in cluster.log("demo") or proc.poll() is not None,
        timeout=60,
        what="the demo banner",
    )
    assert proc.poll() is None, cluster.log("demo")
    assert "admin / admin" in cluster.log("demo")

    # By dag name: the copied examples include a cron DAG that may fire meanwhile.
    def demo_run():
        rows = cluster.query(
            "SELECT * FROM dags_dagrun WHERE parent_id IS NULL AND dag_name = ?", "gpu-cpu-routing"
        )
        return rows and rows[0]["status"] == "succeeded" and rows[0]

    run = wait_for(demo_run, timeout=60, what="the demo run to succeed")
    assert run["worker_id"] == "demo-gpu"
    with urllib.request.urlopen(f"http://127.0.0.1:{web}/admin/login/", timeout=10) as page:
        assert page.status == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    assert "demo stopped" in cluster.log("demo")
