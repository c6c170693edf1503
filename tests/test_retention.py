"""Retention: pruning finished runs, the daily step, and the index the busy loops rely on."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.coordinator import Coordinator
from controlplane.core.config import resolve
from controlplane.core.spec import parse_dag_file
from controlplane.failover import failover_once
from controlplane.models import DispatchDecision
from dags.local import recover_lost_local_attempts
from dags.models import Attempt, DagRun, StepRun
from dags.retention import DurationError, apply_retention, parse_duration, prune_runs
from dags.runs import create_run, start_attempt

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SPEC = "steps:\n  - name: one\n    command: echo 1\n"
GPU = 'worker_selector:\n  gpu: "true"\n' + SPEC


def finished_run(*, finished: datetime, status: str = "succeeded", parent=None) -> DagRun:
    run = create_run(
        parse_dag_file(SPEC, source="x.yaml", default_name="x"),
        now=finished,
        default_mode="local",
        parent=parent,
        parent_step="one" if parent else "",
    )
    attempt = start_attempt(run, now=finished, mode="local", worker_id="local")
    assert attempt is not None
    Attempt.objects.filter(pk=attempt.pk).update(status=status, finished_at=finished)
    DagRun.objects.filter(pk=run.pk).update(status=status, finished_at=finished)
    run.refresh_from_db()
    return run


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("1d12h", timedelta(hours=36))],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "-1d", "30d junk"])
def test_bad_durations_are_one_line(text):
    with pytest.raises(DurationError) as excinfo:
        parse_duration(text)
    assert "expected e.g. 30d" in str(excinfo.value)


def test_prune_deletes_old_finished_trees_with_everything_they_own(tmp_path: Path):
    now = T0 + timedelta(days=40)
    old = finished_run(finished=T0)
    child = finished_run(finished=T0, parent=old)
    old_failed = finished_run(finished=T0, status="failed")
    recent = finished_run(finished=now - timedelta(days=1))
    busy_root = finished_run(finished=T0)  # its child is still running: kept whole
    busy_child = finished_run(finished=T0, parent=busy_root)
    DagRun.objects.filter(pk=busy_child.pk).update(status="running", finished_at=None)
    running = create_run(
        parse_dag_file(SPEC, source="x.yaml", default_name="x"), now=T0, default_mode="local"
    )
    for run in (old, child, recent):
        (tmp_path / run.id / "1").mkdir(parents=True)
        (tmp_path / run.id / "1" / "one.log").write_text("out")

    assert prune_runs(older_than=timedelta(days=30), now=now, log_dir=tmp_path) == 3

    assert set(DagRun.objects.values_list("pk", flat=True)) == {
        recent.pk, busy_root.pk, busy_child.pk, running.pk
    }  # fmt: skip
    gone = [old.pk, child.pk, old_failed.pk]
    assert not Attempt.objects.filter(run_id__in=gone).exists()
    assert not StepRun.objects.filter(run_id__in=gone).exists()
    assert not DispatchDecision.objects.filter(run_id__in=gone).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [recent.id]


def test_retention_days_zero_keeps_everything(tmp_path: Path):
    finished_run(finished=T0)
    now = T0 + timedelta(days=400)
    assert apply_retention(days=0, now=now, log_dir=tmp_path) == 0
    assert apply_retention(days=30, now=now, log_dir=tmp_path) == 1
    assert not DagRun.objects.exists()


def test_retention_days_is_configurable_and_defaults_to_30(tmp_path: Path):
    assert resolve(env={"DAGU_HOME": str(tmp_path)}).retention.days == 30
    env = {"DAGU_HOME": str(tmp_path), "DAGU_RETENTION_DAYS": "0"}
    assert resolve(env=env).retention.days == 0


@pytest.mark.django_db(transaction=True)
def test_prune_command_end_to_end(tmp_path: Path):
    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "DAGU_HOME": str(tmp_path)},
            cwd=Path(__file__).resolve().parent.parent,
            timeout=120,
        )

    assert manage("migrate", "-v0").returncode == 0
    bad = manage("prune", "--older-than", "soon")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        'error: --older-than: invalid duration "soon": expected e.g. 30d, 12h, 90m or 45s'
    )
    good = manage("prune", "--older-than", "12h")
    assert (good.returncode, good.stdout.strip()) == (0, "pruned 0 run(s)")


def test_the_busy_loops_read_active_attempts_through_the_index(tmp_path: Path):
    """Failover, slot counting and local recovery run every second or so: their queries on
    attempts must use the active-attempt index, or they grow with every finished run."""
    for i in range(20):
        finished_run(finished=T0 + timedelta(minutes=i))
    gpu = create_run(
        parse_dag_file(GPU, source="g.yaml", default_name="g"), now=T0, default_mode="local"
    )
    start_attempt(gpu, now=T0, mode="distributed", worker_id="w1")
    create_run(parse_dag_file(GPU, source="g.yaml", default_name="g"), now=T0, default_mode="x")
    core = Coordinator(resolve(env={"DAGU_HOME": str(tmp_path)}), now=T0)
    with CaptureQueriesContext(connection) as captured:
        failover_once(fleet=core.fleet, now=T0, mailbox_tokens=set())
        core.dispatch_step()
        recover_lost_local_attempts(now=T0, started_at=T0, mine=set())
    table = Attempt._meta.db_table
    queries = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith("SELECT") and f'FROM "{table}"' in q["sql"] and "IN (" in q["sql"]
    ]
    assert len(queries) >= 3
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Tiny test tables are cheaper to scan; ask whether the index serves the query.
            cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in queries:
            prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
            cursor.execute(prefix + sql)
            plan = " ".join(str(col) for row in cursor.fetchall() for col in row)
            assert "attempt_active" in plan, (sql, plan)
