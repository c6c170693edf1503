"""deploy/ checked without a Docker daemon or a cluster: the Kubernetes manifests against the
Kubernetes schemas, the compose file against the Compose spec, the Dockerfile through hadolint,
the systemd units through systemd-analyze, and the compose topology's own commands run as
local processes."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from django.core.management import get_commands

from controlplane.console import command_argv
from tests.procs import DAGU, PG_LANE, Cluster, free_port, listening_port, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_HA = DEPLOY / "docker-compose-ha.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
BIN = Path(sys.executable).parent


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text())


def manifests() -> list[Path]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert isinstance(kustomization, dict)
    return [K8S / name for name in kustomization["resources"]]


# --- Kubernetes ------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    on_disk = {p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(manifests()) == on_disk


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_kubernetes_manifest_validates_against_the_kubernetes_schemas():
    result = kubernetes_validate(*manifests())
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path: Path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((K8S / "worker-gpu.yaml").read_text().replace("replicas: 3", "replica: 3"))
    assert kubernetes_validate(broken).returncode != 0


def containers(document: dict) -> list[dict]:
    spec = document["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def test_kubernetes_containers_run_real_dagu_commands():
    known = set(get_commands())
    for path in manifests():
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] != "Deployment":
                continue
            for container in containers(document):
                program, command = container["command"][:2]
                assert program == "dagu", path
                assert command_argv(["dagu", command])[1] in known, (path, command)


def test_node_labelled_workers_take_their_labels_from_the_downward_api():
    [document] = yaml.safe_load_all((K8S / "worker-node-labels.yaml").read_text())
    env = {e["name"]: e for e in containers(document)[0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "kubernetes.node=$(NODE_NAME)" in env["DAGU_WORKER_LABELS"]["value"]
    # Kubernetes only expands $(VAR) for variables defined earlier in the list.
    names = list(env)
    assert names.index("NODE_NAME") < names.index("DAGU_WORKER_LABELS")


def test_the_kubernetes_sample_dag_is_valid():
    result = subprocess.run(
        [*DAGU, "validate", str(K8S / "dags" / "gpu-pipeline.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Compose ---------------------------------------------------------------------------------


def compose_validator() -> jsonschema.Draft201909Validator:
    schema = json.loads((DEPLOY / "compose-spec" / "compose_spec.json").read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


@pytest.mark.parametrize("compose", [COMPOSE, COMPOSE_HA], ids=["single", "ha"])
def test_compose_file_validates_against_the_compose_spec(compose: Path):
    errors = [e.message for e in compose_validator().iter_errors(load_yaml(compose))]
    assert errors == []


def test_ha_compose_runs_two_coordinators_a_web_tier_and_workers_that_know_both():
    services = load_yaml(COMPOSE_HA)["services"]  # type: ignore[index]
    commands = {name: shlex.split(spec.get("command", "")) for name, spec in services.items()}
    coordinators = [name for name, argv in commands.items() if argv[:1] == ["coordinator"]]
    assert len(coordinators) == 2
    assert commands["web"][0] == "web" and services["web"]["deploy"]["replicas"] >= 2
    dialled = next(a for a in commands["worker"] if a.startswith("--worker.coordinators="))
    assert dialled.split("=", 1)[1].split(",") == [f"{name}:{GRPC_PORT}" for name in coordinators]
    # Several coordinators need PostgreSQL: every Dagu service is pointed at it.
    for name in ("dagu-migrate", *coordinators, "web"):
        assert any(e.startswith("DATABASE_URL=postgres://") for e in services[name]["environment"])


def test_compose_spec_check_rejects_a_broken_file():
    document = load_yaml(COMPOSE)
    assert isinstance(document, dict)
    document["services"]["worker-gpu"]["deploy"]["replicas"] = "two"
    document["services"]["worker-cpu"]["comand"] = "worker"
    assert len(list(compose_validator().iter_errors(document))) == 2


# --- Dockerfile and systemd ------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def test_dockerfile_passes_hadolint():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_root_image(tmp_path: Path):
    root = tmp_path / "Dockerfile"
    root.write_text(DOCKERFILE.read_text().replace("USER 10001:10001\n", "USER root\n"))
    assert hadolint(root).returncode != 0


@pytest.mark.parametrize("unit", ["dagu.service", "dagu-worker.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The units name /opt/dagu/.venv/bin/dagu; point them at this checkout's to verify them.
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/dagu/.venv/bin/dagu", DAGU[0])
    (tmp_path / unit).write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/opt/dagu/.venv/bin/dagu" in (DEPLOY / "systemd" / unit).read_text()


# --- the compose topology as local processes --------------------------------------------------

# Ports the image listens on, and how a command moves each one for the test.
WEB_PORT, GRPC_PORT = 8080, 50055


def dockerfile_env(path: Path) -> dict[str, str]:
    """The image's ENV KEY=VALUE pairs (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}` and `${NAME:-default}`."""
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}",
        lambda m: variables.get(m.group(1)) or (m.group(2) or ""),
        value,
    )


