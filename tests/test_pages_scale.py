"""Every operator page at 1,000 workers and 10,000 runs: one page of rows, a few queries
whatever the fleet's size, and the run queries answered from indexes (no full sort)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from dags.models import DagRun
from tests.roles import user_with_role
from workers.models import Worker, WorkerLabel

WORKERS = 1_000
RUNS = 10_000
# Generous, but constant: a page that queried per row would need over a thousand.
MAX_QUERIES = 25


@pytest.fixture
def fleet(settings, tmp_path: Path, django_db_blocker) -> None:
    settings.DAGU = dataclasses.replace(
        settings.DAGU,
        paths=dataclasses.replace(settings.DAGU.paths, dags_dir=tmp_path, log_dir=tmp_path),
    )
    (tmp_path / "hello.yaml").write_text("steps:\n  - name: greet\n    command: echo hi\n")
    now = datetime.now(UTC)
    Worker.objects.bulk_create(
        Worker(id=f"w{i:04d}@host", registered_at=now, labels={"pool": f"p{i % 10}"},
               last_heartbeat_at=now - timedelta(seconds=i % 60), max_active_runs=4)
        for i in range(WORKERS)
    )  # fmt: skip
    WorkerLabel.objects.bulk_create(
        WorkerLabel(worker_id=f"w{i:04d}@host", key="pool", value=f"p{i % 10}")
        for i in range(WORKERS)
    )
    statuses = ["succeeded"] * 7 + ["failed", "running", "queued"]
    DagRun.objects.bulk_create(
        (
            DagRun(id=f"r{i:05d}", dag_name="hello", spec="", queued_at=now - timedelta(seconds=i),
                   status=statuses[i % 10], execution_mode="distributed",
                   worker_id=f"w{i % WORKERS:04d}@host" if statuses[i % 10] == "running" else "")
            for i in range(RUNS)
        ),
        batch_size=2_000,
    )  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "rows"),
    [
        ("/workers/", 'data-worker-id="'),
        ("/workers/?health=healthy&q=pool=p3&page=2", 'data-worker-id="'),
        ("/runs/", 'data-run-id="'),
        ("/runs/?status=running&page=3", 'data-run-id="'),
        ("/dags/", 'class="dag'),
        ("/dags/hello/?page=7", "/runs/r"),
        ("/runs/r05001/", 'data-step="'),
    ],
)
def test_every_page_at_a_thousand_workers_and_ten_thousand_runs(fleet, client: Client, url, rows):
    client.force_login(user_with_role("ops", "manager"))
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count(rows) <= 120, "a page shows one page of rows, not the fleet"
    assert len(queries) <= MAX_QUERIES, [q["sql"] for q in queries]


@pytest.mark.django_db
def test_the_run_lists_are_index_scans_in_order(fleet):
    """SQLite's plan for the Runs page (all, by status) and a DAG's history: no temp B-tree
    for the ORDER BY, which would mean sorting every matching run to show 50."""
    if connection.vendor != "sqlite":
        pytest.skip("the plan text checked is SQLite's")
    lists = [
        DagRun.objects.order_by("-queued_at", "-id"),
        DagRun.objects.filter(status="running").order_by("-queued_at", "-id"),
        DagRun.objects.filter(dag_name="hello").order_by("-queued_at", "-id"),
    ]
    for qs in lists:
        sql, params = qs[:50].query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
        assert "USING INDEX" in plan, plan
        # A temp B-tree for the tie-break on id alone ("RIGHT PART OF ORDER BY") is fine.
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
