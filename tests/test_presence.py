"""The coordinator's worker mirror and its periodic jobs, one step at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.coordinator import Coordinator
from controlplane.core import registry
from controlplane.core.config import TimingConfig, resolve
from dags.models import DagRun
from dags.scheduler import CronScheduler
from workers.models import Worker, WorkerLabel
from workers.presence import Fleet, FleetFull, Identity, flush_fleet, purge_offline

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def config_for(tmp_path: Path):
    return resolve(env={"DAGU_HOME": str(tmp_path)})


def who(wid: str, **labels: str) -> Identity:
    return Identity(wid, "host-a", 42, labels, 4)


def test_heartbeats_are_flushed_in_one_batch_not_one_write_each():
    fleet = Fleet(timing=TimingConfig(), started_at=T0)
    for i in range(50):
        fleet.record_heartbeat(who(f"w{i:02}", gpu="true"), running=[], stopping=False, now=T0)
    for i in range(50):  # a second heartbeat each before the flush: still one row per worker
        fleet.record_heartbeat(
            who(f"w{i:02}", gpu="true"), running=[], stopping=False, now=T0 + timedelta(seconds=1)
        )
    with CaptureQueriesContext(connection) as queries:
        assert flush_fleet(fleet, now=T0) == 50
    assert len(queries) < 12  # a handful of bulk statements, not 100 writes
    assert Worker.objects.count() == 50
    assert Worker.objects.matching({"gpu": "true"}).count() == 50
    assert Worker.objects.get(pk="w07").last_heartbeat_at == T0 + timedelta(seconds=1)
    assert flush_fleet(fleet, now=T0) == 0  # nothing changed since


def test_changed_labels_are_rewritten_and_matching_uses_them():
    fleet = Fleet(timing=TimingConfig(), started_at=T0)
    fleet.record_heartbeat(who("w", gpu="true"), running=[], stopping=False, now=T0)
    flush_fleet(fleet, now=T0)
    fleet.record_heartbeat(who("w", region="eu"), running=[], stopping=False, now=T0)
    flush_fleet(fleet, now=T0)
    assert list(WorkerLabel.objects.values_list("key", "value")) == [("region", "eu")]
    assert not Worker.objects.matching({"gpu": "true"}).exists()
    assert Worker.objects.matching({"region": "eu"}).get().pk == "w"


def test_a_worker_seen_only_in_the_registry_is_mirrored(tmp_path: Path):
    config = config_for(tmp_path)
    core = Coordinator(config, now=T0)
    now = datetime.now(UTC)
    registry.write_record(
        Path(config.paths.service_registry_dir),
        registry.WorkerRecord(
            id="file-only",
            host="elsewhere",
            pid=7,
            labels={"zone": "b"},
            max_active_runs=3,
            active_tasks=0,
            status="active",
            started_at=now,
            last_heartbeat=now,
        ),
    )
    core.registry_step()
    flush_fleet(core.fleet, now=now)
    row = Worker.objects.get(pk="file-only")
    assert (row.registered_via, row.labels, row.max_active_runs) == ("registry", {"zone": "b"}, 3)
    assert row.registry_file.endswith(".json")


def test_long_offline_workers_are_purged():
    timing = TimingConfig()
    Worker.objects.create(id="old", registered_at=T0, last_heartbeat_at=T0 - timedelta(days=2))
    Worker.objects.create(id="recent", registered_at=T0, last_heartbeat_at=T0 - timedelta(hours=3))
    assert purge_offline(now=T0, timing=timing) == ["old"]
    assert list(Worker.objects.values_list("id", flat=True)) == ["recent"]


def test_the_scheduler_queues_due_schedules_once_and_never_catches_up(tmp_path: Path):
    config = config_for(tmp_path)
    dags_dir = Path(config.paths.dags_dir)
    dags_dir.mkdir(parents=True)
    (dags_dir / "nightly.yaml").write_text(
        "schedule: '0 2 * * *'\nsteps:\n  - name: a\n    command: 'true'\n"
    )
    (dags_dir / "broken.yaml").write_text("schedule: 'not cron'\nsteps: []\n")
    woken = []
    scheduler = CronScheduler(
        config, now=T0.replace(hour=1, minute=59), on_queued=lambda: woken.append(1)
    )
    assert scheduler.tick(now=T0.replace(hour=2, minute=0, second=1)) == 1
    assert scheduler.tick(now=T0.replace(hour=2, minute=0, second=30)) == 0
    # Down for three days: one run when it comes back, not three.
    assert scheduler.tick(now=T0.replace(hour=2, minute=1) + timedelta(days=3)) == 1
    assert DagRun.objects.filter(dag_name="nightly").count() == 2
    assert woken == [1, 1]


def test_offline_ids_of_a_credential_make_room_for_new_ones():
    fleet = Fleet(timing=TimingConfig(), started_at=T0, workers_per_credential=2)
    for wid in ("a", "b"):
        fleet.record_heartbeat(
            Identity(wid, "h", 1, {}, 1, credential="pool"), running=[], stopping=False, now=T0
        )
    with pytest.raises(FleetFull):
        fleet.record_poll(Identity("c", "h", 1, {}, 1, credential="pool"), now=T0)
    assert fleet.get("c") is None
    later = T0 + timedelta(seconds=TimingConfig().health_offline_after + 1)
    fleet.record_poll(Identity("c", "h", 1, {}, 1, credential="pool"), now=later)
    assert fleet.get("c") is not None
