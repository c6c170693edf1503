"""End to end: a retried step on a real worker keeps the output of every try."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import Cluster, write_dag

pytestmark = pytest.mark.processes


def test_a_retried_step_on_a_worker_keeps_every_try(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    dag = write_dag(
        tmp_path,
        "flaky",
        f"""
worker_selector: {{pool: logs}}
steps:
  - name: flaky
    command: >-
      if [ -e {marker} ]; then echo "second try ok"; else
      touch {marker}; echo "first try failed"; exit 3; fi
    retry_policy: {{limit: 1, interval_sec: 0}}
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("logs-1", "pool=logs")
    run_id = cluster.start_run(dag)
    assert cluster.wait_run(run_id, timeout=60)["status"] == "succeeded"
    step = cluster.steps(run_id)["flaky"]
    assert step["retries"] == 1
    logs = cluster.home / "logs"
    assert (logs / step["log_path"]).read_text() == "second try ok\n"
    assert (logs / run_id / "1" / "flaky.log").read_text() == "first try failed\n"
