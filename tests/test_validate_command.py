"""`manage.py validate FILE...`, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_SEC = 120

VALID = """
name: fine
steps:
  - name: a
    command: echo a
"""


def run_validate(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DAGU_", "BOLTBASE_"))}
    clean.update(DAGU_HOME=str(home), **(env or {}))
    return subprocess.run(
        [sys.executable, "manage.py", "validate", *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SEC,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_valid_file_prints_ok_and_exits_0(tmp_path, home):
    path = write(tmp_path, "fine.yaml", VALID)
    result = run_validate(path, home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok\n"
    assert result.stderr == ""


def test_worker_selector_on_a_command_step_fails_with_path_and_exit_2(tmp_path, home):
    # Issue case 1.
    path = write(
        tmp_path,
        "shell-selector.yaml",
        """
        steps:
          - name: a
            command: echo a
          - name: b
            command: echo b
          - name: c
            command: echo c
            worker_selector:
              gpu: "true"
        """,
    )
    result = run_validate(path, home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'{path}: steps[2].worker_selector: executor type "shell" does not support '
        "worker_selector field",
        f"{path}: steps[2].worker_selector: hint: to route this step, put worker_selector at "
        "the DAG level, or move the step into a sub-DAG called with call: and put "
        "worker_selector on that call step",
    ]
    assert result.stdout == ""


def test_worker_selector_string_other_than_local_fails_with_exit_2(tmp_path, home):
    # Issue case 2.
    path = write(
        tmp_path,
        "remote.yaml",
        """
        worker_selector: remote
        steps:
          - name: a
            command: echo a
        """,
    )
    result = run_validate(path, home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'{path}: worker_selector: unsupported worker_selector string value "remote"; '
        'the only allowed string value is "local"'
    ]


def test_every_problem_gets_its_own_line_and_no_traceback(tmp_path, home):
    path = write(
        tmp_path,
        "many.yaml",
        """
        workerSelector: remote
        steps:
          - name: a
            comand: echo
        """,
    )
    result = run_validate(path, home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'{path}: workerSelector: unsupported worker_selector string value "remote"; '
        'the only allowed string value is "local"',
        f'{path}: steps[0].comand: unknown key (did you mean "command"?)',
        f"{path}: steps[0]: a step needs one of command, script or call",
    ]
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_and_missing_file_have_no_path(tmp_path, home):
    broken = write(tmp_path, "broken.yaml", "steps:\n  - name: [a\n")
    missing = str(tmp_path / "missing.yaml")
    result = run_validate(broken, missing, home=home)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{broken}: invalid YAML at line 3, column 1: ")
    assert lines[1] == f"{missing}: cannot read file: No such file or directory"


def test_mixed_files_report_each_and_exit_2(tmp_path, home):
    good = write(tmp_path, "good.yaml", VALID)
    bad = write(tmp_path, "bad.yaml", "steps: []\n")
    result = run_validate(good, bad, home=home)
    assert result.returncode == 2
    assert result.stdout == f"{good}: ok\n"
    assert result.stderr == f"{bad}: steps: must not be empty: a DAG needs at least one step\n"


def test_call_targets_are_checked_against_the_configured_dags_dir(tmp_path, home):
    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    (dags_dir / "known.yaml").write_text(VALID)
    path = write(
        tmp_path,
        "caller.yaml",
        """
        steps:
          - call: known
          - call: unknown
        """,
    )
    result = run_validate(path, home=home, env={"DAGU_DAGS_DIR": str(dags_dir)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'{path}: steps[1].call: unknown DAG "unknown": not in this file nor in {dags_dir}'
    ]
    flag = run_validate(path, "--dags", str(dags_dir), home=home)
    assert flag.stderr == result.stderr


def test_call_targets_are_not_checked_when_the_dags_dir_does_not_exist(tmp_path, home):
    path = write(tmp_path, "caller.yaml", "steps:\n  - call: elsewhere\n")
    result = run_validate(path, home=home, env={"DAGU_DAGS_DIR": str(tmp_path / "absent")})
    assert result.returncode == 0, result.stderr


def test_no_file_argument_is_a_usage_error(home):
    result = run_validate(home=home)
    assert result.returncode != 0
    assert "FILE" in result.stderr


def test_a_protected_variable_in_dag_env_fails_with_its_path(tmp_path, home):
    path = write(tmp_path, "env.yaml", "env: [PATH=/tmp/evil]\n" + VALID)
    result = run_validate(path, home=home)
    assert result.returncode == 2
    assert result.stderr == (
        f'{path}: env[0]: "PATH" is a protected variable: params and env cannot set it\n'
    )
