"""Sub-DAGs end to end: children routed by step-level selectors, each deciding for itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import Cluster, wait_for, write_dag

pytestmark = pytest.mark.processes

CHILDREN = """
---
name: train-model
worker_selector:
  cpu-only: "true"   # overridden by the step-level selector
steps:
  - name: fit
    command: echo "fit on $WORKER_ID"
    output: FITTED
---
name: make-report
steps:
  - name: write
    command: echo "report for $PARENT_DAG_RUN_ID"
---
name: shard
params: ITEM=none
steps:
  - name: process
    command: echo "shard $ITEM"
---
name: bookkeeping
worker_selector: local
steps:
  - name: note
    command: echo "noted by $WORKER_ID"
"""


def children_of(c: Cluster, run_id: str) -> list[dict]:
    return [
        dict(r)
        for r in c.query(
            "SELECT id, dag_name, status, worker_id, execution_mode, root_id, parent_step, "
            "parent_item FROM dags_dagrun WHERE parent_id = ? ORDER BY parent_step, parent_item",
            run_id,
        )
    ]


def test_a_local_parent_routes_children_by_step_selectors(cluster: Cluster, tmp_path: Path):
    dag = write_dag(
        tmp_path,
        "pipeline",
        """
steps:
  - name: train
    call: train-model
    worker_selector: {gpu: "true"}
  - name: report
    call: make-report
    worker_selector: {region: eu-west-1}
  - name: fanout
    call: shard
    parallel: {items: [a, b, c], max_concurrent: 2}
    worker_selector: {region: eu-west-1}
  - name: summary
    command: echo done
"""
        + CHILDREN,
    )
    cluster.start_coordinator()
    cluster.start_worker("gpu-w", "gpu=true")
    cluster.start_worker("eu-w", "region=eu-west-1")
    result = cluster.manage("start", str(dag), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0]
    parent = cluster.status(run_id)
    assert parent["execution_mode"] == "local"
    kids = children_of(cluster, run_id)
    placed = sorted((k["dag_name"], k["worker_id"], k["status"]) for k in kids)
    assert placed == [
        ("make-report", "eu-w", "succeeded"),
        ("shard", "eu-w", "succeeded"),
        ("shard", "eu-w", "succeeded"),
        ("shard", "eu-w", "succeeded"),
        ("train-model", "gpu-w", "succeeded"),
    ]
    assert {k["root_id"] for k in kids} == {run_id}
    assert sorted(k["parent_item"] for k in kids if k["dag_name"] == "shard") == [0, 1, 2]
    assert sorted(parent["children"]) == sorted(k["id"] for k in kids)
    train = next(k for k in kids if k["dag_name"] == "train-model")
    decision = cluster.status(train["id"])["dispatch_decisions"][0]
    assert (decision["why"], decision["selector"]) == ("selector", {"gpu": "true"})


def test_a_parent_on_a_worker_starts_children_through_the_coordinator(
    cluster: Cluster, tmp_path: Path
):
    dag = write_dag(
        tmp_path,
        "remote-parent",
        """
worker_selector:
  region: eu-west-1
steps:
  - name: train
    call: train-model
    worker_selector: {gpu: "true"}
    output: TRAINED
  - name: book
    call: bookkeeping
"""
        + CHILDREN,
    )
    cluster.start_coordinator()
    cluster.start_worker("gpu-w", "gpu=true")
    cluster.start_worker("eu-w", "region=eu-west-1")
    result = cluster.manage("start", str(dag), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.splitlines()[0]
    assert cluster.status(run_id)["worker_id"] == "eu-w"
    kids = {k["dag_name"]: k for k in children_of(cluster, run_id)}
    assert (kids["train-model"]["worker_id"], kids["train-model"]["status"]) == (
        "gpu-w",
        "succeeded",
    )
    # `worker_selector: local` on the child runs it on the main instance, not on a worker.
    assert kids["bookkeeping"]["execution_mode"] == "local"
    assert kids["bookkeeping"]["status"] == "succeeded"
    # The child's outputs reach the parent as the call step's output.
    assert "fit on gpu-w" in cluster.status(run_id)["steps"][0]["output"]


def test_cancelling_a_parent_cancels_its_running_child(cluster: Cluster, tmp_path: Path):
    dag = write_dag(
        tmp_path,
        "cancel-tree",
        """
steps:
  - name: wait-for-child
    call: slow
    worker_selector: {gpu: "true"}
---
name: slow
steps:
  - name: nap
    command: sleep 60
""",
    )
    cluster.start_coordinator()
    cluster.start_worker("gpu-w", "gpu=true")
    # A local parent executes inside its `start` process, so start it in the background.
    cluster.spawn("starter", "start", str(dag))
    parent_id = wait_for(
        lambda: (
            (rows := cluster.query("SELECT id FROM dags_dagrun WHERE parent_id IS NULL"))
            and rows[0]["id"]
        ),
        timeout=30,
        what="the parent run",
    )
    wait_for(
        lambda: any(k["status"] == "running" for k in children_of(cluster, parent_id)),
        timeout=30,
        what="the child to run",
    )
    assert cluster.manage("cancel", parent_id).returncode == 0
    assert cluster.wait_run(parent_id, timeout=30)["status"] == "cancelled"
    child = children_of(cluster, parent_id)[0]
    assert cluster.wait_run(child["id"], timeout=30)["status"] == "cancelled"
