"""Hostile workers over raw gRPC: every coordinator method refuses callers without the right
credential, and a refused call changes nothing in the database or on disk (issue 10)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from django.core.management import call_command
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.coordinator import Coordinator
from controlplane.core.config import PeerConfig, resolve
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.rpc.v1 import coordinator_pb2_grpc
from controlplane.rpc.server import build_server
from dags.models import Attempt, DagRun, ExecutionMode, RunStatus
from tests.rpc_auth import bearer
from workers.credentials import ensure_bootstrap_credential, issue_credential, revoke
from workers.models import WorkerCredential

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SPEC = (
    "name: parent\nsteps:\n  - name: child\n    call: kid\n"
    "---\nname: kid\nsteps:\n  - command: echo\n"
)

pytestmark = pytest.mark.django_db(transaction=True)


def assigned_run(run_id: str, worker: str, token: str) -> DagRun:
    run = DagRun.objects.create(
        id=run_id, dag_name="parent", spec=SPEC, source="p.yaml", status=RunStatus.RUNNING,
        execution_mode=ExecutionMode.DISTRIBUTED, attempt=1, worker_id=worker, queued_at=T0,
    )  # fmt: skip
    Attempt.objects.create(
        run=run, number=1, token=token, mode=ExecutionMode.DISTRIBUTED, worker_id=worker,
        status="running", created_at=T0,
    )  # fmt: skip
    return run


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[int, dict[str, str], Path]]:
    config = resolve(env={"DAGU_HOME": str(tmp_path)})
    tokens = {
        "a": issue_credential("pool-a", labels={}, worker_id_pattern="wa*", now=T0),
        "b": issue_credential("pool-b", labels={}, worker_id_pattern="wb*", now=T0),
        "revoked": issue_credential("old", labels={}, worker_id_pattern="", now=T0),
    }
    revoke(["old"], now=T0)
    assigned_run("run-b", "wb1", "tok-b")
    server, port, _ = build_server(Coordinator(config), host="127.0.0.1", port=0, peer=PeerConfig())
    server.start()
    yield port, tokens, tmp_path
    server.stop(0)


def stub(port: int, token: str | None) -> coordinator_pb2_grpc.CoordinatorStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    if token is not None:
        channel = grpc.intercept_channel(channel, bearer(token))
    return coordinator_pb2_grpc.CoordinatorStub(channel)


def as_worker(worker_id: str) -> pb.WorkerInfo:
    return pb.WorkerInfo(worker_id=worker_id, host="h", pid=1, max_active_runs=1)


def calls(worker: str) -> dict[str, tuple[str, object]]:
    """One request per method, each acting on worker B's attempt or run."""
    event = pb.RunEvent(
        seq=1, dag_run_id="run-b", attempt_token="tok-b",
        run_finished=pb.RunFinished(status="succeeded", at_ms=1),
    )  # fmt: skip
    log = pb.RunEvent(
        seq=2, dag_run_id="run-b", attempt_token="tok-b",
        step_log=pb.StepLog(step="child", stream="stdout", data=b"LD_PRELOAD payload"),
    )  # fmt: skip
    return {
        "Poll": ("Poll", pb.PollRequest(worker=as_worker(worker), free_slots=1, wait_ms=0)),
        "Heartbeat": ("Heartbeat", pb.HeartbeatRequest(worker=as_worker(worker))),
        "Report": ("Report", pb.ReportRequest(worker_id=worker, events=[log, event])),
        "StartChild": (
            "StartChild",
            pb.StartChildRequest(
                worker_id=worker,
                parent_dag_run_id="run-b",
                parent_attempt_token="",
                step="child",
                dag_name="kid",
            ),
        ),
        "GetRunStatus": (
            "GetRunStatus",
            pb.GetRunStatusRequest(dag_run_id="run-b", worker_id=worker),
        ),
        "CancelRun": ("CancelRun", pb.CancelRunRequest(dag_run_id="run-b", worker_id=worker)),
        "ListWorkers": ("ListWorkers", pb.ListWorkersRequest()),
        "Wake": ("Wake", pb.WakeRequest()),
    }


def snapshot(data_dir: Path) -> tuple[object, ...]:
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())
    runs = list(DagRun.objects.values_list("id", "status", "cancel_requested", "outputs"))
    attempts = list(Attempt.objects.values_list("token", "status", "last_event_seq"))
    return files, runs, attempts, DagRun.objects.count()


