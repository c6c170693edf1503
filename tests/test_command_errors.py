"""Bad input to the real commands: one line naming what is wrong and where, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import DB_NAME, Cluster, wait_for, write_dag

pytestmark = pytest.mark.processes


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_bad_port_names_the_key_and_its_source(cluster: Cluster):
    line = one_error_line(cluster.manage("coordinator", "--coordinator.port", "http"))
    assert "coordinator.port" in line and "--coordinator.port" in line and '"http"' in line


def test_bad_worker_labels_are_refused(cluster: Cluster):
    line = one_error_line(cluster.manage("worker", "--worker.labels", "gpu=true,gpu"))
    assert 'invalid label "gpu": expected key=value' in line


def test_an_unwritable_registry_dir_stops_the_coordinator_clearly(cluster: Cluster, tmp_path: Path):
    blocked = tmp_path / "registry-is-a-file"
    blocked.write_text("")
    line = one_error_line(cluster.manage("coordinator", "--service-registry-dir", str(blocked)))
    assert "paths.service_registry_dir" in line and str(blocked) in line


def test_an_unknown_mode_in_the_environment(cluster: Cluster):
    cluster.env["DAGU_DEFAULT_EXECUTION_MODE"] = "everywhere"
    line = one_error_line(cluster.manage("workers"))
    assert "default_execution_mode" in line and "DAGU_DEFAULT_EXECUTION_MODE" in line


def test_a_worker_without_a_coordinator_says_so_and_keeps_trying(cluster: Cluster):
    proc = cluster.spawn("lonely", "worker", "--worker.id", "lonely")
    wait_for(
        lambda: "no coordinator address" in cluster.log("lonely"),
        timeout=20,
        what="the worker to explain that no coordinator is known",
    )
    assert proc.poll() is None  # still running, retrying with backoff
    assert cluster.stop("lonely") == 0


def test_status_of_an_unknown_run(cluster: Cluster):
    line = one_error_line(cluster.manage("status", "no-such-run"))
    assert "no-such-run" in line


def test_an_unmigrated_database_is_reported_not_a_traceback(tmp_path: Path):
    import os
    import subprocess

    from tests.procs import MANAGE

    env = {**os.environ, "DAGU_HOME": str(tmp_path / "fresh")}
    env.pop("DATABASE_URL", None)
    for command in (["coordinator"], ["workers"], ["status", "x"]):
        result = subprocess.run(
            [*MANAGE, *command], env=env, capture_output=True, text=True, timeout=60
        )
        line = one_error_line(result)
        assert "database" in line and "manage.py migrate" in line


def test_an_unreachable_database_is_reported_not_a_traceback(cluster: Cluster):
    cluster.env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:1/none"
    line = one_error_line(cluster.manage("workers"))
    assert "database (from DATABASE_URL): cannot connect" in line


@pytest.mark.parametrize("damage", ["not-sqlite", "malformed"])
def test_a_corrupt_sqlite_file_is_reported_in_one_line(damage: str, cluster: Cluster, tmp_path):
    if cluster.pg_url:
        pytest.skip("an SQLite file's damage; the PostgreSQL lane has no such file")
    path = cluster.home / DB_NAME
    if damage == "not-sqlite":
        path.write_bytes(b"this is not a database\n" * 400)
        expected = "is not an SQLite database"
    else:
        # The header survives; the schema page and everything after it do not.
        data = bytearray(path.read_bytes())
        data[100:] = bytes(range(256)) * ((len(data) - 100) // 256) + b"\0" * (
            (len(data) - 100) % 256
        )
        path.write_bytes(bytes(data))
        expected = "is damaged (database disk image is malformed)"
    dag = write_dag(tmp_path, "any", "steps:\n  - name: a\n    command: 'true'\n")
    for command in (
        ["coordinator"],
        ["workers"],
        ["status", "x"],
        ["start", str(dag)],
        ["migrate"],
    ):
        line = one_error_line(cluster.manage(*command))
        assert line.startswith(f"error: database (from {path}): the file {expected}"), command


def test_start_refuses_a_protected_param(cluster: Cluster, tmp_path: Path):
    dag = write_dag(tmp_path, "any", "steps:\n  - name: a\n    command: 'true'\n")
    line = one_error_line(cluster.manage("start", str(dag), "--params", "LD_PRELOAD=x"))
    assert '"LD_PRELOAD" is a protected variable' in line
