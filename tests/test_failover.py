"""Fault tests with real processes: lost and frozen workers, coordinator restarts, a damaged
service registry. Health thresholds are shrunk (warning 1.5 s, unhealthy 3 s, offline 6 s)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.core.config import resolve
from controlplane.core.health import OFFLINE, UNHEALTHY, WARNING, health_status
from tests.procs import Cluster, wait_for, write_dag

pytestmark = pytest.mark.processes


def two_step_dag(tmp_path: Path, *, hold: float, labels: str = "pool: gpu") -> Path:
    marks = tmp_path / "marks"
    return write_dag(
        tmp_path,
        "resumable",
        f"""
worker_selector: {{{labels}}}
steps:
  - name: prepare
    command: echo prepare >> {marks}
  - name: train
    command: echo train-start >> {marks}; sleep {hold}; echo train-end >> {marks}
  - name: publish
    command: echo publish >> {marks}
""",
    )


def as_utc(value: str | datetime | None) -> datetime | None:
    """A timestamp column as read back: text without a zone from SQLite, aware from PG."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def marks(tmp_path: Path) -> list[str]:
    path = tmp_path / "marks"
    return path.read_text().split() if path.exists() else []


def test_a_killed_workers_run_completes_on_another_worker(fast_cluster: Cluster, tmp_path: Path):
    c = fast_cluster
    c.start_coordinator()
    c.start_worker("w1", "pool=gpu")
    c.start_worker("w2", "pool=gpu")
    run_id = c.start_run(two_step_dag(tmp_path, hold=6))
    wait_for(lambda: "train-start" in marks(tmp_path), timeout=30, what="the long step to start")
    victim = c.run_row(run_id)["worker_id"]
    survivor = "w2" if victim == "w1" else "w1"
    c.kill(victim)
    row = c.wait_run(run_id, timeout=60)
    assert (row["status"], row["worker_id"]) == ("succeeded", survivor)
    # The finished step did not run again; the interrupted one did.
    assert marks(tmp_path).count("prepare") == 1
    assert marks(tmp_path).count("publish") == 1
    status = c.status(run_id)
    assert [a["status"] for a in status["attempts"]] == ["superseded", "succeeded"]
    events = [d["event"] for d in status["dispatch_decisions"]]
    assert "redispatched" in events
    redispatch = next(d for d in status["dispatch_decisions"] if d["event"] == "redispatched")
    assert victim in redispatch["detail"] and "UNHEALTHY" in redispatch["detail"]


def test_a_frozen_worker_goes_unhealthy_and_its_stale_attempt_is_cancelled(
    fast_cluster: Cluster, tmp_path: Path
):
    c = fast_cluster
    c.start_coordinator()
    c.start_worker("frozen", "pool=gpu")
    run_id = c.start_run(two_step_dag(tmp_path, hold=4))
    wait_for(lambda: "train-start" in marks(tmp_path), timeout=30, what="the long step to start")
    os.kill(c.procs["frozen"].pid, signal.SIGSTOP)
    try:
        # Health is the age of the row's last heartbeat, as `workers` computes it. Sampling
        # that command (1-2 s per process under load) skipped the 1.5 s WARNING window on a
        # busy machine; a read of the row takes a millisecond, so every state is seen.
        timing = resolve(env=c.env).timing
        seen: list[str] = []

        def health() -> str:
            last = as_utc(c.worker_row("frozen")["last_heartbeat_at"])
            state = health_status(last, now=datetime.now(UTC), timing=timing)
            if not seen or seen[-1] != state:
                seen.append(state)
            return state

        wait_for(
            lambda: health() == OFFLINE,
            timeout=30,
            what="the frozen worker to go OFFLINE",
            every=0.02,
        )
        assert seen[-3:] == [WARNING, UNHEALTHY, OFFLINE]
        rows = json.loads(c.manage("workers", "--json", check=True).stdout)["workers"]
        assert next(w["health_status"] for w in rows if w["id"] == "frozen") == OFFLINE
        wait_for(
            lambda: c.run_row(run_id)["status"] == "queued",
            timeout=10,
            what="the run to be queued again",
        )
        c.start_worker("fresh", "pool=gpu")
    finally:
        os.kill(c.procs["frozen"].pid, signal.SIGCONT)
    row = c.wait_run(run_id, timeout=60)
    assert (row["status"], row["worker_id"]) == ("succeeded", "fresh")
    wait_for(
        lambda: "superseded" in c.log("frozen"),
        timeout=20,
        what="the thawed worker to drop its stale attempt",
    )
    wait_for(
        lambda: "rejected" in c.log("coordinator"),
        timeout=20,
        what="the coordinator to refuse the stale reports",
    )
    assert c.status(run_id)["status"] == "succeeded"


