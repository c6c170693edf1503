"""The example DAGs in examples/: valid, routed as documented, and quick to run anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from controlplane.core.execution import (
    ChildRequest,
    ChildResult,
    RunContext,
    execute_run,
)
from controlplane.core.spec import (
    KIND_COMMAND,
    KIND_PARALLEL,
    Dag,
    DagFile,
    load_dag_file,
    resolve_params,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
EXPECTED = {
    "environment-based.yaml",
    "gpu-cpu-routing.yaml",
    "hello.yaml",
    "local-health-check.yaml",
    "multi-region.yaml",
    "parent-with-subdags.yaml",
    "resource-based.yaml",
}
# The labels the seeds' use cases route on; an example using another is likely a typo.
KNOWN_LABELS = {
    ("gpu", "true"),
    ("region", "eu-west-1"),
    ("region", "us-east-1"),
    ("memory", "128G"),
    ("env", "dev"),
    ("env", "prod"),
    ("compliance", "soc2"),
    ("compliance", "gdpr"),
    ("cpu-only", "true"),
}
# The demo workers: every DAG reachable from these examples' main DAGs must find one.
DEMO_WORKERS = ({"gpu": "true"}, {"region": "eu-west-1"})
RUN_LIMIT_SEC = 10.0

EXAMPLE_PATHS = sorted(EXAMPLES.glob("*.yaml"))


def load(name: str) -> DagFile:
    return load_dag_file(EXAMPLES / name)


def test_there_is_one_example_per_use_case():
    assert {p.name for p in EXAMPLE_PATHS} == EXPECTED


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.name)
def test_example_parses_and_its_calls_stay_in_the_file(path):
    dag_file = load_dag_file(path)
    assert dag_file.main.name == path.stem
    for dag in dag_file.dags:
        for step in dag.steps:
            if step.call:
                assert dag_file.get(step.call) is not None, f"{dag.name}.{step.name}"


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.name)
def test_example_uses_only_the_documented_labels(path):
    for dag in load_dag_file(path).dags:
        selectors = [dag.worker_selector, *(s.worker_selector for s in dag.steps)]
        for selector in selectors:
            assert set(selector.items()) <= KNOWN_LABELS, f"{path.name}: {dag.name}"


def test_all_examples_pass_the_validate_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGU_", "BOLTBASE_"))}
    env["DAGU_HOME"] = str(tmp_path)
    names = [str(p.relative_to(REPO)) for p in EXAMPLE_PATHS]
    result = subprocess.run(
        [sys.executable, "manage.py", "validate", *names],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{name}: ok" for name in names]


def test_gpu_cpu_routing_sends_the_main_dag_to_a_gpu_worker():
    dag_file = load("gpu-cpu-routing.yaml")
    assert dict(dag_file.main.worker_selector) == {"gpu": "true"}
    assert dag_file.main.force_local is False
    assert dict(dag_file.get("cpu-aggregate").worker_selector) == {"cpu-only": "true"}


def test_parent_with_subdags_routes_children_by_step_level_selectors():
    dag_file = load("parent-with-subdags.yaml")
    parent = dag_file.main
    assert parent.worker_selector == {}
    routed = {s.name: dict(s.worker_selector) for s in parent.steps if s.call}
    assert routed == {"train": {"gpu": "true"}, "process-eu-partitions": {"region": "eu-west-1"}}
    parallel = [s for s in parent.steps if s.kind == KIND_PARALLEL]
    assert len(parallel) == 1
    assert parallel[0].parallel is not None and parallel[0].parallel.items
    assert {d.name for d in dag_file.dags[1:]} == {"train-model", "process-partition"}


def test_local_health_check_is_forced_onto_the_main_instance():
    dag = load("local-health-check.yaml").main
    assert dag.force_local is True
    assert dag.worker_selector == {}


def test_hello_has_no_selector_anywhere():
    dag = load("hello.yaml").main
    assert dag.worker_selector == {}
    assert all(s.kind == KIND_COMMAND and not s.worker_selector for s in dag.steps)


@pytest.mark.parametrize("name", ["gpu-cpu-routing.yaml", "parent-with-subdags.yaml"])
def test_demo_examples_only_need_the_demo_workers(name):
    dag_file = load(name)
    for dag, selector in _reachable(dag_file, dag_file.main, dict(dag_file.main.worker_selector)):
        if selector:
            assert any(selector.items() <= w.items() for w in DEMO_WORKERS), dag.name


def _reachable(
    dag_file: DagFile, dag: Dag, selector: dict[str, str]
) -> list[tuple[Dag, dict[str, str]]]:
    found = [(dag, selector)]
    for step in dag.steps:
        child = dag_file.get(step.call) if step.call else None
        if child is not None:
            # A step selector overrides the child's own (SPEC section 3).
            child_selector = dict(step.worker_selector or child.worker_selector)
            found += _reachable(dag_file, child, child_selector)
    return found


# ---- running them


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished: dict[str, str] = {}
        self.logs: list[bytes] = []

    def step_started(self, step: str, *, at: datetime, retry: int) -> None:
        pass

    def step_log(self, step: str, stream: str, data: bytes) -> None:
        with self.lock:
            self.logs.append(data)

    def step_finished(
        self,
        step: str,
        *,
        status: str,
        exit_code: int | None,
        at: datetime,
        output: str | None,
        error: str,
    ) -> None:
        with self.lock:
            self.finished[step] = status if not error else f"{status}: {error}"


class _InFileLauncher:
    """Runs each child DAG from the same file, in this process, to the end."""

    def __init__(self, dag_file: DagFile) -> None:
        self.dag_file = dag_file
        self.children: list[str] = []
        self.lock = threading.Lock()

    def run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
        child = self.dag_file.get(request.dag_name)
        assert child is not None, request.dag_name
        with self.lock:
            self.children.append(request.dag_name)
        outcome = _run(child, self, params=resolve_params(child, request.params), cancel=cancel)
        return ChildResult(
            run_id=f"child-{request.step}", status=outcome.status, outputs=outcome.outputs
        )


def _run(dag: Dag, launcher: _InFileLauncher, *, params: dict[str, str], cancel: threading.Event):
    return execute_run(
        dag,
        context=RunContext(
            dag_run_id=f"test-{dag.name}",
            root_dag_run_id="test-root",
            parent_dag_run_id="",
            worker_id="test-worker",
            params=params,
        ),
        reporter=_Recorder(),
        launcher=launcher,
        cancel=cancel,
    )


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.name)
def test_example_runs_to_success_quickly(path):
    dag_file = load_dag_file(path)
    launcher = _InFileLauncher(dag_file)
    cancel = threading.Event()
    timer = threading.Timer(RUN_LIMIT_SEC, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        outcome = _run(
            dag_file.main, launcher, params=resolve_params(dag_file.main, {}), cancel=cancel
        )
    finally:
        timer.cancel()
    assert outcome.status == "succeeded", outcome.error
    assert time.monotonic() - started < RUN_LIMIT_SEC
    called = {s.call for d in dag_file.dags for s in d.steps if s.call}
    reachable = {d.name for d, _ in _reachable(dag_file, dag_file.main, {})} - {dag_file.main.name}
    assert called & reachable <= set(launcher.children)
