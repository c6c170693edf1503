"""wake_coordinator keeps its channel between calls and survives a restarted coordinator;
wake_coordinator_soon sends from a thread of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from controlplane.core.config import Config, resolve
from controlplane.core.rpc import client
from controlplane.core.rpc.client import (
    close_wake_clients,
    wake_coordinator,
    wake_coordinator_soon,
)
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.rpc.v1 import coordinator_pb2_grpc


class CountingCoordinator(coordinator_pb2_grpc.CoordinatorServicer):
    """Answers Wake only, counting the calls."""

    def __init__(self) -> None:
        self.wakes = 0

    def Wake(self, request: pb.WakeRequest, context: grpc.ServicerContext) -> pb.WakeResponse:
        self.wakes += 1
        return pb.WakeResponse()


def serve(servicer: CountingCoordinator, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def config_for(home: Path, port: int) -> Config:
    return resolve(env={"DAGU_HOME": str(home), "DAGU_WORKER_COORDINATORS": f"127.0.0.1:{port}"})


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    close_wake_clients()
    yield
    close_wake_clients()


def test_wake_coordinator_reuses_one_channel(tmp_path: Path):
    first = CountingCoordinator()
    server, port = serve(first)
    try:
        config = config_for(tmp_path, port)
        assert wake_coordinator(config)
        kept = list(client._WAKE_CLIENTS.values())
        assert wake_coordinator(config)
        assert list(client._WAKE_CLIENTS.values()) == kept and len(kept) == 1
        assert first.wakes == 2
    finally:
        server.stop(0)


def test_a_kept_channel_finds_a_restarted_coordinator_and_none_is_false(tmp_path: Path):
    first = CountingCoordinator()
    server, port = serve(first)
    config = config_for(tmp_path, port)
    assert wake_coordinator(config)
    server.stop(0).wait()
    second = CountingCoordinator()
    restarted, _ = serve(second, port)
    try:
        assert wake_coordinator(config)  # the kept channel led to the old process
        assert second.wakes == 1
    finally:
        restarted.stop(0).wait()
    assert not wake_coordinator(config)  # nobody there: False, no exception


def test_an_unexpected_error_while_waking_is_logged_not_raised(tmp_path: Path, monkeypatch, caplog):
    # The API wakes after committing a run: raising would answer 500 for a created run.
    def broken(config: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(client, "_wake_client", broken)
    assert wake_coordinator(resolve(env={"DAGU_HOME": str(tmp_path)})) is False
    assert "waking the coordinator failed" in caplog.text


class SlowCoordinator(CountingCoordinator):
    """Answers Wake only once let go, so wake-ups pile up while one is on its way."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived, self.go = threading.Event(), threading.Event()

    def Wake(self, request: pb.WakeRequest, context: grpc.ServicerContext) -> pb.WakeResponse:
        self.arrived.set()
        self.go.wait(timeout=10)
        return super().Wake(request, context)


def test_wake_soon_does_not_wait_and_sends_what_piled_up_as_one(tmp_path: Path):
    slow = SlowCoordinator()
    server, port = serve(slow)
    try:
        config = config_for(tmp_path, port)
        wake_coordinator_soon(config)  # returns while the coordinator holds its reply
        assert slow.arrived.wait(timeout=10)
        for _ in range(5):
            wake_coordinator_soon(config)
        slow.go.set()
        deadline = time.monotonic() + 10
        while slow.wakes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert slow.wakes == 2  # the first, then the five asked for meanwhile as one
    finally:
        server.stop(0)
