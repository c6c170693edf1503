"""Several coordinators on one PostgreSQL, with real processes: a worker that lists both
moves to the other when its own is killed, and every run still finishes exactly once.

PostgreSQL lane only (E2E_DATABASE_URL): on SQLite a second coordinator is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.procs import PG_LANE, Cluster, wait_for, write_dag

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(not PG_LANE, reason="several coordinators need PostgreSQL"),
]

RUNS = 8


def marks(tmp_path: Path) -> list[str]:
    path = tmp_path / "marks"
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("listed", [True, False], ids=["worker.coordinators", "registry"])
def test_a_worker_moves_to_the_other_coordinator_when_its_own_is_killed(
    fast_cluster: Cluster, tmp_path: Path, listed: bool
):
    c = fast_cluster
    c.start_coordinator("coord-a")
    names = {f"127.0.0.1:{c.port}": "coord-a"}
    names[f"127.0.0.1:{c.start_peer_coordinator('coord-b')}"] = "coord-b"
    if listed:
        c.start_worker("w1", "pool=multi", max_runs=4, coordinators=",".join(names))
    else:
        # No address given: the worker finds both coordinators in the service registry.
        args = ("--worker.id", "w1", "--worker.labels", "pool=multi", "--shutdown-grace", "5")
        c.spawn("w1", "worker", *args, "--worker.max-active-runs", "4")
    first = wait_for(
        lambda: next((a for a in names if f"connected to coordinator {a}" in c.log("w1")), None),
        timeout=30,
        what="the worker to connect to a coordinator",
    )
    if listed:
        assert names[first] == "coord-a"  # the first one listed
    (second,) = set(names) - {first}
    out = tmp_path / "marks"
    dag = write_dag(
        tmp_path,
        "several",
        f"""
worker_selector: {{pool: multi}}
steps:
  - name: work
    command: echo start-$DAG_RUN_ID >> {out}; sleep 3; echo end-$DAG_RUN_ID >> {out}
""",
    )
    run_ids = [c.start_run(dag) for _ in range(RUNS)]
    wait_for(
        lambda: any(m.startswith("start-") for m in marks(tmp_path)),
        timeout=60,
        what="a run to start on the worker",
    )
    c.kill(names[first])
    moved = f"coordinator {first} stopped answering"
    wait_for(
        lambda: moved in c.log("w1") and f"now using {second}" in c.log("w1"),
        timeout=10,
        what="the worker to move to the other coordinator within 10 s",
    )
    # Runs queued after the kill reach the worker through the coordinator it moved to.
    run_ids += [c.start_run(dag) for _ in range(2)]
    for run_id in run_ids:
        c.wait_run(run_id, timeout=180)
    done = marks(tmp_path)
    for run_id in run_ids:
        row = c.run_row(run_id)
        assert row["status"] == "succeeded", (run_id, row["error"], c.log("w1")[-4000:])
        attempts = c.query("SELECT status FROM dags_attempt WHERE run_id = ?", run_id)
        assert [a["status"] for a in attempts].count("succeeded") == 1, (run_id, attempts)
        # The step ran to its end once: no run was doubled across the two coordinators.
        assert done.count(f"end-{run_id}") == 1, (run_id, done)
    assert len(re.findall("stopped answering", c.log("w1"))) == 1
