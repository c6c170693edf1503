"""Sub-DAG calls across files: cycles named by validate, a run-time nesting limit, and
`call: ${VAR}` expanded at run time under the same name rules as written names."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.core.config import resolve
from controlplane.core.spec import parse_dag_file
from dags.models import DagRun
from dags.runs import RunError, child_dag_file, create_run, start_child_run
from tests.procs import Cluster
from tests.test_validate_command import run_validate

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PING = "steps:\n  - call: pong\n"
PONG = "steps:\n  - name: back\n    call: ping\n"


def ping_pong(root: Path) -> Path:
    dags_dir = root / "dags"
    dags_dir.mkdir()
    (dags_dir / "ping.yaml").write_text(PING)
    (dags_dir / "pong.yaml").write_text(PONG)
    return dags_dir


# ---- validate


def test_validate_names_both_files_of_a_call_cycle(tmp_path):
    dags_dir = ping_pong(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    ping, pong = dags_dir / "ping.yaml", dags_dir / "pong.yaml"
    caller = tmp_path / "caller.yaml"
    caller.write_text("steps:\n  - name: start\n    call: ping\n")
    result = run_validate(str(ping), str(pong), str(caller), "--dags", str(dags_dir), home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{ping}: steps[0].call: DAG call cycle across files ping ({ping}) -> pong ({pong}) "
        f"-> ping ({ping})",
        f"{pong}: steps[0].call: DAG call cycle across files pong ({pong}) -> ping ({ping}) "
        f"-> pong ({pong})",
        f"{caller}: steps[0].call: calls into a DAG call cycle across files ping ({ping}) -> "
        f"pong ({pong}) -> ping ({ping})",
    ]


def test_calls_into_the_dags_dir_without_a_cycle_are_fine(tmp_path):
    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    (dags_dir / "leaf.yaml").write_text("steps:\n  - command: echo leaf\n")
    (dags_dir / "mid.yaml").write_text("steps:\n  - call: leaf\n  - call: leaf\n")
    text = "steps:\n  - call: mid\n  - call: leaf\n"
    dag = parse_dag_file(text, source="top.yaml", default_name="top", dags_dir=dags_dir).main
    assert [(s.name, s.call) for s in dag.steps] == [("step-1", "mid"), ("step-2", "leaf")]


@pytest.mark.parametrize(
    "target", ["/tmp/x$", "${DIR}/x", "../${X}", "$", "a" * 201, "..", "/etc/passwd"]
)
def test_call_targets_must_fit_the_name_rules_around_their_variables(target):
    with pytest.raises(Exception) as excinfo:
        parse_dag_file(f"steps: [{{call: '{target}'}}]", source="t.yaml", default_name="t")
    (line,) = excinfo.value.lines()  # type: ignore[attr-defined]
    assert line.startswith("steps[0].call: invalid DAG name")


@pytest.mark.parametrize("target", ["${CHILD}", "$CHILD", "etl-${REGION}", "v${N}.daily"])
def test_call_targets_with_variables_are_left_to_run_time(target):
    dag = parse_dag_file(f"steps: [{{call: '{target}'}}]", source="t.yaml", default_name="t")
    assert dag.main.steps[0].call == target


# ---- run time, in the database


def _parent(dags_dir: Path, text: str = PING, *, source: str = "ping.yaml") -> DagRun:
    dag_file = parse_dag_file(text, source=source, default_name=Path(source).stem)
    return create_run(dag_file, now=NOW, default_mode="local")


@pytest.mark.django_db
def test_children_deeper_than_the_limit_are_refused(tmp_path):
    dags_dir = ping_pong(tmp_path)
    config = resolve(
        env={
            "DAGU_HOME": str(tmp_path),
            "DAGU_DAGS_DIR": str(dags_dir),
            "DAGU_LIMITS_MAX_SUBDAG_DEPTH": "3",
        }
    )
    run = _parent(dags_dir)
    names = ["pong", "ping", "pong"]
    for name in names:
        run = start_child_run(
            run, step="x", item_index=None, dag_name=name, params={}, selector={},
            config=config, now=NOW,
        )  # fmt: skip
    with pytest.raises(RunError) as excinfo:
        start_child_run(
            run, step="x", item_index=None, dag_name="ping", params={}, selector={},
            config=config, now=NOW,
        )  # fmt: skip
    assert str(excinfo.value) == (
        'sub-DAG "ping" not started: it would nest deeper than limits.max_subdag_depth (3) '
        "sub-DAG levels; does a DAG call itself?"
    )
    assert DagRun.objects.count() == 4


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["/tmp/x", "../ping", "/etc/passwd", "a" * 300, ".."])
def test_a_child_name_from_a_worker_is_checked_before_the_filesystem(tmp_path, name):
    dags_dir = ping_pong(tmp_path)
    (tmp_path / "x.yaml").write_text("steps: [{command: echo outside}]\n")
    with pytest.raises(RunError) as excinfo:
        child_dag_file(_parent(dags_dir), name, dags_dir=dags_dir)
    assert str(excinfo.value).startswith("sub-DAG not started: invalid DAG name")


# ---- run time, through `manage.py start`


@pytest.mark.processes
def test_a_cross_file_cycle_stops_at_the_nesting_limit(cluster: Cluster, tmp_path):
    dags_dir = ping_pong(tmp_path)
    cluster.env.update(DAGU_DAGS_DIR=str(dags_dir), DAGU_LIMITS_MAX_SUBDAG_DEPTH="4")
    result = cluster.manage("start", "ping", "--wait", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    runs = cluster.query("SELECT id, dag_name, parent_id, status FROM dags_dagrun")
    assert len(runs) == 5  # the root and four nested children
    assert {r["status"] for r in runs} == {"failed"}
    (deepest,) = [r for r in runs if not any(c["parent_id"] == r["id"] for c in runs)]
    step = cluster.steps(deepest["id"])
    (error,) = [s["error"] for s in step.values()]
    assert "limits.max_subdag_depth (4)" in error


@pytest.mark.processes
def test_call_with_a_variable_runs_the_dag_it_expands_to(cluster: Cluster, tmp_path):
    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    (dags_dir / "child-eu.yaml").write_text("steps:\n  - command: echo child $REGION\n")
    (dags_dir / "fan.yaml").write_text(
        "params: REGION=eu\nsteps:\n  - call: child-${REGION}\n    params: REGION=${REGION}\n"
    )
    (tmp_path / "x.yaml").write_text("steps: [{command: touch " + str(tmp_path / "ran") + "}]\n")
    cluster.env["DAGU_DAGS_DIR"] = str(dags_dir)
    ok = cluster.manage("start", "fan", "--wait", timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    child = cluster.query("SELECT dag_name, status FROM dags_dagrun WHERE parent_id IS NOT NULL")
    assert [(r["dag_name"], r["status"]) for r in child] == [("child-eu", "succeeded")]

    outside = cluster.manage(
        "start", "fan", "--params", f"REGION=x/../../{tmp_path.name}/x", "--wait", timeout=120
    )
    assert outside.returncode == 1, outside.stdout + outside.stderr
    run_id = outside.stdout.splitlines()[0]
    (step,) = cluster.steps(run_id).values()
    assert step["error"].startswith('call "child-${REGION}": invalid DAG name "child-x/../')
    assert not (tmp_path / "ran").exists()
    assert len(cluster.query("SELECT id FROM dags_dagrun WHERE parent_id = ?", run_id)) == 0