def refused(call: object, request: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)  # type: ignore[operator]
    return caught.value.code()


@pytest.mark.parametrize("method", list(calls("x")))
def test_every_method_refuses_a_caller_without_a_credential(coordinator, method):
    port, tokens, data_dir = coordinator
    before = snapshot(data_dir)
    name, request = calls("wb1")[method]
    for token in (None, "dwt_forged", tokens["revoked"]):
        assert refused(getattr(stub(port, token), name), request) == grpc.StatusCode.UNAUTHENTICATED
    assert snapshot(data_dir) == before


@pytest.mark.parametrize(
    "method", ["Poll", "Heartbeat", "Report", "StartChild", "GetRunStatus", "CancelRun"]
)
def test_worker_a_cannot_act_for_worker_b(coordinator, method):
    port, tokens, data_dir = coordinator
    before = snapshot(data_dir)
    client = stub(port, tokens["a"])
    # Under B's id (outside A's id pattern), and under A's own id on B's attempt (Poll and
    # Heartbeat under A's own id are A's own business).
    for worker in ("wb1",) if method in ("Poll", "Heartbeat") else ("wb1", "wa1"):
        name, request = calls(worker)[method]
        assert refused(getattr(client, name), request) == grpc.StatusCode.PERMISSION_DENIED
    assert snapshot(data_dir) == before


def test_start_child_needs_the_parent_token_and_a_call_step_of_its_spec(coordinator):
    port, tokens, data_dir = coordinator
    before = snapshot(data_dir)
    client = stub(port, tokens["b"])
    for token, step in (("", "child"), ("tok-b", "no-such-step"), ("tok-x", "child")):
        request = pb.StartChildRequest(
            worker_id="wb1", parent_dag_run_id="run-b", parent_attempt_token=token, step=step,
            dag_name="kid",
        )  # fmt: skip
        assert refused(client.StartChild, request) == grpc.StatusCode.PERMISSION_DENIED
    assert snapshot(data_dir) == before
    # The owner with the current token gets the child its spec names, whatever it asks for.
    good = pb.StartChildRequest(
        worker_id="wb1", parent_dag_run_id="run-b", parent_attempt_token="tok-b", step="child",
        dag_name="../../etc/passwd", worker_selector={"gpu": "true"},
    )  # fmt: skip
    child = DagRun.objects.get(pk=client.StartChild(good, timeout=10).dag_run_id)
    assert (child.dag_name, child.parent_id) == ("kid", "run-b")
    status = client.GetRunStatus(pb.GetRunStatusRequest(dag_run_id=child.id, worker_id="wb1"))
    assert status.found


def test_foreign_run_ids_and_bad_reports_are_refused(coordinator):
    port, tokens, data_dir = coordinator
    assigned_run("run-a", "wa1", "tok-a")
    before = snapshot(data_dir)
    client = stub(port, tokens["b"])
    for name, request in (
        ("GetRunStatus", pb.GetRunStatusRequest(dag_run_id="run-a", worker_id="wb1")),
        ("CancelRun", pb.CancelRunRequest(dag_run_id="run-a", worker_id="wb1")),
        ("GetRunStatus", pb.GetRunStatusRequest(dag_run_id="nope", worker_id="wb1")),
    ):
        assert refused(getattr(client, name), request) == grpc.StatusCode.PERMISSION_DENIED
    unknown = pb.RunEvent(
        seq=1, dag_run_id="run-b", attempt_token="tok-b",
        run_finished=pb.RunFinished(status="pwned", at_ms=1),
    )  # fmt: skip
    started = pb.RunEvent(
        seq=5, dag_run_id="run-b", attempt_token="tok-b", attempt_started=pb.AttemptStarted(at_ms=1)
    )
    for events in ([unknown], [started, started]):
        request = pb.ReportRequest(worker_id="wb1", events=events)
        assert refused(client.Report, request) == grpc.StatusCode.PERMISSION_DENIED
    assert snapshot(data_dir) == before