def test_a_coordinator_restart_loses_nothing(cluster: Cluster, tmp_path: Path):
    c = cluster
    c.start_coordinator()
    c.start_worker("steady", "pool=gpu")
    run_id = c.start_run(two_step_dag(tmp_path, hold=4))
    wait_for(lambda: "train-start" in marks(tmp_path), timeout=30, what="the long step to start")
    c.kill("coordinator")
    wait_for(lambda: "train-end" in marks(tmp_path), timeout=30, what="the step to finish offline")
    c.start_coordinator("coordinator-2")
    row = c.wait_run(run_id, timeout=60)
    assert (row["status"], row["worker_id"]) == ("succeeded", "steady")
    assert marks(tmp_path) == ["prepare", "train-start", "train-end", "publish"]
    assert len(c.status(run_id)["attempts"]) == 1


def test_corrupt_and_half_written_registry_files_are_skipped(fast_cluster: Cluster, tmp_path: Path):
    c = fast_cluster
    c.start_coordinator()
    worker_dir = c.registry / "worker"
    worker_dir.mkdir(parents=True, exist_ok=True)
    (worker_dir / "garbage-host-1.json").write_text("{not json")
    (worker_dir / "half-host-2.json").write_text('{"id": "half", "host": "h", "pi')
    (worker_dir / "foreign-host-3.json").write_text('{"hello": "world"}')
    c.start_worker("real", "pool=gpu")
    run_id = c.start_run(two_step_dag(tmp_path, hold=0.1))
    assert c.wait_run(run_id, timeout=30)["status"] == "succeeded"
    ids = [w["id"] for w in json.loads(c.manage("workers", "--json").stdout)["workers"]]
    assert ids == ["real"]
    assert c.procs["coordinator"].poll() is None
    assert "skip" in c.log("coordinator").lower()


def test_the_registry_dir_deleted_while_running(fast_cluster: Cluster, tmp_path: Path):
    c = fast_cluster
    c.start_coordinator()
    c.start_worker("w", "pool=gpu")
    wait_for(
        lambda: list((c.registry / "worker").glob("*.json")),
        timeout=10,
        what="the worker's registry file",
    )
    shutil.rmtree(c.registry)
    run_id = c.start_run(two_step_dag(tmp_path, hold=0.1))
    assert c.wait_run(run_id, timeout=30)["status"] == "succeeded"
    wait_for(
        lambda: (
            list((c.registry / "worker").glob("*.json"))
            and list((c.registry / "coordinator").glob("*.json"))
        ),
        timeout=15,
        what="both registry files to be recreated",
    )


def test_a_worker_without_registry_access_is_registered_from_heartbeats(
    cluster: Cluster, tmp_path: Path
):
    c = cluster
    c.start_coordinator()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the registry dir should be")
    c.start_worker("no-registry", "pool=gpu", extra=("--service-registry-dir", str(blocked)))
    assert c.worker_row("no-registry")["registered_via"] == "heartbeat"
    run_id = c.start_run(two_step_dag(tmp_path, hold=0.1))
    assert c.wait_run(run_id, timeout=30)["status"] == "succeeded"
    assert "without a registry file" in c.log("no-registry")


def test_a_worker_discovers_the_coordinator_from_the_registry(cluster: Cluster, tmp_path: Path):
    c = cluster
    c.start_coordinator()
    proc = c.spawn(
        "discoverer", "worker", "--worker.id", "discoverer", "--worker.labels", "pool=gpu"
    )
    wait_for(
        lambda: c.worker_row("discoverer") or proc.poll() is not None,
        timeout=30,
        what="the worker to find the coordinator",
    )
    run_id = c.start_run(two_step_dag(tmp_path, hold=0.1))
    assert c.wait_run(run_id, timeout=30)["worker_id"] == "discoverer"


