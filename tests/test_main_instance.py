"""The main instance as an operator runs it: `start_all` serving the API next to the
coordinator, and the `make run` demo bringing the whole system up."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import pytest

from tests.procs import Cluster, free_port, wait_for

pytestmark = pytest.mark.processes


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_start_all_serves_the_workers_api_with_bearer_tokens(cluster: Cluster):
    web = free_port()
    proc = cluster.spawn("main", "start_all", "--port", str(web))
    wait_for(
        lambda: "web UI and API" in cluster.log("main") or proc.poll() is not None,
        timeout=30,
        what="start_all to listen",
    )
    assert proc.poll() is None, cluster.log("main")
    cluster.start_worker("api-w", "gpu=true,region=eu-west-1")
    created = cluster.manage("create_api_token", "ops", "--create-user")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
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


def test_make_run_brings_up_the_demo_and_routes_its_run_by_labels(cluster: Cluster):
    web = free_port()
    proc = cluster.spawn("demo", "demo", "--port", str(web))
    wait_for(
        lambda: "Ctrl-C stops everything" in cluster.log("demo") or proc.poll() is not None,
        timeout=60,
        what="the demo banner",
    )
    assert proc.poll() is None, cluster.log("demo")
    assert "admin / admin" in cluster.log("demo")

    def demo_run():
        rows = cluster.query("SELECT * FROM dags_dagrun WHERE parent_id IS NULL")
        return rows and rows[0]["status"] == "succeeded" and rows[0]

    run = wait_for(demo_run, timeout=60, what="the demo run to succeed")
    assert run["worker_id"] == "demo-gpu"
    with urllib.request.urlopen(f"http://127.0.0.1:{web}/admin/login/", timeout=10) as page:
        assert page.status == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    assert "demo stopped" in cluster.log("demo")
