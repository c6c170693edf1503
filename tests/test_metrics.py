"""`/metrics`: access, the values it reads from the database, and the deploy/prometheus files
(every metric an alert rule or dashboard panel names is served)."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.core.config import MetricsConfig, TimingConfig
from controlplane.lease import LEASE_SECONDS, hold_lease
from controlplane.models import DispatchDecision
from dags.models import Attempt, DagRun
from tests.roles import user_with_role
from workers.models import Worker
from workers.presence import Fleet, Identity, flush_fleet

pytestmark = pytest.mark.django_db

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
# PromQL words that look like metric names but are functions, keywords or label names.
PROMQL_WORDS = {"and", "or", "unless", "on", "by", "without", "sum", "rate", "increase", "lease",
                "histogram_quantile", "le", "selector", "status", "health", "state"}  # fmt: skip


def viewer() -> APIClient:
    user = user_with_role("viewer", "manager")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(client: APIClient) -> dict:
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text;q=0.5")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return samples(response.content.decode())


def test_metrics_need_a_token_or_session():
    response = APIClient().get("/metrics")
    assert response.status_code == 401
    assert "detail" in response.json()
    staff = user_with_role("ops", "manager")
    session = APIClient()
    session.force_login(staff)
    assert session.get("/metrics").status_code == 200


def test_public_metrics_need_no_token(settings):
    settings.DAGU = dataclasses.replace(settings.DAGU, metrics=MetricsConfig(public=True))
    assert APIClient().get("/metrics").status_code == 200


def _run(run_id: str, *, queued_at: datetime, **fields) -> DagRun:
    return DagRun.objects.create(
        id=run_id, dag_name="d", spec="", queued_at=queued_at,
        execution_mode=fields.pop("execution_mode", "distributed"), **fields,
    )  # fmt: skip


def test_metrics_read_the_fleet_queue_and_history_from_the_database():
    now = datetime.now(UTC)
    for wid, labels, seen, extra in [
        ("gpu-1", {"gpu": "true"}, now, {"max_active_runs": 2, "heartbeats": 40}),
        ("gpu-2", {"gpu": "true"}, now, {"draining": True, "heartbeats": 2}),
        ("cpu-1", {}, now - timedelta(seconds=10), {}),  # WARNING with default timing
        ("old-1", {}, now - timedelta(days=2), {"max_active_runs": 50}),  # OFFLINE
    ]:
        Worker.objects.create(id=wid, labels=labels, registered_at=now, last_heartbeat_at=seen,
                              **extra)  # fmt: skip
    claimed = _run("r1", queued_at=now - timedelta(seconds=30), status="running", worker_id="gpu-1")
    Attempt.objects.create(run=claimed, number=1, token="t1", mode="distributed",
                           worker_id="gpu-1", status="running",
                           created_at=claimed.queued_at + timedelta(seconds=2))  # fmt: skip
    _run("q-gpu-old", queued_at=now - timedelta(seconds=600), worker_selector={"gpu": "true"})
    _run("q-gpu-new", queued_at=now - timedelta(seconds=5), worker_selector={"gpu": "true"})
    _run("q-eu", queued_at=now - timedelta(seconds=60), worker_selector={"region": "eu", "a": "b"})
    _run("q-eu-2", queued_at=now - timedelta(seconds=1), worker_selector={"a": "b", "region": "eu"})
    _run("q-local", queued_at=now - timedelta(seconds=3), execution_mode="local")
    _run("done-1", queued_at=now, status="succeeded")
    _run("done-2", queued_at=now, status="failed")
    lost = _run("done-3", queued_at=now, status="failed")
    DispatchDecision.objects.create(run=lost, event="redispatched", mode="distributed",
                                    why="selector", decided_at=now)  # fmt: skip
    DispatchDecision.objects.create(run=lost, event="assigned", mode="distributed",
                                    why="selector", decided_at=now)  # fmt: skip

    m = scrape(viewer())

    def value(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert [value("dagu_workers", health=h) for h in ("healthy", "warning", "unhealthy", "offline")
            ] == [2, 1, 0, 1]  # fmt: skip
    # gpu-1 holds one of 2 slots; gpu-2 (draining) 10 and cpu-1 10 are free; old-1 is offline.
    assert value("dagu_worker_slots", state="busy") == 1
    assert value("dagu_worker_slots", state="free") == 21
    assert value("dagu_queue_depth", selector="gpu=true") == 2
    assert value("dagu_queue_depth", selector="a=b,region=eu") == 2  # key order folded
    assert value("dagu_queue_depth", selector="local") == 1
    assert value("dagu_queue_oldest_age_seconds", selector="gpu=true") >= 600
    assert 60 <= value("dagu_queue_oldest_age_seconds", selector="a=b,region=eu") < 600
    assert value("dagu_selector_workers", selector="gpu=true") == 1  # gpu-2 is draining
    assert value("dagu_selector_workers", selector="a=b,region=eu") == 0
    assert value("dagu_runs_finished_total", status="succeeded") == 1
    assert value("dagu_runs_finished_total", status="failed") == 2
    assert value("dagu_runs_finished_total", status="cancelled") == 0
    assert value("dagu_dispatch_latency_seconds_bucket", le="1.0") == 0
    assert value("dagu_dispatch_latency_seconds_bucket", le="2.5") == 1
    assert value("dagu_dispatch_latency_seconds_bucket", le="+Inf") == 1
    assert value("dagu_dispatch_latency_seconds_count") == 1
    assert value("dagu_dispatch_latency_seconds_sum") == pytest.approx(2.0)
    assert value("dagu_failovers_total") == 1
    assert value("dagu_heartbeats_total") == 42


def _metric_names(expr: str) -> set[str]:
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"|\[[^\]]*\]', "", expr)))
    return {w for w in words if w.startswith("dagu_")} | (words - PROMQL_WORDS - {"dagu_"})


def test_alert_rules_and_dashboard_use_only_served_metrics():
    Worker.objects.create(id="w", registered_at=datetime.now(UTC))
    hold_lease("coordinator-a", now=datetime.now(UTC))  # the lease series exist once one runs
    _run("q", queued_at=datetime.now(UTC), worker_selector={"gpu": "true"})  # per-selector series
    served = {name for name, _ in scrape(viewer())}
    rules = yaml.safe_load((PROMETHEUS / "dagu-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"DaguSelectorHasNoWorkers", "DaguQueuedRunTooOld", "DaguFailoversRising"} <= names
    dashboard = json.loads((PROMETHEUS / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for expr in exprs:
        used = {w for w in _metric_names(expr) if not w[0].isdigit()}
        assert used, expr
        assert used <= served, f"{expr}: {sorted(used - served)} not on /metrics"
    scrape_config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert scrape_config["rule_files"] == ["dagu-alerts.yml"]
    assert scrape_config["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_heartbeat_count_is_stored_and_survives_a_coordinator_restart():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    who = Identity("w1", "host-a", 42, {}, 4)
    fleet = Fleet(timing=TimingConfig(), started_at=t0)
    for _ in range(3):
        fleet.record_heartbeat(who, running=[], stopping=False, now=t0)
    flush_fleet(fleet, now=t0)
    assert Worker.objects.get(pk="w1").heartbeats == 3
    restarted = Fleet(timing=TimingConfig(), started_at=t0)
    restarted.load(Worker.objects.all())
    restarted.record_heartbeat(who, running=[], stopping=False, now=t0)
    flush_fleet(restarted, now=t0)
    assert Worker.objects.get(pk="w1").heartbeats == 4


def test_the_housekeeping_lease_holder_and_fencing_number_are_served():
    client = viewer()
    assert not [k for k in scrape(client) if k[0].startswith("dagu_coordinator_lease")]
    t0 = datetime.now(UTC)
    hold_lease("host-a:11:aaaa", now=t0)
    m = scrape(client)
    fencing = {k: v for k, v in m.items() if k[0] == "dagu_coordinator_lease_fencing"}
    assert fencing == {
        (
            "dagu_coordinator_lease_fencing",
            (("holder", "host-a:11:aaaa"), ("lease", "housekeeping")),
        ): 1
    }
    left = m[("dagu_coordinator_lease_expires_in_seconds", (("lease", "housekeeping"),))]
    assert 0 < left <= LEASE_SECONDS
    # Its holder falls silent; another coordinator takes over: a new holder and number.
    later = t0 + timedelta(seconds=LEASE_SECONDS + 1)
    hold_lease("host-b:22:bbbb", now=later)
    m = scrape(client)
    holders = {
        dict(labels)["holder"]: v
        for (name, labels), v in m.items()
        if name == "dagu_coordinator_lease_fencing"
    }
    assert holders == {"host-b:22:bbbb": 2}