def test_drain_stops_new_runs_but_finishes_running_ones(cluster: Cluster, tmp_path: Path):
    c = cluster
    c.start_coordinator()
    c.start_worker("drainee", "pool=gpu")
    run_id = c.start_run(two_step_dag(tmp_path, hold=2))
    wait_for(lambda: "train-start" in marks(tmp_path), timeout=30, what="the long step to start")
    assert c.manage("workers", "--drain", "drainee").returncode == 0
    second = c.start_run(two_step_dag(tmp_path, hold=0.1))
    assert c.wait_run(run_id, timeout=30)["status"] == "succeeded"
    wait_for(
        lambda: c.run_row(second)["waiting_reason"] == "matching_workers_draining",
        timeout=10,
        what=f"the second run to wait for the drained worker: {c.status(second)}",
    )
    assert c.manage("workers", "--undrain", "drainee").returncode == 0
    assert c.wait_run(second, timeout=30)["status"] == "succeeded"


def test_sigterm_stops_a_worker_gracefully(cluster: Cluster, tmp_path: Path):
    c = cluster
    c.start_coordinator()
    c.start_worker("polite", "pool=gpu")
    run_id = c.start_run(two_step_dag(tmp_path, hold=1))
    wait_for(lambda: "train-start" in marks(tmp_path), timeout=30, what="the long step to start")
    assert c.stop("polite") == 0
    assert c.wait_run(run_id, timeout=10)["status"] == "succeeded"
    assert not list((c.registry / "worker").glob("*.json"))
    assert c.stop("coordinator") == 0
    assert not list((c.registry / "coordinator").glob("*.json"))


def test_a_restarted_worker_loses_its_runs_to_a_new_attempt(cluster: Cluster, tmp_path: Path):
    c = cluster
    c.start_coordinator()
    c.start_worker("phoenix", "pool=gpu")
    run_id = c.start_run(two_step_dag(tmp_path, hold=30))
    wait_for(lambda: "train-start" in marks(tmp_path), timeout=30, what="the long step to start")
    c.kill("phoenix")
    c.start_worker("phoenix", "pool=gpu")  # same id, new process, long before UNHEALTHY
    wait_for(lambda: c.run_row(run_id)["attempt"] == 2, timeout=15, what="a second attempt")
    assert c.run_row(run_id)["redispatch_count"] == 1
    assert marks(tmp_path).count("prepare") == 1  # resumed after the finished step
    decisions = c.status(run_id)["dispatch_decisions"]
    assert any("restarted" in d["detail"] for d in decisions)


def test_a_local_run_whose_start_process_died_resumes_on_the_main_instance(
    cluster: Cluster, tmp_path: Path
):
    c = cluster
    c.start_coordinator()  # runs the main instance's local executor too
    dag = write_dag(
        tmp_path,
        "local-resume",
        f"""
worker_selector: local
steps:
  - name: prepare
    command: echo prepare >> {tmp_path / "marks"}
  - name: train
    command: echo train-start >> {tmp_path / "marks"}; sleep 30
""",
    )
    c.spawn("starter", "start", str(dag))
    wait_for(lambda: "train-start" in marks(tmp_path), timeout=30, what="the long step to start")
    run_id = c.query("SELECT id FROM dags_dagrun")[0]["id"]
    c.kill("starter")
    wait_for(lambda: c.run_row(run_id)["attempt"] == 2, timeout=20, what="a second, local attempt")
    status = c.status(run_id)
    # Now held by the main instance ("local:HOST:PID" on PostgreSQL, see dags/local.py).
    assert status["worker_id"].split(":")[0] == "local"
    assert "exited" in status["attempts"][0]["end_reason"]
    assert marks(tmp_path).count("prepare") == 1
    c.manage("cancel", run_id)
    assert c.wait_run(run_id, timeout=20)["status"] == "cancelled"
