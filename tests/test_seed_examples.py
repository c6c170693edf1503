"""Every YAML example of the seed documents, kept verbatim in tests/fixtures/seeds/, gives
the outcome issue 7 decides: DAGs through the real `validate` command (and seed 001's
pipeline and seed 003's routing example through a real main instance and workers), config
files through the config resolver, deployment manifests through the shared YAML loader."""

from __future__ import annotations

import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.core.config import ConfigError, resolve
from controlplane.core.labels import parse_labels
from controlplane.core.spec import parse_dag_file
from controlplane.core.yamlload import load_all
from tests.procs import Cluster
from tests.test_main_instance import get
from tests.test_validate_command import run_validate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "seeds"
SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
SEED_FILES = {"000": "000_b28d6c9e5f395fa7.txt", "001": "001_95e7338d4e004446.txt",
              "003": "003_aee43720ce7d6617.txt"}  # fmt: skip

DAGS_OK = ["003-2-dag-level-selector", "003-3-step-level-selectors", "003-4-local",
           "003-5-gpu-cpu-routing"]  # fmt: skip
PIPELINE = "001-1-distributed-pipeline"
SHELL_LINES = ["000-3-gpu-cpu-routing", "000-4-multi-region", "000-5-resource-based",
               "000-6-environment-based"]  # fmt: skip
STEP_SELECTORS = "000-2-step-selectors"
CONFIGS = ["000-1-config", "001-2-coordinator-config", "001-3-worker-config",
           "001-4-registry-config", "003-1-config"]  # fmt: skip
MANIFESTS = ["000-7-kubernetes-pod", "000-8-docker-compose", "001-5-docker-compose",
             "001-6-kubernetes"]  # fmt: skip
SELECTOR_ERROR = 'executor type "shell" does not support worker_selector field'
SELECTOR_HINT = (
    "hint: to route this step, put workerSelector at the DAG level, or move the step into a "
    "sub-DAG called with call: and put workerSelector on that call step"
)


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.yaml"


def test_every_fixture_is_accounted_for():
    named = {PIPELINE, STEP_SELECTORS, *DAGS_OK, *SHELL_LINES, *CONFIGS, *MANIFESTS}
    assert {p.stem for p in FIXTURES.glob("*.yaml")} == named


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seed documents are not on this machine")
def test_fixtures_are_the_seeds_text_unchanged_and_cover_every_yaml_example():
    for seed, file in SEED_FILES.items():
        text = (SEEDS / file).read_text()
        mine = sorted(FIXTURES.glob(f"{seed}-*.yaml"), key=lambda p: int(p.stem.split("-")[1]))
        for path in mine:
            assert path.read_text() in text, path.name
        # Fenced seeds mark each example ```yaml; seed 003 puts a bare "yaml" line before it.
        examples = len(re.findall(r"^(?:```yaml|yaml)$", text, flags=re.M))
        assert len(mine) == examples, seed


# ---- DAG files through `manage.py validate`


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_seed_dags_that_are_valid_as_written(home):
    paths = [str(fixture(n)) for n in [PIPELINE, *DAGS_OK]]
    result = run_validate(*paths, home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{p}: ok" for p in paths]
    # Seed 001's child carries a top-level command beside its steps.
    assert result.stderr.splitlines() == [
        f"{paths[0]}: [1].command: warning: ignored because steps are given"
    ]


def test_seed_000_step_selectors_on_command_steps_stay_an_error_with_a_hint(home):
    path = str(fixture(STEP_SELECTORS))
    result = run_validate(path, home=home)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        line
        for i in (0, 1)
        for line in (
            f"{path}: steps[{i}].workerSelector: {SELECTOR_ERROR}",
            f"{path}: steps[{i}].workerSelector: {SELECTOR_HINT}",
        )
    ]


def test_seed_000_examples_mixing_shell_lines_into_yaml_are_one_yaml_error_each(home):
    paths = [str(fixture(n)) for n in SHELL_LINES]
    result = run_validate(*paths, home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{p}: invalid YAML at line 5, column 1: expected '<document start>', but found '<scalar>'"
        for p in paths
    ]


