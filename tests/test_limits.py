"""Size limits at every edge: labels and worker identities, step logs, large runs, bodies."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.coordinator import Coordinator
from controlplane.core import registry
from controlplane.core.agent import OUTBOX_DROP_MARKER, Outbox
from controlplane.core.config import ConfigError, PeerConfig, TimingConfig, resolve
from controlplane.core.events import (
    STEP_FINISHED,
    STEP_LOG,
    STEP_STARTED,
    EventReporter,
    truncation_marker,
)
from controlplane.core.execution import RunContext, execute_run
from controlplane.core.labels import (
    MAX_LABEL_KEY_NAME,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    LabelError,
    check_labels,
    parse_labels,
)
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.rpc.v1 import coordinator_pb2_grpc
from controlplane.core.spec import Dag, DagFile, Step, parse_dag_file
from controlplane.rpc.server import build_server
from dags import reports
from dags.local import execute_attempt
from dags.models import Attempt, DagRun
from dags.reports import read_step_log
from dags.runs import create_run, start_attempt
from tests.roles import user_with_role
from tests.rpc_auth import bearer
from tests.test_registry import valid_worker_json
from workers.credentials import issue_credential
from workers.models import Worker
from workers.presence import Fleet, Identity, flush_fleet

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
LONG = "x" * 300


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"gpu": LONG}, 'label "gpu": value is 300 characters long (at most 63)'),
        ({LONG: "1"}, f'label key "{"x" * 40}..." is 300 characters long (at most 63'),
        ({"p" * 129 + "/k": "1"}, 'the prefix before "/" is 129 characters long (at most 128)'),
        ({f"k{i}": "v" for i in range(65)}, "too many labels: 65 (at most 64)"),
    ],
)
def test_labels_over_the_limits_are_refused_in_one_line(labels, message):
    with pytest.raises(LabelError) as excinfo:
        check_labels(labels)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value) and LONG not in str(excinfo.value)


def test_labels_at_the_limits_are_accepted_in_both_forms():
    labels = {f"k{i}": "v" * MAX_LABEL_VALUE for i in range(MAX_LABELS - 1)}
    labels["example.com/" + "n" * MAX_LABEL_KEY_NAME] = ""
    assert parse_labels(labels) == labels
    assert parse_labels(",".join(f"{k}={v}" for k, v in labels.items())) == labels


@pytest.mark.parametrize("layer", ["file", "env", "flag"])
@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("worker.labels", f"gpu={LONG}", 'label "gpu": value is 300 characters long'),
        ("worker.id", "w" * 129, 'worker id "' + "w" * 40 + '..." is 129 characters long'),
    ],
)
def test_config_refuses_oversized_labels_and_worker_ids(layer, key, value, problem, tmp_path):
    kwargs: dict[str, Any] = {"env": {}}
    section, _, name = key.partition(".")
    if layer == "file":
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({section: {name: value}}))
        kwargs["config_file"] = path
    elif layer == "env":
        kwargs["env"] = {"DAGU_WORKER_LABELS" if name == "labels" else "DAGU_WORKER_ID": value}
    else:
        kwargs["flags"] = {key: value}
    with pytest.raises(ConfigError) as excinfo:
        resolve(**kwargs)
    assert str(excinfo.value).startswith(f"{key} (from ")
    assert problem in str(excinfo.value)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"labels": {"gpu": LONG}}, "key 'labels': label \"gpu\": value is 300 characters long"),
        ({"id": "w" * 129}, "key 'id': worker id"),
        ({"host": "h" * 254}, "key 'host': host"),
    ],
)
def test_registry_files_with_oversized_identities_are_skipped(tmp_path, overrides, reason):
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "bad.json").write_text(json.dumps(valid_worker_json(**overrides)))
    result = registry.scan(tmp_path, "worker")
    assert result.entries == []
    [skipped] = result.skipped
    assert skipped.reason.startswith(reason)


@pytest.mark.django_db(transaction=True)
def test_grpc_heartbeat_and_poll_refuse_oversized_identities(tmp_path: Path):
    core = Coordinator(resolve(env={"DAGU_HOME": str(tmp_path)}))
    token = issue_credential("limits", labels={}, worker_id_pattern="", now=T0)
    server, port, _ = build_server(core, host="127.0.0.1", port=0, peer=PeerConfig())
    server.start()
    try:
        with grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{port}"), bearer(token)
        ) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            bad = pb.WorkerInfo(worker_id="w1", host="h", pid=1, labels={"gpu": LONG})
            with pytest.raises(grpc.RpcError) as hb:
                stub.Heartbeat(pb.HeartbeatRequest(worker=bad), timeout=10)
            with pytest.raises(grpc.RpcError) as poll:
                stub.Poll(pb.PollRequest(worker=bad, free_slots=1, wait_ms=0), timeout=10)
            huge_id = pb.WorkerInfo(worker_id="w" * 5000, host="h", pid=1)
            with pytest.raises(grpc.RpcError) as long_id:
                stub.Heartbeat(pb.HeartbeatRequest(worker=huge_id), timeout=10)
            good = pb.WorkerInfo(worker_id="w2", host="h", pid=1, max_active_runs=1)
            stub.Heartbeat(pb.HeartbeatRequest(worker=good), timeout=10)
    finally:
        server.stop(0)
    for call in (hb, poll):
        assert call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert call.value.details() == (
            "worker 'w1': label \"gpu\": value is 300 characters long (at most 63)"
        )
    assert long_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is 5000 characters long" in long_id.value.details()
    assert [s.id for s in core.fleet.states()] == ["w2"]


@pytest.mark.django_db
def test_one_row_the_database_refuses_does_not_freeze_the_other_workers(caplog):
    fleet = Fleet(timing=TimingConfig(), started_at=T0)
    for wid in ("a", "c"):
        fleet.record_heartbeat(
            Identity(wid, "h", 1, {"zone": "x"}, 2), running=[], stopping=False, now=T0
        )
    # Past every edge's checks (say, from an older coordinator's rows): a pid no integer
    # column holds, and a 300-character label value that PostgreSQL refuses.
    fleet.record_heartbeat(
        Identity("b", "h", 2**70, {"zone": LONG}, 2), running=[], stopping=False, now=T0
    )
    assert flush_fleet(fleet, now=T0) == 2
    assert sorted(Worker.objects.values_list("id", flat=True)) == ["a", "c"]
    assert "cannot store worker b" in caplog.text
    # Good rows keep flowing on the next flushes; the bad one is retried, not lost silently.
    later = T0 + timedelta(seconds=1)
    fleet.record_heartbeat(Identity("a", "h", 1, {}, 2), running=[], stopping=False, now=later)
    assert flush_fleet(fleet, now=later) == 1
    assert Worker.objects.get(pk="a").last_heartbeat_at == later
    assert {s.id for s in fleet.take_dirty()} == {"b"}


# --------------------------------------------------------------------------- step logs


def test_a_step_log_stops_at_the_cap_with_a_visible_marker():
    events = []
    reporter = EventReporter(events.append, run_id="r", token="t", max_step_log_bytes=100)
    for _ in range(5):
        reporter.step_log("a", "stdout", b"y" * 30)
    reporter.step_log("b", "stdout", b"z" * 10)  # the cap is per step
    kept = b"".join(e.data for e in events if e.step == "a")
    assert kept == b"y" * 100 + truncation_marker(100)
    assert b"logs.max_step_bytes" in truncation_marker(100)
    assert [e.offset for e in events if e.step == "a"] == [0, 30, 60, 90]
    assert [e.data for e in events if e.step == "b"] == [b"z" * 10]


def test_a_chunk_ending_exactly_at_the_cap_puts_the_marker_on_the_next():
    events = []
    reporter = EventReporter(events.append, run_id="r", token="t", max_step_log_bytes=10)
    reporter.step_log("a", "stdout", b"x" * 10)
    reporter.step_log("a", "stdout", b"more")
    reporter.step_log("a", "stdout", b"more")
    assert [e.data for e in events] == [b"x" * 10, truncation_marker(10)]


def test_the_outbox_writes_a_marker_where_it_dropped_log_chunks():
    box = Outbox(max_events=2)
    reporter = EventReporter(box.put, run_id="r", token="t")
    reporter.attempt_started(at=T0)
    reporter.step_log("a", "stdout", b"kept\n")
    for _ in range(5):
        reporter.step_log("a", "stdout", b"lost\n")
    reporter.step_finished("a", status="succeeded", exit_code=0, at=T0, output=None, error="")
    events = box.batch()
    logs = [e for e in events if e.kind == STEP_LOG]
    assert [e.data for e in logs] == [b"kept\n", OUTBOX_DROP_MARKER]
    assert logs[1].offset == 5  # where the dropped output began
    assert events[-1].kind == STEP_FINISHED  # state events are never dropped
    assert box.dropped_log_bytes == 25


@pytest.mark.django_db(transaction=True)
def test_local_step_logs_are_capped_end_to_end(tmp_path: Path):
    config = resolve(env={"DAGU_HOME": str(tmp_path), "DAGU_LOGS_MAX_STEP_BYTES": "1000"})
    assert config.logs.max_step_bytes == 1000
    run = run_locally(config, "steps:\n  - name: loud\n    command: yes | head -c 200000\n")
    assert run.status == "succeeded"
    step = run.steps.get()
    log = (Path(config.paths.log_dir) / step.log_path).read_bytes()
    assert log == b"y\n" * 500 + truncation_marker(1000)
    assert "log truncated" in read_step_log(Path(config.paths.log_dir), step)


# --------------------------------------------------------------------------- local reports


@pytest.mark.django_db(transaction=True)
def test_local_reports_are_batched_and_log_files_written_outside_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    config = resolve(env={"DAGU_HOME": str(tmp_path)})
    batches: list[int] = []
    real_apply = reports.apply_events

    def counting_apply(events, *, log_dir):
        events = list(events)
        batches.append(len(events))
        return real_apply(events, log_dir=log_dir)

    in_transaction: list[bool] = []
    real_append = reports._append_log

    def watching_append(*args):
        in_transaction.append(connection.in_atomic_block)
        return real_append(*args)

    monkeypatch.setattr("dags.local.apply_events", counting_apply)
    monkeypatch.setattr("dags.reports._append_log", watching_append)
    # A failing first step with one log chunk, then 300 steps reported as skipped: 305 events.
    lines = "".join(f"  - name: s{i}\n    command: echo {i}\n" for i in range(1, 301))
    run = run_locally(config, "steps:\n  - name: s0\n    command: echo out; exit 1\n" + lines)
    assert run.status == "failed"
    assert run.steps.filter(status="skipped").count() == 300
    assert sum(batches) == 305
    # A step that ran is stored before the next starts; the rest goes in large batches.
    assert len(batches) <= 6
    assert in_transaction and not any(in_transaction)
    assert not [t for t in threading.enumerate() if t.name.startswith("reports-")]


def run_locally(config, text: str) -> DagRun:
    run = create_run(
        parse_dag_file(text, source="x.yaml", default_name="x"),
        now=datetime.now(UTC),
        default_mode="local",
    )
    attempt = start_attempt(run, now=datetime.now(UTC), mode="local", worker_id="local")
    assert attempt is not None
    execute_attempt(run, attempt, config, cancel=threading.Event(), wake=lambda: None)
    run.refresh_from_db()
    return run


# --------------------------------------------------------------------------- API bodies


@pytest.mark.django_db
def test_api_bodies_over_the_limit_get_a_json_413(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    user = user_with_role("api-user", "manager")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    response = client.post("/api/v2/dag-runs", {"spec": "steps: []\n" + "#" * 5000}, format="json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"].endswith("the limit is 1000 bytes")


# --------------------------------------------------------------------------- large runs


def report_run(run: DagRun, attempt: Attempt, dag: Dag, *, cancel_once_started: bool) -> list:
    """What an executor reports for `run`, cancelled when a step starts if asked to."""
    events: list = []
    cancel = threading.Event()

    def sink(event) -> None:
        events.append(event)
        if cancel_once_started and event.kind == STEP_STARTED:
            cancel.set()

    reporter = EventReporter(sink, run_id=run.id, token=attempt.token)
    reporter.attempt_started(at=T0)
    context = RunContext(run.id, run.id, "", "local", {})
    outcome = execute_run(dag, context=context, reporter=reporter, launcher=None, cancel=cancel)
    reporter.run_finished(outcome, at=T0)
    return events


def start_run(dag: Dag) -> tuple[DagRun, Attempt]:
    run = create_run(DagFile(source="x.yaml", text="", dags=(dag,)), now=T0, default_mode="local")
    attempt = start_attempt(run, now=T0, mode="local", worker_id="local")
    assert attempt is not None
    return run, attempt


@pytest.mark.django_db
def test_cancelling_a_30000_step_run_writes_the_unstarted_steps_in_one_statement(
    tmp_path: Path,
):
    first = Step(name="s0", command="sleep 300")
    dag = Dag(
        name="big", steps=(first, *(Step(name=f"s{i}", command="true") for i in range(1, 30000)))
    )
    run, attempt = start_run(dag)
    events = report_run(run, attempt, dag, cancel_once_started=True)
    assert len(events) < 10  # not one report per unstarted step
    with CaptureQueriesContext(connection) as queries:
        reports.apply_events(events, log_dir=tmp_path)
    step_updates = [q for q in queries if q["sql"].startswith('UPDATE "dags_steprun"')]
    # s0 (its start and finish folded into one UPDATE), then every other step at once
    assert len(step_updates) == 2
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert run.steps.filter(status="cancelled", error="cancelled").count() == 30000


@pytest.mark.django_db
def test_a_dag_timeout_fails_the_run_and_cancels_its_unstarted_steps(tmp_path: Path):
    dag = Dag(
        name="t", timeout_sec=0.5, steps=(Step("a", command="sleep 300"), Step("b", command="true"))
    )
    run, attempt = start_run(dag)
    reports.apply_events(report_run(run, attempt, dag, cancel_once_started=False), log_dir=tmp_path)
    run.refresh_from_db()
    assert (run.status, run.error) == ("failed", "DAG timed out after 0.5 s")
    b = run.steps.get(name="b")
    assert (b.status, b.error) == ("cancelled", "DAG timed out after 0.5 s")