def test_list_workers_hands_out_no_attempt_tokens(coordinator):
    port, tokens, _ = coordinator
    client = stub(port, tokens["b"])
    running = [pb.RunningTask(dag_run_id="run-b", attempt_token="tok-b", started_at_ms=1)]
    client.Heartbeat(pb.HeartbeatRequest(worker=as_worker("wb1"), running=running), timeout=10)
    listed = client.ListWorkers(pb.ListWorkersRequest(), timeout=10)
    [worker] = listed.workers
    assert [(r.dag_run_id, r.attempt_token) for r in worker.running] == [("run-b", "")]


def test_label_attestation_with_two_credentials(coordinator):
    port, _, _ = coordinator
    eu = issue_credential("eu-pool", labels={"region": "eu-west-1"}, worker_id_pattern="", now=T0)
    gpu = issue_credential("gpu-pool", labels={"gpu": "*"}, worker_id_pattern="", now=T0)
    info = pb.WorkerInfo(worker_id="w1", host="h", pid=1, labels={"gpu": "true"})
    with pytest.raises(grpc.RpcError) as caught:
        stub(port, eu).Heartbeat(pb.HeartbeatRequest(worker=info), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == (
        'refused label gpu=true: credential "eu-pool" allows region=eu-west-1'
    )
    stub(port, gpu).Heartbeat(pb.HeartbeatRequest(worker=info), timeout=10)
    eu_info = pb.WorkerInfo(worker_id="w2", host="h", pid=1, labels={"region": "eu-west-1"})
    stub(port, eu).Heartbeat(pb.HeartbeatRequest(worker=eu_info), timeout=10)


def test_health_stays_open(coordinator):
    port, _, _ = coordinator
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_bootstrap_token_is_0600_and_reused_across_restarts(tmp_path):
    path = ensure_bootstrap_credential(tmp_path, now=T0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = path.read_text()
    assert ensure_bootstrap_credential(tmp_path, now=T0).read_text() == token
    revoke([WorkerCredential.objects.get().name], now=T0)
    assert ensure_bootstrap_credential(tmp_path, now=T0).read_text() != token


def test_create_worker_token_prints_the_token_last_and_stores_only_its_hash(capsys):
    call_command("create_worker_token", "eu-pool", "--labels", "region=eu-west-1,gpu=*")
    token = capsys.readouterr().out.strip().splitlines()[-1]
    credential = WorkerCredential.objects.get(name="eu-pool")
    assert token.startswith("dwt_") and token not in credential.token_hash
    assert credential.allowed_labels == {"region": "eu-west-1", "gpu": "*"}


def test_a_heartbeat_flood_from_new_ids_stops_at_the_credential_cap(tmp_path):
    config = resolve(env={"DAGU_HOME": str(tmp_path), "DAGU_LIMITS_WORKERS_PER_CREDENTIAL": "3"})
    flood = issue_credential("flood", labels={}, worker_id_pattern="", now=T0)
    other = issue_credential("other", labels={}, worker_id_pattern="", now=T0)
    coordinator = Coordinator(config)
    server, port, _ = build_server(coordinator, host="127.0.0.1", port=0, peer=PeerConfig())
    server.start()
    try:
        client = stub(port, flood)
        for i in range(3):
            client.Heartbeat(pb.HeartbeatRequest(worker=as_worker(f"w{i}")), timeout=10)
        for i in range(3, 50):
            with pytest.raises(grpc.RpcError) as caught:
                client.Heartbeat(pb.HeartbeatRequest(worker=as_worker(f"w{i}")), timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.details() == (
            'credential "flood" already has 3 live workers (limits.workers_per_credential); '
            "stop some or use another credential"
        )
        assert refused(client.Poll, pb.PollRequest(worker=as_worker("w99"), wait_ms=0)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # Known ids keep heartbeating; another credential has its own room.
        client.Heartbeat(pb.HeartbeatRequest(worker=as_worker("w0")), timeout=10)
        stub(port, other).Heartbeat(pb.HeartbeatRequest(worker=as_worker("x1")), timeout=10)
        assert sorted(s.id for s in coordinator.fleet.states()) == ["w0", "w1", "w2", "x1"]
    finally:
        server.stop(0)


def test_a_loose_bootstrap_token_file_is_made_0600_on_start(tmp_path, caplog):
    path = ensure_bootstrap_credential(tmp_path, now=T0)
    token = path.read_text()
    path.chmod(0o644)
    assert ensure_bootstrap_credential(tmp_path, now=T0).read_text() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert f"{path} was mode 0644; set it to 0600" in caplog.text
