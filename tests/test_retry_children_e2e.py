"""End to end: retrying a parent re-runs the sub-DAG that failed, through a real worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import Cluster, write_dag

pytestmark = pytest.mark.processes


def test_retrying_a_parent_runs_its_failed_child_again(cluster: Cluster, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    dag = write_dag(
        tmp_path,
        "family",
        f"""
name: family
worker_selector: {{pool: kids}}
steps:
  - name: prepare
    command: echo ready
  - name: call-child
    call: child
---
name: child
worker_selector: {{pool: kids}}
steps:
  - name: work
    command: test -e {fixed}
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("kids-1", "pool=kids", max_runs=4)
    run_id = cluster.start_run(dag)
    assert cluster.wait_run(run_id, timeout=60)["status"] == "failed"
    [first] = cluster.status(run_id)["children"]
    assert cluster.run_row(first)["status"] == "failed"
    fixed.touch()
    result = cluster.manage("retry", run_id)
    assert result.returncode == 0, result.stderr
    assert cluster.wait_run(run_id, status="succeeded", timeout=60)["status"] == "succeeded"
    children = cluster.status(run_id)["children"]
    assert len(children) == 2 and children[0] == first
    assert cluster.run_row(children[1])["status"] == "succeeded"
    assert cluster.steps(run_id)["prepare"]["attempt"] == 1  # kept from the first run
