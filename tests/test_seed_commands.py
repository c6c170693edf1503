"""The seeds' command lines, typed as written with `.venv/bin/dagu` in place of `dagu`.

Seeds 000 and 001 start workers with `--worker-labels`/`--worker.labels` (space or `=`) and
`DAGU_WORKER_LABELS`, seed 003 with `boltbase worker` and `BOLTBASE_WORKER_LABELS`; the
coordinator with `--coordinator.host=0.0.0.0`, `start-all --host=0.0.0.0`, and TLS with the
`--peer.*` flags; seed 001's config block sets `peer.insecure: true` beside certificate paths.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest
import trustme

from controlplane import address
from controlplane.address import advertised_host, is_loopback, non_loopback_address
from controlplane.console import command_argv
from controlplane.core.config import check_peer_files, resolve
from controlplane.core.rpc.client import uses_tls
from controlplane.service import coordinator_on_web_host
from tests.procs import DAGU, Cluster, free_port, wait_for, write_dag

BOLTBASE = [str(Path(sys.executable).parent / "boltbase")]

GPU_DAG = """\
name: gpu-job
workerSelector:
  gpu: "true"
steps:
  - name: train
    command: echo "training on $WORKER_ID"
"""

# Seed 001, "Coordinator Configuration", unchanged.
SEED_001_COORDINATOR_CONFIG = """\
# config.yaml
coordinator:
  host: 0.0.0.0
  port: 50055

# Service registry configuration
paths:
  serviceRegistryDir: "~/.local/share/dagu/service-registry"  # Directory for service registry files

# TLS configuration for peer connections (both coordinator and worker)
peer:
  insecure: true   # Use h2c (HTTP/2 cleartext) instead of TLS (default: true)
  certFile: /path/to/cert.pem
  keyFile: /path/to/key.pem
  clientCaFile: /path/to/ca.pem  # For mutual TLS
  skipTlsVerify: false  # Skip TLS certificate verification
