"""End to end: a real coordinator and real workers on loopback, driven by the real commands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.procs import Cluster, wait_for, write_dag

pytestmark = pytest.mark.processes

GPU_DAG = """
worker_selector:
  gpu: "true"
steps:
  - name: train
    command: echo "training on $WORKER_ID"
"""

CPU_DAG = """
worker_selector:
  cpu-only: "true"
steps:
  - name: crunch
    command: "true"
"""


def test_gpu_runs_never_land_on_a_non_gpu_worker(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_coordinator()
    cluster.start_worker("gpu-1", "gpu=true,cuda=12.0", max_runs=3)
    cluster.start_worker("cpu-1", "cpu-only=true", max_runs=3)
    cluster.start_worker("plain-1", "", max_runs=3)
    gpu = write_dag(tmp_path, "gpu", GPU_DAG)
    cpu = write_dag(tmp_path, "cpu", CPU_DAG)
    gpu_runs = [cluster.start_run(gpu) for _ in range(15)]
    cpu_runs = [cluster.start_run(cpu) for _ in range(8)]
    for run_id in gpu_runs + cpu_runs:
        cluster.wait_run(run_id, timeout=90)
    for run_id in gpu_runs:
        row = cluster.run_row(run_id)
        assert (row["status"], row["worker_id"]) == ("succeeded", "gpu-1"), run_id
    for run_id in cpu_runs:
        row = cluster.run_row(run_id)
        assert (row["status"], row["worker_id"]) == ("succeeded", "cpu-1"), run_id
    decision = cluster.status(gpu_runs[0])["dispatch_decisions"][-1]
    assert decision["event"] == "assigned"
    assert decision["chosen_worker"] == "gpu-1"
    assert decision["workers_considered"] == 3 and decision["workers_matched"] == 1


def test_start_wait_on_a_gpu_example_names_the_gpu_worker(cluster: Cluster) -> None:
    cluster.start_coordinator()
    cluster.start_worker("gpu-box", "gpu=true,cuda=12.0")
    cluster.start_worker("eu-box", "region=eu-west-1")
    example = Path(__file__).resolve().parent.parent / "examples" / "gpu-cpu-routing.yaml"
    result = cluster.manage("start", str(example), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0]
    status = cluster.status(run_id)
    assert status["status"] == "succeeded"
    assert status["worker_id"] == "gpu-box"


def test_the_concurrency_cap_is_honoured(cluster: Cluster, tmp_path: Path) -> None:
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    # Each run holds its slot until the test opens the gate, so "two at once" does not depend
    # on two sleeps happening to overlap on a busy machine.
    dag = write_dag(
        tmp_path,
        "capped",
        f"""
worker_selector: {{pool: a}}
steps:
  - name: hold
    command: echo start >> {trace}; while [ ! -e {gate} ]; do sleep 0.05; done; echo end >> {trace}
""",
    )
    cluster.start_coordinator()
    # Queue everything first so the worker is offered more than it may take.
    runs = [cluster.start_run(dag) for _ in range(6)]
    cluster.start_worker("capped-1", "pool=a", max_runs=2)

    def trace_lines() -> list[str]:
        return trace.read_text().split() if trace.exists() else []

    wait_for(lambda: trace_lines().count("start") == 2, timeout=30, what="two runs to start")
    # The other four were offered to the full worker and refused.
    wait_for(
        lambda: (
            all(
                cluster.run_row(r)["waiting_reason"] == "matching_workers_busy"
                for r in runs
                if cluster.run_row(r)["status"] == "queued"
            )
            and sum(cluster.run_row(r)["status"] == "queued" for r in runs) == 4
        ),
        timeout=30,
        what="the other runs to wait for a free slot",
    )
    assert trace_lines() == ["start", "start"]
    gate.touch()
    for run_id in runs:
        assert cluster.wait_run(run_id, timeout=60)["status"] == "succeeded"
    # Replay the trace: the number of runs between a start and its end never exceeds 2.
    depth = peak = 0
    for line in trace_lines():
        depth += 1 if line == "start" else -1
        peak = max(peak, depth)
    assert peak == 2


def test_a_run_waits_for_a_matching_worker_then_completes(cluster: Cluster, tmp_path: Path) -> None:
    dag = write_dag(
        tmp_path,
        "mars",
        """
worker_selector:
  region: mars-1
steps:
  - name: land
    command: echo landed
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("earth-1", "region=eu-west-1")
    run_id = cluster.start_run(dag)
    wait_for(
        lambda: cluster.run_row(run_id)["waiting_reason"] == "no_matching_worker",
        timeout=20,
        what="waiting reason no_matching_worker",
    )
    assert cluster.run_row(run_id)["status"] == "queued"
    cluster.start_worker("mars-1", "region=mars-1")
    row = cluster.wait_run(run_id, timeout=30)
    assert (row["status"], row["worker_id"]) == ("succeeded", "mars-1")
    events = [d["event"] for d in cluster.status(run_id)["dispatch_decisions"]]
    assert events == ["created", "waiting", "assigned"]