@pytest.mark.parametrize("name", SHELL_LINES)
def test_the_dag_part_of_those_examples_is_the_step_selector_error(name):
    text = fixture(name).read_text()
    dag_part = text[text.index("steps:") :]
    with pytest.raises(Exception) as excinfo:
        parse_dag_file(dag_part, source=name, default_name="seed")
    lines = excinfo.value.lines()  # type: ignore[attr-defined]
    steps = dag_part.count("- name:")
    for i in range(steps):
        assert f"steps[{i}]: a step needs one of command, script or call" in lines
        assert f"steps[{i}].workerSelector: {SELECTOR_ERROR}" in lines
        assert f"steps[{i}].workerSelector: {SELECTOR_HINT}" in lines
    assert len(lines) == 3 * steps


def test_seed_003_unnamed_steps_get_positional_names():
    routing = parse_dag_file(
        fixture("003-5-gpu-cpu-routing").read_text(), source="r.yaml", default_name="routing"
    )
    assert [(s.name, s.call) for s in routing.main.steps] == [
        ("step-1", "train-model"),
        ("step-2", "aggregate-results"),
    ]
    assert [s.name for s in routing.get("train-model").steps] == ["step-1"]
    local = parse_dag_file(fixture("003-4-local").read_text(), source="l.yaml", default_name="l")
    assert local.main.force_local
    assert [(s.name, s.command) for s in local.main.steps] == [
        ("step-1", "curl -f http://localhost:8080/health")
    ]


def test_seed_003_calls_of_dags_missing_from_the_dags_dir_are_named(home, tmp_path):
    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    (dags_dir / "train-model.yaml").write_text("steps:\n  - command: python train.py\n")
    path = str(fixture("003-3-step-level-selectors"))
    result = run_validate(path, "--dags", str(dags_dir), home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'{path}: steps[1].call: unknown DAG "generate-report": not in this file nor in {dags_dir}'
    ]


# ---- config files


@pytest.mark.parametrize("name", ["000-1-config", "003-1-config"])
def test_seed_worker_label_configs(name):
    config = resolve(env={}, config_file=fixture(name))
    assert dict(config.worker.labels) == {"gpu": "true", "memory": "64G", "region": "us-east-1"}


def test_seed_001_coordinator_config():
    config = resolve(env={}, config_file=fixture("001-2-coordinator-config"))
    assert (config.coordinator.host, config.coordinator.port) == ("0.0.0.0", 50055)
    assert config.paths.service_registry_dir == Path.home() / ".local/share/dagu/service-registry"
    # `insecure: true` means plaintext: the certificate files it names are set aside (and a
    # warning names them), so the example starts without those paths existing.
    assert config.peer.insecure is True
    assert (config.peer.cert_file, config.peer.client_ca_file) == ("", "")
    assert set(config.peer.ignored) >= {"peer.cert_file", "peer.client_ca_file"}


def test_seed_001_worker_config():
    config = resolve(env={}, config_file=fixture("001-3-worker-config"))
    assert (config.worker.id, config.worker.max_active_runs) == ("worker-gpu-01", 10)
    assert dict(config.worker.labels) == {"gpu": "true", "memory": "64G", "region": "us-east-1"}
    assert config.peer.insecure is False


def test_seed_001_registry_config_with_a_shell_line_is_one_config_error():
    path = fixture("001-4-registry-config")
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={}, config_file=path)
    assert str(excinfo.value) == (
        f"config (from config file {path}): invalid YAML at line 7, column 1: "
        "could not find expected ':' (while scanning a simple key)"
    )


# ---- deployment manifests: read by the same loader; their worker labels parse


def _label_strings(node: object) -> list[str]:
    if isinstance(node, dict):
        if node.get("name") == "DAGU_WORKER_LABELS":
            return [str(node["value"])]
        return [s for v in node.values() for s in _label_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _label_strings(v)]
    if isinstance(node, str):
        return re.findall(r"--worker[.-]labels[= ](\S+)", node)
    return []


def test_seed_manifests_load_and_their_worker_labels_parse():
    found: dict[str, list[dict[str, str]]] = {}
    for name in MANIFESTS:
        documents = load_all(fixture(name).read_text())
        found[name] = [parse_labels(s) for d in documents for s in _label_strings(d)]
    assert found == {
        "000-7-kubernetes-pod": [
            {"kubernetes.node": "$(NODE_NAME)", "kubernetes.namespace": "default"}
        ],
        "000-8-docker-compose": [{"container": "docker", "gpu": "${GPU_DEVICE}"}],
        "001-5-docker-compose": [
            {"gpu": "true", "cuda": "11.8"},
            {"cpu-only": "true", "region": "us-east-1"},
        ],
        "001-6-kubernetes": [
            {"gpu": "true", "node-type": "gpu-node"},
            {"cpu-optimized": "true", "region": "us-east-1"},
        ],
    }


