"""Heartbeats on one open HeartbeatStream (issue 11, fleets), against a real gRPC server on
loopback: they keep a worker HEALTHY, a revoked token ends the stream, and a client falls
back to unary Heartbeat calls against a coordinator that does not serve the stream."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.coordinator import Coordinator
from controlplane.core.config import PeerConfig, resolve
from controlplane.core.health import HEALTHY
from controlplane.core.rpc.client import CoordinatorClient, CoordinatorRefused
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.rpc.v1 import coordinator_pb2_grpc
from controlplane.rpc import auth
from controlplane.rpc.server import SERVICE_NAME, build_server
from dags.models import Attempt, DagRun, ExecutionMode, RunStatus
from workers.credentials import issue_credential, revoke

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BEATS = 7  # one a second: past the 5 s after which a silent worker is WARNING

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[int, str]]:
    config = resolve(env={"DAGU_HOME": str(tmp_path)})
    token = issue_credential("pool", labels={}, worker_id_pattern="w*", now=T0)
    server, port, _ = build_server(Coordinator(config), host="127.0.0.1", port=0, peer=PeerConfig())
    server.start()
    yield port, token
    server.stop(0)


def client_for(port: int, token: str) -> CoordinatorClient:
    return CoordinatorClient(
        addresses=lambda: [f"127.0.0.1:{port}"],
        peer=PeerConfig(),
        token=lambda: (token, "--worker.token"),
    )


def beat(worker_id: str, *running: pb.RunningTask) -> pb.HeartbeatRequest:
    info = pb.WorkerInfo(worker_id=worker_id, host="h", pid=1, max_active_runs=1)
    return pb.HeartbeatRequest(worker=info, running=running)


def cancelled_run(run_id: str, worker: str, token: str) -> None:
    run = DagRun.objects.create(
        id=run_id, dag_name="d", spec="name: d\nsteps:\n  - command: 'true'\n", source="d.yaml",
        status=RunStatus.RUNNING, execution_mode=ExecutionMode.DISTRIBUTED, attempt=1,
        worker_id=worker, queued_at=T0, cancel_requested=True,
    )  # fmt: skip
    Attempt.objects.create(
        run=run, number=1, token=token, mode=ExecutionMode.DISTRIBUTED, worker_id=worker,
        status="running", created_at=T0,
    )  # fmt: skip


def health_of(client: CoordinatorClient, worker_id: str) -> str:
    listed = client.call("ListWorkers", pb.ListWorkersRequest(), timeout=10).workers
    return next(w.health_status for w in listed if w.info.worker_id == worker_id)


def test_heartbeats_on_one_stream_keep_a_worker_healthy(coordinator):
    port, token = coordinator
    client = client_for(port, token)
    try:
        healths = []
        for _ in range(BEATS):
            client.heartbeat(beat("w1"), timeout=10)
            healths.append(health_of(client, "w1"))
            time.sleep(1.0)
        assert healths == [HEALTHY] * BEATS
        stream = client._stream
        # A heartbeat with a running attempt is answered from the database (in the heartbeat
        # pool) on the same stream: this one's run was cancelled meanwhile.
        cancelled_run("run-1", "w1", "tok-1")
        held = pb.RunningTask(dag_run_id="run-1", attempt_token="tok-1", started_at_ms=1)
        reply = client.heartbeat(beat("w1", held), timeout=10)
        assert list(reply.cancel_attempt_tokens) == ["tok-1"]
        assert client._stream is stream is not None  # one stream all along
    finally:
        client.close()


def test_a_revoked_token_ends_the_stream_unauthenticated(coordinator, monkeypatch):
    port, token = coordinator
    client = client_for(port, token)
    # A raw stream too, which never closes by itself: it must be ended by the coordinator.
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    sent: queue.SimpleQueue[pb.HeartbeatRequest] = queue.SimpleQueue()
    raw = coordinator_pb2_grpc.CoordinatorStub(channel).HeartbeatStream(
        iter(sent.get, None), metadata=[("authorization", f"Bearer {token}")]
    )
    try:
        sent.put(beat("w2"))
        next(raw)
        client.heartbeat(beat("w1"), timeout=10)
        revoke(["pool"], now=T0)
        # In this process: the revocation is seen at once rather than within the 5 s a
        # principal is reused for (tests/test_principal_reuse.py pins that window down).
        monkeypatch.setattr(auth, "PRINCIPAL_REUSE_SECONDS", 0.0)
        with pytest.raises(CoordinatorRefused, match="revoked token"):
            client.heartbeat(beat("w1"), timeout=10)
        assert client._stream is None
        sent.put(beat("w2"))
        with pytest.raises(grpc.RpcError) as caught:
            next(raw)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        raw.cancel()
        client.close()
        channel.close()


def test_a_stream_without_a_token_is_refused(coordinator):
    port, _ = coordinator
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = coordinator_pb2_grpc.CoordinatorStub(channel).HeartbeatStream(iter([beat("w1")]))
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def unary_only() -> Iterator[tuple[int, list[str]]]:
    """A coordinator as before the stream: Heartbeat alone (the rest is UNIMPLEMENTED)."""
    called: list[str] = []

    def heartbeat(request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        called.append(request.worker.worker_id)
        return pb.HeartbeatResponse(draining=True)

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Heartbeat": grpc.unary_unary_rpc_method_handler(
                heartbeat,
                request_deserializer=pb.HeartbeatRequest.FromString,
                response_serializer=pb.HeartbeatResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, called
    server.stop(0)


def test_a_client_falls_back_to_unary_heartbeats_without_the_stream(unary_only):
    port, called = unary_only
    client = client_for(port, "any")
    try:
        for _ in range(3):
            assert client.heartbeat(beat("w1"), timeout=10).draining
        assert called == ["w1"] * 3
        assert client._stream is None  # not tried again on this coordinator
    finally:
        client.close()