def test_cancel_kills_the_steps_process_tree(cluster: Cluster, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    dag = write_dag(
        tmp_path,
        "long",
        f"""
worker_selector: {{pool: b}}
steps:
  - name: forever
    command: sleep 300 & echo $! > {pidfile}; wait
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("w-cancel", "pool=b")
    run_id = cluster.start_run(dag)
    wait_for(
        lambda: pidfile.exists() and pidfile.read_text().strip(),
        timeout=30,
        what="the step to start its grandchild",
    )
    grandchild = int(pidfile.read_text())
    result = cluster.manage("cancel", run_id)
    assert result.returncode == 0, result.stderr
    assert cluster.wait_run(run_id, timeout=30)["status"] == "cancelled"
    assert cluster.steps(run_id)["forever"]["status"] == "cancelled"
    wait_for(lambda: not _alive(grandchild), timeout=10, what="the grandchild to be killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_failure_retry_and_continue_on(cluster: Cluster, tmp_path: Path) -> None:
    counter = tmp_path / "tries"
    dag = write_dag(
        tmp_path,
        "flaky",
        f"""
worker_selector: {{pool: c}}
steps:
  - name: flaky
    command: echo x >> {counter}; [ $(wc -l < {counter}) -ge 3 ]
    retry_policy: {{limit: 3, interval_sec: 0}}
  - name: allowed-to-fail
    command: exit 7
    continue_on: {{failure: true}}
  - name: after
    command: echo still here
  - name: fatal
    command: exit 3
  - name: never
    command: echo unreachable
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("w-flaky", "pool=c")
    result = cluster.manage("start", str(dag), "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    steps = cluster.steps(result.stdout.splitlines()[0])
    assert counter.read_text().count("x") == 3
    assert (steps["flaky"]["status"], steps["flaky"]["retries"]) == ("succeeded", 2)
    assert (steps["allowed-to-fail"]["status"], steps["allowed-to-fail"]["exit_code"]) == (
        "failed",
        7,
    )
    assert steps["after"]["status"] == "succeeded"
    assert (steps["fatal"]["status"], steps["fatal"]["exit_code"]) == ("failed", 3)
    assert steps["never"]["status"] == "skipped"


def test_step_output_is_captured_in_logs(cluster: Cluster, tmp_path: Path) -> None:
    dag = write_dag(
        tmp_path,
        "chatty",
        """
worker_selector: {pool: d}
steps:
  - name: talk
    command: echo "to stdout $DAG_RUN_ID"; echo "to stderr" >&2
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("w-logs", "pool=d")
    run_id = cluster.start_run(dag)
    assert cluster.wait_run(run_id)["status"] == "succeeded"
    step = cluster.steps(run_id)["talk"]
    log = (cluster.home / "logs" / step["log_path"]).read_text()
    assert f"to stdout {run_id}" in log
    assert "to stderr" in log


def test_a_local_run_never_touches_a_worker(cluster: Cluster, tmp_path: Path) -> None:
    dag = write_dag(
        tmp_path,
        "local-only",
        """
worker_selector: local
steps:
  - name: here
    command: echo "ran as $WORKER_ID"
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("w-idle", "")
    result = cluster.manage("start", str(dag), "--wait", "--json")
    assert result.returncode == 0, result.stderr
    status = cluster.status(cluster.query("SELECT id FROM dags_dagrun")[0]["id"])
    assert status["execution_mode"] == "local"
    assert status["worker_id"].startswith("local:")  # this `start` process ran it
    assert [a["mode"] for a in status["attempts"]] == ["local"]
    assert status["dispatch_decisions"][0]["why"] == "forced_local"
    assert not cluster.query("SELECT id FROM dags_attempt WHERE worker_id = 'w-idle'")


def test_start_wait_exit_codes(cluster: Cluster, tmp_path: Path) -> None:
    ok = write_dag(tmp_path, "ok", "steps:\n  - name: a\n    command: 'true'\n")
    bad = write_dag(tmp_path, "bad", "steps:\n  - name: a\n    command: exit 4\n")
    invalid = write_dag(tmp_path, "invalid", "steps:\n  - name: a\n    comand: 'true'\n")
    assert cluster.manage("start", str(ok), "--wait").returncode == 0
    assert cluster.manage("start", str(bad), "--wait").returncode == 1
    result = cluster.manage("start", str(invalid), "--wait")
    assert result.returncode == 2
    assert "comand" in result.stderr
    assert cluster.manage("start", str(tmp_path / "missing.yaml")).returncode == 2
