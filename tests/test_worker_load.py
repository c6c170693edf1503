"""One definition of "busy": dispatch, the API, the Workers page, placement and the metrics
all count a worker's active distributed attempts (workers.load)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.core.config import TimingConfig
from controlplane.metrics import worker_gauges
from controlplane.placement import fleet_from_db
from dags.models import AttemptStatus, DagRun
from dags.runs import start_attempt
from workers.load import held_attempts
from workers.models import Worker
from workers.presence import Fleet
from workers.summary import fleet_overview, worker_summaries

pytestmark = pytest.mark.django_db
NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)
TIMING = TimingConfig()


def queued(run_id: str, mode: str = "distributed") -> DagRun:
    return DagRun.objects.create(
        id=run_id, dag_name="etl", spec="steps: []", execution_mode=mode, queued_at=NOW
    )


def test_every_reader_counts_the_same_active_attempts():
    for wid in ("w1", "w2"):
        Worker.objects.create(id=wid, registered_at=NOW, last_heartbeat_at=NOW, max_active_runs=3)
    start_attempt(queued("a"), now=NOW, mode="distributed", worker_id="w1")
    running = start_attempt(queued("b"), now=NOW, mode="distributed", worker_id="w1")
    assert running is not None
    running.status = AttemptStatus.RUNNING
    running.save()
    finished = start_attempt(queued("c"), now=NOW, mode="distributed", worker_id="w2")
    assert finished is not None
    finished.status = AttemptStatus.SUCCEEDED
    finished.save()
    start_attempt(queued("d", "local"), now=NOW, mode="local")

    assert held_attempts() == {"w1": 2}
    api = {w["id"]: w for w in worker_summaries(now=NOW, timing=TIMING)}
    assert (api["w1"]["busy"], api["w2"]["busy"]) == (2, 0)
    assert {t["dag_run_id"] for t in api["w1"]["running_tasks"]} == {"a", "b"}
    placement = {w.id: w.busy for w in fleet_from_db(now=NOW, timing=TIMING)}
    assert placement == {"w1": 2, "w2": 0}
    assert worker_gauges(fleet_from_db(now=NOW, timing=TIMING))[1] == {"busy": 2, "free": 4}
    overview = fleet_overview(now=NOW, timing=TIMING)
    assert (overview["busy"], overview["active_tasks"], overview["total"]) == (2, 2, 6)

    fleet = Fleet(timing=TIMING, started_at=NOW - timedelta(minutes=1))
    fleet.load(Worker.objects.all())
    views = {v.id: v.free_slots for v in fleet.views(now=NOW, held=held_attempts())}
    assert views == {"w1": 1, "w2": 3}
