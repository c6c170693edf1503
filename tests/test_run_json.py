"""The run JSON comes from dags.serializers in a fixed number of queries, however many
steps, children, attempts and decisions the run has."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.core.config import TimingConfig
from controlplane.models import DispatchDecision
from dags.models import Attempt, DagRun, StepRun
from dags.serializers import run_detail_json

pytestmark = pytest.mark.django_db
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def grow(run: DagRun, n: int) -> None:
    for _ in range(n):
        i = StepRun.objects.filter(run=run).count()
        k = f"{run.id}-{i}"
        StepRun.objects.create(run=run, name=k, position=i)
        DagRun.objects.create(id=k, dag_name="c", spec="", queued_at=NOW, parent=run, root=run,
                              parent_step=k)  # fmt: skip
        Attempt.objects.create(run=run, number=Attempt.objects.filter(run=run).count() + 1,
                               token=k, mode="local", created_at=NOW)  # fmt: skip
        DispatchDecision.objects.create(run=run, attempt=1, event="created", mode="local",
                                        why="forced_local", decided_at=NOW)  # fmt: skip


def queries(run_id: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        data = run_detail_json(DagRun.objects.get(pk=run_id), now=NOW, timing=TimingConfig())
    assert data["dag_run_id"] == run_id
    return len(ctx.captured_queries)


def test_run_json_query_count_does_not_grow_with_the_run():
    run = DagRun.objects.create(id="r", dag_name="d", spec="", queued_at=NOW)
    grow(run, 1)
    small = queries("r")
    grow(run, 5)
    assert queries("r") == small
    data = run_detail_json(DagRun.objects.get(pk="r"), now=NOW, timing=TimingConfig())
    assert [s["name"] for s in data["steps"]][:2] == ["r-0", "r-1"]
    assert [a["number"] for a in data["attempts"]] == list(range(1, 7))
    assert len(data["children"]) == 6 and len(data["dispatch_decisions"]) == 6