"""


# --- the console command ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dagu", "start-all", "--host=0.0.0.0"], ["dagu", "start_all", "--host=0.0.0.0"]),
        (
            ["dagu", "worker", "--worker-labels", "a-b=c"],
            ["dagu", "worker", "--worker-labels", "a-b=c"],
        ),
        (["dagu", "create-api-token", "ops"], ["dagu", "create_api_token", "ops"]),
        (["dagu", "start", "my-dag"], ["dagu", "start", "my-dag"]),
        (["dagu", "--version"], ["dagu", "--version"]),
        (["dagu"], ["dagu"]),
    ],
)
def test_dagu_maps_hyphenated_command_names_only(argv, expected):
    assert command_argv(argv) == expected


def test_the_console_scripts_are_installed():
    for program in (DAGU, BOLTBASE):
        assert Path(program[0]).is_file(), f"{program[0]} missing: run `make install`"


# --- coordinator address and id ------------------------------------------------------------


def test_start_all_binds_the_coordinator_on_the_web_host_unless_told_otherwise():
    default = resolve(env={})
    assert coordinator_on_web_host(default, "0.0.0.0").coordinator.host == "0.0.0.0"
    explicit = resolve(flags={"coordinator.host": "127.0.0.1"}, env={})
    assert coordinator_on_web_host(explicit, "0.0.0.0").coordinator.host == "127.0.0.1"
    from_env = resolve(env={"DAGU_COORDINATOR_HOST": "127.0.0.2"})
    assert coordinator_on_web_host(from_env, "0.0.0.0").coordinator.host == "127.0.0.2"


def test_advertised_host_is_the_configured_one_or_the_bound_one():
    assert advertised_host(resolve(env={"DAGU_COORDINATOR_ADVERTISE": "coord.internal"})) == (
        "coord.internal"
    )
    # Not the hostname: it may resolve to 127.0.1.1, where nothing listens.
    assert advertised_host(resolve(env={"DAGU_COORDINATOR_HOST": "127.0.0.1"})) == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]"])
def test_bound_to_all_interfaces_the_coordinator_advertises_a_non_loopback_address(
    host, monkeypatch
):
    # Hostnames that resolve to loopback (containers, Debian's 127.0.1.1) must not win.
    monkeypatch.setattr(address.socket, "gethostbyname", lambda name: "127.0.1.1")
    found = non_loopback_address()
    if found is None:
        pytest.skip("this machine has no non-loopback IPv4 address (no default route)")
    advertised = advertised_host(resolve(env={"DAGU_COORDINATOR_HOST": host}))
    assert advertised == found
    assert not is_loopback(advertised)


def test_without_a_non_loopback_address_the_hostname_is_advertised_with_a_warning(
    monkeypatch, caplog
):
    monkeypatch.setattr(address, "non_loopback_address", lambda: None)
    with caplog.at_level(logging.WARNING, logger="controlplane.address"):
        assert advertised_host(resolve(env={"DAGU_COORDINATOR_HOST": "0.0.0.0"})) == (
            socket.gethostname()
        )
    assert "no non-loopback address" in caplog.text


# --- peer.insecure -------------------------------------------------------------------------


def test_seed_001_peer_block_means_plaintext_and_says_the_files_are_ignored(tmp_path, caplog):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(SEED_001_COORDINATOR_CONFIG)
    config = resolve(env={}, config_file=config_file)
    assert config.peer.insecure is True
    assert (config.peer.cert_file, config.peer.key_file, config.peer.client_ca_file) == (
        "",
        "",
        "",
    )
    assert not uses_tls(config.peer)
    with caplog.at_level(logging.WARNING, logger="controlplane.core.config"):
        check_peer_files(config)  # /path/to/cert.pem does not exist: no error, it is ignored
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "ignoring peer.cert_file, peer.key_file, peer.client_ca_file" in lines[0]
    assert f"config file {config_file}" in lines[0]


def test_insecure_left_at_its_default_still_lets_certificates_turn_tls_on():
    config = resolve(env={"DAGU_PEER_CERT_FILE": "/c.pem", "DAGU_PEER_KEY_FILE": "/k.pem"})
    assert config.peer.cert_file == "/c.pem" and config.peer.ignored == ()
    assert uses_tls(config.peer)


def test_explicit_insecure_true_from_a_flag_wins_over_certificates_from_env():
    config = resolve(
        flags={"peer.insecure": "true"},
        env={"DAGU_PEER_CERT_FILE": "/c.pem", "DAGU_PEER_KEY_FILE": "/k.pem"},
    )
    assert config.peer.ignored == ("peer.cert_file", "peer.key_file")
    assert not uses_tls(config.peer)


# --- real processes ------------------------------------------------------------------------


@pytest.fixture
def dagu_cluster(cluster: Cluster) -> Cluster:
    cluster.program = DAGU
    return cluster


def coordinator_records(cluster: Cluster) -> list[dict]:
    files = sorted((cluster.registry / "coordinator").glob("*.json"))
    return [json.loads(path.read_text()) | {"file": path.name} for path in files]


@pytest.mark.processes
def test_start_all_on_all_interfaces_serves_a_worker_dialing_a_non_loopback_address(
    dagu_cluster: Cluster, tmp_path: Path
):
    local = non_loopback_address()
    if local is None:
        pytest.skip("this machine has no non-loopback IPv4 address to dial")
    c = dagu_cluster
    grpc = free_port()
    # Seed 001: `dagu start-all --host=0.0.0.0 --port=8080` (ports picked at run time), with
    # the advertise setting the test cluster normally pins removed.
    proc = c.spawn(
        "main",
        "start-all",
        "--host=0.0.0.0",
        f"--port={free_port()}",
        f"--coordinator.port={grpc}",
        "--coordinator.id=coordinator-primary",
        env={"DAGU_COORDINATOR_ADVERTISE": ""},
    )
    wait_for(
        lambda: "web UI and API" in c.log("main") or proc.poll() is not None,
        timeout=60,
        what="start-all to serve",
    )
    assert proc.poll() is None, c.log("main")
    [record] = wait_for(lambda: coordinator_records(c), timeout=30, what="the registry entry")
    assert (record["id"], record["host"], record["port"]) == ("coordinator-primary", local, grpc)
    assert record["file"].startswith("coordinator-primary-")

    # Seed 001's Kubernetes worker: `--worker.coordinator-host` / `--worker.coordinator-port`.
    c.spawn(
        "remote",
        "worker",
        "--worker.id=remote-gpu",
        "--worker.labels=gpu=true,node-type=gpu-node",
        f"--worker.coordinator-host={local}",
        f"--worker.coordinator-port={grpc}",
    )
    wait_for(lambda: c.worker_row("remote-gpu"), timeout=30, what="the worker to register")
    run_id = c.start_run(write_dag(tmp_path, "gpu-job", GPU_DAG))  # `dagu start FILE`
    c.wait_run(run_id, timeout=60)
    status = c.status(run_id)  # `dagu status RUN_ID --json`
    assert (status["status"], status["worker_id"]) == ("succeeded", "remote-gpu")
    assert c.stop("main") == 0


SEED_WORKERS = [
    # (worker id, program, args, extra env, labels the worker must report)
    ("seed000-flag", DAGU, ["--worker-labels", "gpu=true,memory=64G,region=us-east-1"], {},
     {"gpu": "true", "memory": "64G", "region": "us-east-1"}),
    ("seed001-flag", DAGU, ["--worker.labels", "gpu=true,cuda=11.8,memory=64G"], {},
     {"gpu": "true", "cuda": "11.8", "memory": "64G"}),
    ("seed001-compose", DAGU, ["--worker.labels=cpu-only=true,region=us-east-1"], {},
     {"cpu-only": "true", "region": "us-east-1"}),
    ("seed000-env", DAGU, [], {"DAGU_WORKER_LABELS": "gpu=true,memory=64G"},
     {"gpu": "true", "memory": "64G"}),
    ("seed003-flag", BOLTBASE, ["--worker.labels", "gpu=true,memory=64G,region=us-east-1"], {},
     {"gpu": "true", "memory": "64G", "region": "us-east-1"}),
    ("seed003-env", BOLTBASE, [],
     {"BOLTBASE_WORKER_LABELS": "gpu=true,memory=64G,region=us-east-1"},
     {"gpu": "true", "memory": "64G", "region": "us-east-1"}),
]  # fmt: skip


@pytest.mark.processes
def test_seed_worker_command_lines_register_with_their_labels(dagu_cluster: Cluster):
    c = dagu_cluster
    # `dagu coordinator --coordinator.host=0.0.0.0 --coordinator.port=50055`, on a free port.
    proc = c.spawn(
        "coordinator",
        "coordinator",
        "--coordinator.host=0.0.0.0",
        f"--coordinator.port={free_port()}",
    )
    wait_for(
        lambda: "listening" in c.log("coordinator") or proc.poll() is not None,
        timeout=60,
        what="the coordinator to listen",
    )
    assert proc.poll() is None, c.log("coordinator")
    for worker_id, program, args, env, _ in SEED_WORKERS:
        c.program = program
        # No coordinator address: like the seeds, workers find it in the service registry.
        c.spawn(worker_id, "worker", *args, env={"DAGU_WORKER_ID": worker_id, **env})
    c.program = DAGU

    def listed() -> dict[str, dict[str, str]]:
        result = c.manage("workers", "--json")  # `dagu workers --json`
        rows = json.loads(result.stdout)["workers"] if result.returncode == 0 else []
        return {row["id"]: row["labels"] for row in rows}

    seen = wait_for(
        lambda: rows if len(rows := listed()) == len(SEED_WORKERS) else None,
        timeout=60,
        what="every seed worker to register",
    )
    assert seen == {worker_id: labels for worker_id, _, _, _, labels in SEED_WORKERS}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    # With mutual TLS the certificate names the worker (issue 10: CN or a DNS SAN = worker id).
    client = ca.issue_cert("worker.example", "gpu-1")
    folder = tmp_path_factory.mktemp("pki")
    files = {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server-key.pem": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client-key.pem": client.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(folder / name))
    return {name: str(folder / name) for name in files}


def run_on_a_worker(c: Cluster, tmp_path: Path, *worker_args: str) -> dict:
    c.spawn("gpu", "worker", "--worker.id=gpu-1", "--worker.labels=gpu=true", *worker_args)
    wait_for(lambda: c.worker_row("gpu-1"), timeout=30, what="the worker to register")
    run_id = c.start_run(write_dag(tmp_path, "gpu-job", GPU_DAG))
    c.wait_run(run_id, timeout=60)
    return c.status(run_id)


@pytest.mark.processes
def test_seed_mutual_tls_command_lines(dagu_cluster: Cluster, pki, tmp_path: Path):
    c = dagu_cluster
    c.spawn(
        "coordinator",
        "coordinator",
        "--peer.insecure=false",
        f"--peer.cert-file={pki['server.pem']}",
        f"--peer.key-file={pki['server-key.pem']}",
        f"--peer.client-ca-file={pki['ca.pem']}",
    )
    wait_for(lambda: "listening" in c.log("coordinator"), timeout=60, what="the coordinator")
    status = run_on_a_worker(
        c,
        tmp_path,
        "--peer.insecure=false",
        f"--peer.cert-file={pki['client.pem']}",
        f"--peer.key-file={pki['client-key.pem']}",
        f"--peer.client-ca-file={pki['ca.pem']}",
    )
    assert (status["status"], status["worker_id"]) == ("succeeded", "gpu-1")


@pytest.mark.processes
def test_seed_001_config_file_runs_plaintext_and_logs_the_ignored_certificates(
    dagu_cluster: Cluster, tmp_path: Path
):
    c = dagu_cluster
    config_file = tmp_path / "config.yaml"
    config_file.write_text(SEED_001_COORDINATOR_CONFIG)
    # The seed's own env variables move the port and the registry off the real home dir.
    env = {"DAGU_PATHS_SERVICE_REGISTRY_DIR": str(c.registry)}
    c.spawn("coordinator", "coordinator", f"--config={config_file}", env=env)
    wait_for(
        lambda: "listening" in c.log("coordinator") or "error" in c.log("coordinator"),
        timeout=60,
        what="the coordinator",
    )
    assert "listening" in c.log("coordinator"), c.log("coordinator")
    ignored = [line for line in c.log("coordinator").splitlines() if "ignoring peer." in line]
    assert len(ignored) == 1, c.log("coordinator")
    status = run_on_a_worker(c, tmp_path)
    assert (status["status"], status["worker_id"]) == ("succeeded", "gpu-1")