# ---- running them on a real main instance and workers


def _tools(tmp_path: Path) -> tuple[Path, Path]:
    """A working dir holding the scripts the seeds' commands run, and a bin dir with the
    `python` they call (not every machine has one on PATH)."""
    work = tmp_path / "work"
    work.mkdir()
    for script in ("train_model.py", "train.py", "aggregate.py"):
        (work / script).write_text(
            f"import os\nprint('{script} ran on', os.environ.get('WORKER_ID'))\n"
        )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    return work, bin_dir


@pytest.mark.processes
def test_seed_pipelines_run_end_to_end_on_labelled_workers(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    work, bin_dir = _tools(tmp_path)
    cluster.env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.chdir(work)  # steps run in their process's working dir, as in the seeds
    web = cluster.start_main()
    cluster.start_worker("gpu-w", "gpu=true,cuda=11.8")
    cluster.start_worker("cpu-w", "cpu-optimized=true,cores=64")

    # Seed 001: the child (step-level workerSelector over `run:`) lands on the GPU worker.
    result = cluster.manage("start", str(fixture(PIPELINE)), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.log("main")
    pipeline = cluster.status(result.stdout.splitlines()[0])
    assert (pipeline["dag_name"], pipeline["status"]) == ("distributed-pipeline", "succeeded")
    assert [s["name"] for s in pipeline["steps"]] == ["train-model"]
    (child_id,) = pipeline["children"]
    child = cluster.status(child_id)
    assert (child["dag_name"], child["status"], child["worker_id"]) == (
        "train-model",
        "succeeded",
        "gpu-w",
    )
    assert _log(cluster, child_id, "train-model") == "train_model.py ran on gpu-w\n"

    # Seed 003: unnamed steps run as step-N, each child on the worker its selector names.
    result = cluster.manage("start", str(fixture("003-5-gpu-cpu-routing")), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.log("main")
    assert "step-1" in result.stdout and "step-2" in result.stdout
    run_id = result.stdout.splitlines()[0]
    routing = cluster.status(run_id)
    assert [s["name"] for s in routing["steps"]] == ["step-1", "step-2"]
    children = {c["dag_name"]: c for c in map(cluster.status, routing["children"])}
    assert {n: (c["worker_id"], c["status"]) for n, c in children.items()} == {
        "train-model": ("gpu-w", "succeeded"),
        "aggregate-results": ("cpu-w", "succeeded"),
    }
    aggregate = children["aggregate-results"]
    assert _log(cluster, aggregate["dag_run_id"], "step-1") == "aggregate.py ran on cpu-w\n"

    # The API shows the same names, and serves the logs under them.
    created = cluster.manage("create_api_token", "ops", "--role", "manager")
    token = created.stdout.strip().splitlines()[-1]
    status, body = get(f"http://127.0.0.1:{web}/api/v2/dag-runs/{run_id}", token)
    assert status == 200
    assert [s["name"] for s in body["steps"]] == ["step-1", "step-2"]
    url = f"http://127.0.0.1:{web}/api/v2/dag-runs/{aggregate['dag_run_id']}/logs"
    status, logs = get(url, token)
    assert status == 200
    assert [(s["name"], s["log"]) for s in logs["steps"]] == [
        ("step-1", "aggregate.py ran on cpu-w\n")
    ]
    assert cluster.stop("main") == 0


def _log(cluster: Cluster, run_id: str, step: str) -> str:
    row = cluster.steps(run_id)[step]
    return (cluster.home / "logs" / row["log_path"]).read_text()


@pytest.mark.django_db
def test_generated_step_names_show_on_the_run_page(client):
    from django.contrib.auth import get_user_model

    from dags.runs import create_run

    dag_file = parse_dag_file(
        fixture("003-2-dag-level-selector").read_text(), source="train.yaml", default_name="t"
    )
    run = create_run(dag_file, now=datetime.now(UTC), default_mode="local")
    admin = get_user_model().objects.create_superuser("admin", password="pw")
    client.force_login(admin)
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert [s.name for s in run.steps.all()] == ["step-1"]
    assert ">step-1<" in page
