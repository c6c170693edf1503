"""TLS between workers and the coordinator (SPEC section 11), with real processes and
certificates made by trustme: server TLS, mutual TLS, skip_tls_verify, and handshake
failures reported in words an operator can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.procs import Cluster, wait_for, write_dag

pytestmark = pytest.mark.processes

DAG = "worker_selector: {secure: 'yes'}\nsteps:\n  - name: a\n    command: echo secured\n"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    # mTLS identity: a DNS SAN equal to the worker id ("with-cert" below).
    client = ca.issue_cert("worker.example", "with-cert")
    files = {
        "ca": ca.cert_pem,
        "other_ca": other.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
    }
    out = {}
    for name, blob in files.items():
        path = tmp_path / f"{name}.pem"
        blob.write_to_path(str(path))
        out[name] = str(path)
    return out


def tls_coordinator(c: Cluster, pki: dict[str, str], *, mutual: bool) -> None:
    c.env.update(DAGU_PEER_CERT_FILE=pki["server_cert"], DAGU_PEER_KEY_FILE=pki["server_key"])
    if mutual:
        c.env["DAGU_PEER_CLIENT_CA_FILE"] = pki["ca"]
    c.start_coordinator()
    for key in ("DAGU_PEER_CERT_FILE", "DAGU_PEER_KEY_FILE", "DAGU_PEER_CLIENT_CA_FILE"):
        c.env.pop(key, None)


def worker_args(**peer: str) -> tuple[str, ...]:
    return tuple(arg for k, v in peer.items() for arg in (f"--peer.{k.replace('_', '-')}", v))


def test_a_worker_verifies_the_coordinator_with_the_ca(cluster: Cluster, pki, tmp_path: Path):
    tls_coordinator(cluster, pki, mutual=False)
    cluster.start_worker("tls-w", "secure=yes", extra=worker_args(client_ca_file=pki["ca"]))
    run_id = cluster.start_run(write_dag(tmp_path, "tls", DAG))
    # `start` woke a TLS coordinator without TLS settings: the run still starts on the tick.
    assert cluster.wait_run(run_id, timeout=30)["status"] == "succeeded"


def test_mutual_tls_requires_a_client_certificate(cluster: Cluster, pki, tmp_path: Path):
    tls_coordinator(cluster, pki, mutual=True)
    cluster.spawn(
        "no-cert",
        "worker",
        "--worker.id",
        "no-cert",
        "--worker.coordinators",
        f"127.0.0.1:{cluster.port}",
        *worker_args(client_ca_file=pki["ca"]),
    )
    wait_for(
        lambda: "requires a client certificate" in cluster.log("no-cert"),
        timeout=30,
        what="the missing client certificate to be explained",
    )
    assert cluster.worker_row("no-cert") is None
    cluster.start_worker(
        "with-cert",
        "secure=yes",
        extra=worker_args(
            client_ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"]
        ),
    )
    run_id = cluster.start_run(write_dag(tmp_path, "mtls", DAG))
    assert cluster.wait_run(run_id, timeout=30)["worker_id"] == "with-cert"
    # The same certificate under another worker id is refused at connect.
    impostor = cluster.spawn(
        "impostor", "worker", "--worker.id", "impostor", "--worker.coordinators",
        f"127.0.0.1:{cluster.port}",
        *worker_args(
            client_ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"]
        ),
    )  # fmt: skip
    wait_for(lambda: impostor.poll() is not None, timeout=30, what="the impostor to exit")
    assert impostor.returncode == 2
    assert cluster.log("impostor").strip().splitlines()[-1] == (
        'error: coordinator refused worker id "impostor": its client certificate names '
        "worker.example, with-cert"
    )
    assert cluster.worker_row("impostor") is None


def test_a_wrong_ca_is_reported_as_such(cluster: Cluster, pki):
    tls_coordinator(cluster, pki, mutual=False)
    cluster.spawn(
        "wrong-ca",
        "worker",
        "--worker.id",
        "wrong-ca",
        "--worker.coordinators",
        f"127.0.0.1:{cluster.port}",
        *worker_args(client_ca_file=pki["other_ca"]),
    )
    wait_for(
        lambda: "wrong CA" in cluster.log("wrong-ca"),
        timeout=30,
        what="the wrong CA to be explained",
    )


def test_a_name_mismatch_is_reported_as_such(cluster: Cluster, pki):
    # The certificate names localhost and 127.0.0.1; serve it on 127.0.0.2.
    cluster.env["DAGU_COORDINATOR_HOST"] = "127.0.0.2"
    tls_coordinator(cluster, pki, mutual=False)
    cluster.spawn(
        "mismatch",
        "worker",
        "--worker.id",
        "mismatch",
        "--worker.coordinators",
        f"127.0.0.2:{cluster.port}",
        *worker_args(client_ca_file=pki["ca"]),
    )
    wait_for(
        lambda: "name mismatch" in cluster.log("mismatch"),
        timeout=30,
        what="the name mismatch to be explained",
    )


def test_skip_tls_verify_accepts_a_self_signed_coordinator(cluster: Cluster, pki, tmp_path: Path):
    tls_coordinator(cluster, pki, mutual=False)
    cluster.start_worker("trusting", "secure=yes", extra=("--peer.skip-tls-verify",))
    run_id = cluster.start_run(write_dag(tmp_path, "skip", DAG))
    assert cluster.wait_run(run_id, timeout=30)["worker_id"] == "trusting"