class Topology:
    """deploy/docker-compose.yml's services as local processes in one Cluster."""

    def __init__(self, cluster: Cluster, root: Path, compose: Path = COMPOSE) -> None:
        self.cluster = cluster
        self.root = root
        self.compose = load_yaml(compose)
        self.image_env = dockerfile_env(DOCKERFILE)
        self.variables = {"DATABASE_URL": cluster.pg_url}
        self.web_port, self.grpc_port = free_port(), free_port()
        # The container's environment is the image's plus the service's, nothing inherited.
        cluster.env = {
            k: v
            for k, v in cluster.env.items()
            if not k.startswith(("DAGU_", "BOLTBASE_")) and k != "DATABASE_URL"
        }
        cluster.program = DAGU

    def services(self) -> dict[str, dict]:
        return {
            name: spec
            for name, spec in self.compose["services"].items()
            if spec["image"].startswith("dagu:")  # not PostgreSQL: the lane's server stands in
        }

    def host_path(self, service: str, replica: int, container_path: str) -> str:
        """Where a container path lives here: its volume or bind mount, else a private dir."""
        mounts = {}
        for volume in self.services()[service].get("volumes", []):
            source, target = volume.split(":")[:2]
            base = self.root / "binds" if source.startswith(".") else self.root / "volumes"
            mounts[target] = base / source.lstrip("./")
        for target in sorted(mounts, key=len, reverse=True):
            if container_path == target or container_path.startswith(target + "/"):
                return str(mounts[target]) + container_path[len(target) :]
        return str(self.root / "containers" / f"{service}-{replica}" / container_path.lstrip("/"))

    def env(self, service: str, replica: int = 1) -> dict[str, str]:
        spec = self.services()[service]
        listed = spec.get("environment", {})
        if isinstance(listed, list):
            listed = dict(item.split("=", 1) for item in listed)
        env = {
            **self.image_env,
            **{k: interpolate(str(v), self.variables) for k, v in listed.items()},
        }
        for key, value in env.items():
            if value.startswith("/"):
                env[key] = self.host_path(service, replica, value)
                Path(env[key]).mkdir(parents=True, exist_ok=True)
        if "DATABASE_URL" in env:  # the lane's database stands in for the file's server
            env["DATABASE_URL"] = self.variables["DATABASE_URL"]
        published = {int(str(p).rsplit(":", 1)[1]) for p in spec.get("ports", [])}
        assert published <= {WEB_PORT, GRPC_PORT}, published
        if GRPC_PORT in published:
            env["DAGU_COORDINATOR_PORT"] = str(self.grpc_port)
        return env

    def args(self, service: str) -> list[str]:
        spec = self.services()[service]
        args = shlex.split(spec["command"])
        if spec.get("ports"):
            args.append(f"--port={self.web_port}")
        return args

    def start(
        self,
        service: str,
        replica: int = 1,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> str:
        name = f"{service}-{replica}"
        argv = self.args(service) if args is None else args
        self.cluster.spawn(name, *argv, env={**self.env(service, replica), **(env or {})})
        return name

    def run_once(self, service: str) -> None:
        result = subprocess.run(
            [*DAGU, *self.args(service)],
            env={**self.cluster.env, **self.env(service)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def main_command(
        self, *args: str, service: str = "dagu-main"
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose exec dagu-main dagu ARGS...`."""
        return subprocess.run(
            [*DAGU, *args],
            env={**self.cluster.env, **self.env(service)},
            capture_output=True,
            text=True,
            timeout=120,
        )


ROUTED_DAG = """\
name: {name}
workerSelector:
  {key}: "true"
steps:
  - name: work
    command: echo "ran on $WORKER_ID"
"""


@pytest.mark.processes
def test_compose_topology_routes_a_gpu_run_to_a_worker_gpu_process(
    cluster: Cluster, tmp_path: Path
):
    topology = Topology(cluster, tmp_path / "compose")
    services = topology.services()
    assert set(services) == {"dagu-migrate", "dagu-main", "worker-gpu", "worker-cpu"}
    dags = Path(topology.env("dagu-main")["DAGU_DAGS_DIR"])
    for name, key in (("gpu-job", "gpu"), ("cpu-job", "cpu-only")):
        (dags / f"{name}.yaml").write_text(ROUTED_DAG.format(name=name, key=key))

    topology.run_once("dagu-migrate")  # dagu-main depends on it completing
    main = topology.start("dagu-main")
    wait_for(
        lambda: "web UI and API" in cluster.log(main) or cluster.procs[main].poll() is not None,
        timeout=60,
        what="dagu-main to serve",
    )
    assert cluster.procs[main].poll() is None, cluster.log(main)
    # Two replicas of each pool are enough to show routing on a small machine.
    pools: dict[str, set[int]] = {"worker-gpu": set(), "worker-cpu": set()}
    for service, pids in pools.items():
        for replica in range(1, min(2, services[service]["deploy"]["replicas"]) + 1):
            pids.add(cluster.procs[topology.start(service, replica)].pid)

    def workers() -> dict[str, dict]:
        result = topology.main_command("workers", "--json")
        rows = json.loads(result.stdout)["workers"] if result.returncode == 0 else []
        return {row["id"]: row for row in rows}

    registered = wait_for(
        lambda: found if len(found := workers()) == 4 else None,
        timeout=90,
        what="four workers to register through the shared registry",
    )
    by_pid = {int(worker_id.rsplit("@", 1)[1]): worker_id for worker_id in registered}
    assert set(by_pid) == pools["worker-gpu"] | pools["worker-cpu"]
    assert registered[by_pid[min(pools["worker-gpu"])]]["labels"] == {
        "gpu": "true",
        "cuda": "11.8",
    }

    landed: dict[str, str] = {}
    for dag in ("gpu-job", "cpu-job"):
        started = topology.main_command("start", dag, "--wait", "--json")
        assert started.returncode == 0, started.stdout + started.stderr
        run = json.loads(started.stdout)
        assert run["status"] == "succeeded", run
        landed[dag] = run["worker_id"]
    assert landed["gpu-job"] in {by_pid[pid] for pid in pools["worker-gpu"]}
    assert landed["cpu-job"] in {by_pid[pid] for pid in pools["worker-cpu"]}
    assert cluster.stop(main) == 0


@pytest.mark.processes
@pytest.mark.skipif(not PG_LANE, reason="the HA topology needs PostgreSQL")
def test_ha_compose_topology_runs_a_dag_through_either_coordinator(
    cluster: Cluster, tmp_path: Path
):
    topology = Topology(cluster, tmp_path / "compose-ha", COMPOSE_HA)
    assert set(topology.services()) == {
        "dagu-migrate", "coordinator-a", "coordinator-b", "web", "worker"
    }  # fmt: skip
    dags = Path(topology.env("coordinator-a")["DAGU_DAGS_DIR"])
    (dags / "ha-job.yaml").write_text(
        "workerSelector:\n  pool: default\nsteps:\n  - name: work\n    command: 'true'\n"
    )
    topology.run_once("dagu-migrate")
    ports = {}
    for name in ("coordinator-a", "coordinator-b"):
        started = topology.start(name, env={"DAGU_COORDINATOR_PORT": "0"})
        ports[name] = wait_for(
            lambda started=started: (
                listening_port(cluster.log(started), "coordinator listening on")
                or cluster.procs[started].poll() is not None
            ),
            timeout=60,
            what=f"{name} to listen",
        )
        assert cluster.procs[started].poll() is None, cluster.log(started)
    web = topology.start("web")
    wait_for(
        lambda: "web UI and API" in cluster.log(web) or cluster.procs[web].poll() is not None,
        timeout=60,
        what="the web tier to serve",
    )
    assert cluster.procs[web].poll() is None, cluster.log(web)
    # Workers dial the coordinators by service name; here those are loopback ports.
    argv = [
        re.sub(r"(coordinator-[ab]):\d+", lambda m: f"127.0.0.1:{ports[m.group(1)]}", arg)
        for arg in topology.args("worker")
    ]
    worker = topology.start("worker", args=argv)
    started = topology.main_command("start", "ha-job", "--wait", "--json", service="web")
    assert started.returncode == 0, started.stdout + started.stderr + cluster.log(worker)
    assert json.loads(started.stdout)["status"] == "succeeded"
    assert cluster.stop(web) == 0
