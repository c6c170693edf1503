"""Worker credentials through real processes: the bootstrap token on one host, a refused
token exits 2 with one line, label attestation at connect (issue 10)."""

from __future__ import annotations

import pytest

from tests.procs import Cluster, wait_for

pytestmark = pytest.mark.processes


def worker_args(cluster: Cluster, worker_id: str, *extra: str) -> list[str]:
    return ["worker", "--worker.id", worker_id, "--worker.coordinators",
            f"127.0.0.1:{cluster.port}", *extra]  # fmt: skip


def test_a_same_host_worker_needs_no_token_and_a_bad_one_exits_2(cluster: Cluster):
    cluster.start_coordinator()
    cluster.start_worker("local-1")  # no token configured: <data_dir>/worker_token
    proc = cluster.spawn(
        "bad", *worker_args(cluster, "bad-1"), env={"DAGU_WORKER_TOKEN": "dwt_not-a-token"}
    )
    assert wait_for(lambda: proc.poll() is not None, timeout=30, what="exit") is not None
    assert proc.returncode == 2
    assert cluster.log("bad").strip().splitlines()[-1] == (
        "error: coordinator refused this worker: invalid token (from DAGU_WORKER_TOKEN)"
    )


def test_a_worker_claiming_labels_its_credential_does_not_allow_is_refused(cluster: Cluster):
    cluster.start_coordinator()
    out = cluster.manage("create_worker_token", "eu-pool", "--labels", "region=eu-west-1")
    token = out.stdout.strip().splitlines()[-1]
    proc = cluster.spawn(
        "gpu", *worker_args(cluster, "gpu-1", "--worker.labels", "gpu=true"),
        env={"DAGU_WORKER_TOKEN": token},
    )  # fmt: skip
    wait_for(lambda: proc.poll() is not None, timeout=30, what="exit")
    assert proc.returncode == 2
    assert cluster.log("gpu").strip().splitlines()[-1] == (
        'error: coordinator refused label gpu=true: credential "eu-pool" allows region=eu-west-1'
    )
