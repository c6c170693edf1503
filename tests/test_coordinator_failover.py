"""A worker's move between coordinators (CoordinatorClient failover), with fake channels.

No network and no timing: each fake address answers or fails as the test says, through the
generated stub, so these pin down which coordinator a worker uses after which failures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.core import registry
from controlplane.core.agent import ActiveRun, WorkerAgent
from controlplane.core.config import PeerConfig, resolve
from controlplane.core.events import RUN_FINISHED, STEP_LOG, Event
from controlplane.core.rpc.client import (
    MOVE_AFTER_FAILURES,
    CoordinatorClient,
    CoordinatorRefused,
    CoordinatorUnavailable,
    address_source,
    live_source,
    next_address,
)
from controlplane.core.rpc.v1 import coordinator_pb2 as pb

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


Handler = Callable[[str, Any], Any]


class FakeChannel:
    """Enough of grpc.Channel for the generated stub: every call goes to `handler`."""

    def __init__(self, address: str, handler: Handler) -> None:
        self.address, self.handler = address, handler
        self.closed = False
        self.watchers: list[Callable[[grpc.ChannelConnectivity], None]] = []

    def unary_unary(self, path: str, *args: object, **kwargs: object) -> Callable[..., Any]:
        method = path.rsplit("/", 1)[1]

        def invoke(request: Any, *, timeout: float, metadata: object = None) -> Any:
            if self.closed:  # what grpc raises for a new call on a closed channel
                raise ValueError("Cannot invoke RPC on closed channel!")
            return self.handler(method, request)

        return invoke

    def stream_stream(self, path: str, *args: object, **kwargs: object) -> Callable[..., Any]:
        method = path.rsplit("/", 1)[1]

        def invoke(requests: Iterator[Any], *, metadata: object = None) -> FakeStream:
            if self.closed:
                raise ValueError("Cannot invoke RPC: Channel closed!")
            return FakeStream(self, method, requests)

        return invoke

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self.watchers.append(callback)

    def close(self) -> None:
        self.closed = True


class FakeStream:
    """A bidirectional stream on a FakeChannel: each request is answered by its handler."""

    def __init__(self, channel: FakeChannel, method: str, requests: Iterator[Any]) -> None:
        self.channel, self.method, self.requests = channel, method, requests

    def __iter__(self) -> Iterator[Any]:
        for request in self.requests:
            if self.channel.closed:
                raise FakeRpcError(grpc.StatusCode.CANCELLED, "Channel closed!")
            yield self.channel.handler(self.method, request)

    def cancel(self) -> None:
        pass  # the client ends its requests as well, which ends the iteration


class Coordinators:
    """Fake coordinators by address: `down` ones fail with `code`, the others answer."""

    def __init__(self) -> None:
        self.down: dict[str, grpc.StatusCode] = {}
        self.calls: list[tuple[str, str, Any]] = []  # (address, method, request)
        self.replies: dict[str, Any] = {}
        self.channels: list[FakeChannel] = []
        self.silent: dict[str, threading.Event] = {}  # these answer once their event is set

    def handler(self, address: str) -> Handler:
        def answer(method: str, request: Any) -> Any:
            self.calls.append((address, method, request))
            if address in self.silent:
                self.silent[address].wait()
            if address in self.down:
                raise FakeRpcError(self.down[address], "Socket closed")
            return self.replies.get(method) or _empty_reply(method)

        return answer

    def addresses_called(self) -> list[str]:
        return [address for address, _, _ in self.calls]


def _empty_reply(method: str) -> Any:
    return {
        "Heartbeat": pb.HeartbeatResponse(),
        "HeartbeatStream": pb.HeartbeatResponse(),
        "Poll": pb.PollResponse(),
        "Report": pb.ReportResponse(),
        "Wake": pb.WakeResponse(),
    }[method]


class FakeClient(CoordinatorClient):
    def __init__(self, fleet: Coordinators, addresses: list[str], **kwargs: Any) -> None:
        super().__init__(addresses=lambda: list(addresses), peer=PeerConfig(), **kwargs)
        self.fleet = fleet

    def _open_channel(self, address: str) -> grpc.Channel:
        channel = FakeChannel(address, self.fleet.handler(address))
        self.fleet.channels.append(channel)
        return channel  # type: ignore[return-value]


def wake(client: CoordinatorClient) -> None:
    client.call("Wake", pb.WakeRequest(), timeout=1)


def failing_wake(client: CoordinatorClient) -> None:
    with pytest.raises(CoordinatorUnavailable):
        wake(client)


# --- choosing the next address -------------------------------------------------------------


def test_next_address_goes_round_robin_and_skips_the_ones_that_failed():
    abc = ["a:1", "b:1", "c:1"]
    assert next_address(abc, after="", skip=set()) == "a:1"
    assert next_address(abc, after="a:1", skip={"a:1"}) == "b:1"
    assert next_address(abc, after="c:1", skip={"c:1"}) == "a:1"
    assert next_address(abc, after="a:1", skip={"a:1", "b:1"}) == "c:1"
    # A whole round failed: the one after the last, again.
    assert next_address(abc, after="b:1", skip=set(abc)) == "c:1"
    # The current one vanished from the list (the registry forgot it): from the top.
    assert next_address(abc, after="z:1", skip={"z:1"}) == "a:1"


def test_coordinators_the_registry_lists_as_running_are_preferred():
    abc = ["a:1", "b:1", "c:1"]
    assert next_address(abc, after="", skip=set(), live=["c:1", "x:9"]) == "c:1"
    # After a:1, round-robin would say b:1, but only c:1 is known to be running.
    assert next_address(abc, after="a:1", skip={"a:1"}, live=["c:1", "a:1"]) == "c:1"
    # c:1 failed in this round although listed (its file outlives a kill -9 for a while).
    assert next_address(abc, after="c:1", skip={"a:1", "c:1"}, live=["c:1"]) == "b:1"
    assert next_address(abc, after="a:1", skip={"a:1"}, live=[]) == "b:1"


def test_with_several_configured_coordinators_the_registry_tells_which_run(tmp_path: Path):
    registry_dir = tmp_path / "registry"
    flags = {"paths.service_registry_dir": str(registry_dir)}
    one = resolve(env={}, flags={**flags, "worker.coordinators": "127.0.0.1:7001"})
    assert live_source(one) is None
    two = resolve(env={}, flags={**flags, "worker.coordinators": "127.0.0.1:7001,127.0.0.1:7002"})
    assert address_source(two)() == ["127.0.0.1:7001", "127.0.0.1:7002"]
    live = live_source(two)
    assert live is not None and live() == []
    now = datetime.now(UTC)
    registry.write_record(
        registry_dir,
        registry.CoordinatorRecord(
            id="b",
            host="127.0.0.1",
            port=7002,
            pid=1,
            status="active",
            started_at=now,
            last_heartbeat=now,
        ),
    )
    assert live() == ["127.0.0.1:7002"]


# --- CoordinatorClient ---------------------------------------------------------------------


def test_one_failure_does_not_move_a_worker():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"])
    fleet.down["a:1"] = DEADLINE
    failing_wake(client)
    del fleet.down["a:1"]
    wake(client)
    assert client.address == "a:1"
    assert fleet.addresses_called() == ["a:1", "a:1"]
    # The count restarts after an answer: a later single failure does not move either.
    fleet.down["a:1"] = UNAVAILABLE
    failing_wake(client)
    assert client.address == "a:1"


def test_consecutive_failures_move_to_the_next_coordinator_with_one_log_line(caplog):
    fleet = Coordinators()
    moves: list[str] = []
    client = FakeClient(fleet, ["a:1", "b:1"], who="worker w1", on_move=moves.append)
    wake(client)
    fleet.down["a:1"] = UNAVAILABLE
    with caplog.at_level(logging.WARNING, logger="controlplane.core.rpc.client"):
        for _ in range(MOVE_AFTER_FAILURES):
            failing_wake(client)
    assert client.address == "b:1"
    assert moves == ["b:1"]
    assert [r.getMessage() for r in caplog.records] == [
        "worker w1: coordinator a:1 stopped answering (UNAVAILABLE: Socket closed; "
        f"{MOVE_AFTER_FAILURES} calls in a row); now using b:1"
    ]
    assert fleet.channels[0].closed  # the old channel is closed: nothing polls it any more
    wake(client)
    assert fleet.addresses_called()[-1] == "b:1"


def test_a_channel_in_transient_failure_moves_at_the_first_failure():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"])
    wake(client)
    fleet.channels[0].watchers[0](grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    fleet.down["a:1"] = UNAVAILABLE
    failing_wake(client)
    assert client.address == "b:1"


def test_moves_go_round_robin_and_come_back_to_a_recovered_coordinator():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1", "c:1"])
    visited = []
    for address in ["a:1", "b:1", "c:1"]:
        fleet.down = {address: UNAVAILABLE}
        for _ in range(MOVE_AFTER_FAILURES):
            failing_wake(client)
        visited.append(client.address)
    assert visited == ["b:1", "c:1", "a:1"]
    fleet.down = {}
    wake(client)
    assert fleet.addresses_called()[-1] == "a:1"


def test_when_every_coordinator_is_down_the_worker_keeps_cycling():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"])
    fleet.down = {"a:1": UNAVAILABLE, "b:1": UNAVAILABLE}
    for _ in range(4 * MOVE_AFTER_FAILURES):
        failing_wake(client)
    # Each address got its turn, in order (the loops' backoff spaces the attempts out).
    calls = fleet.addresses_called()
    turns = [calls[i] for i in range(0, len(calls), MOVE_AFTER_FAILURES)]
    assert turns == ["a:1", "b:1", "a:1", "b:1"]


def test_a_worker_starts_on_a_coordinator_the_registry_lists_as_running():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"], live=lambda: ["b:1"])
    wake(client)
    assert fleet.addresses_called() == ["b:1"]


def test_a_coordinator_that_answered_before_and_closed_the_socket_went_away():
    # Not the "probably requires TLS" guess made for a connection that never worked.
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"])
    wake(client)
    fleet.down["a:1"] = UNAVAILABLE
    with pytest.raises(CoordinatorUnavailable, match="a:1 closed the connection: Socket closed"):
        wake(client)


def test_a_single_coordinator_gets_a_fresh_channel_and_no_move_line(caplog):
    fleet = Coordinators()
    moves: list[str] = []
    client = FakeClient(fleet, ["a:1"], on_move=moves.append)
    fleet.down["a:1"] = UNAVAILABLE
    with caplog.at_level(logging.WARNING, logger="controlplane.core.rpc.client"):
        for _ in range(MOVE_AFTER_FAILURES):
            failing_wake(client)
    del fleet.down["a:1"]
    wake(client)
    assert [c.address for c in fleet.channels] == ["a:1", "a:1"]
    assert moves == [] and caplog.records == []


def test_a_failure_from_before_a_move_does_not_count_against_the_new_coordinator():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"])
    wake(client)
    fleet.down["a:1"] = UNAVAILABLE
    for _ in range(MOVE_AFTER_FAILURES):
        failing_wake(client)
    # A long poll that was in flight on a:1 fails late, several times over.
    for _ in range(MOVE_AFTER_FAILURES):
        assert client._failure("a:1", 0, FakeRpcError(UNAVAILABLE)) == ""
    assert client.address == "b:1"
    wake(client)
    assert fleet.addresses_called()[-1] == "b:1"


def poll_cut_short(client: CoordinatorClient, interrupt: Callable[[], None]) -> Exception:
    """What a Poll in flight raises when `interrupt` closes its channel (fakes: no timing)."""
    started, release = threading.Event(), threading.Event()
    outcome: list[Exception] = []

    def slow_poll(method: str, request: Any) -> Any:
        if method == "Poll":
            started.set()
            release.wait(5)
            raise FakeRpcError(grpc.StatusCode.CANCELLED, "Channel closed!")
        raise FakeRpcError(UNAVAILABLE, "Socket closed")

    client._open_channel = lambda address: FakeChannel(address, slow_poll)  # type: ignore[method-assign]

    def poll() -> None:
        try:
            client.call("Poll", pb.PollRequest(), timeout=1)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    assert started.wait(5)
    interrupt()
    release.set()
    thread.join(5)
    assert len(outcome) == 1
    return outcome[0]


def test_a_poll_cut_short_by_a_move_is_a_transport_failure_not_an_application_error():
    client = FakeClient(Coordinators(), ["a:1", "b:1"])

    def move() -> None:
        for _ in range(MOVE_AFTER_FAILURES):
            failing_wake(client)

    error = poll_cut_short(client, move)
    assert client.address == "b:1"
    assert isinstance(error, CoordinatorUnavailable)
    assert "call abandoned on leaving it for b:1" in str(error)


def test_a_poll_cut_short_by_close_stays_a_grpc_error():
    # The agent closes the client last on shutdown and ignores that error quietly.
    client = FakeClient(Coordinators(), ["a:1", "b:1"])
    error = poll_cut_short(client, client.close)
    assert isinstance(error, grpc.RpcError) and not isinstance(error, CoordinatorUnavailable)


def given_up_between_connect_and_call(client: CoordinatorClient) -> None:
    """Make the next call find its channel closed by another thread's move, as happens when
    a worker's heartbeat moves it while its report loop is about to call."""
    connect = client._connect

    def racing() -> Any:
        stub, address, channel = connect()
        with client._lock:
            client._give_up(address, reason="another thread's failed calls")
        client._connect = connect  # type: ignore[method-assign]
        return stub, address, channel

    client._connect = racing  # type: ignore[method-assign]


def test_a_call_on_a_channel_another_thread_gave_up_is_a_transport_failure():
    # grpc raises ValueError there; escaping, it killed the calling loop's thread or made
    # the API answer 500 for a run it had created.
    client = FakeClient(Coordinators(), ["a:1", "b:1"])
    given_up_between_connect_and_call(client)
    with pytest.raises(CoordinatorUnavailable, match="call abandoned on leaving it for b:1"):
        wake(client)
    wake(client)  # on b:1
    assert client.address == "b:1"


def test_a_heartbeat_stream_opened_on_a_channel_given_up_meanwhile_is_a_transport_failure():
    client = FakeClient(Coordinators(), ["a:1", "b:1"])
    given_up_between_connect_and_call(client)
    with pytest.raises(CoordinatorUnavailable, match="call abandoned"):
        client.heartbeat(pb.HeartbeatRequest(), timeout=1)
    assert client.heartbeat(pb.HeartbeatRequest(), timeout=1) == pb.HeartbeatResponse()


def test_with_one_coordinator_a_late_failure_does_not_count_against_the_fresh_channel():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1"])
    wake(client)
    fleet.down["a:1"] = UNAVAILABLE
    for _ in range(MOVE_AFTER_FAILURES):
        failing_wake(client)
    del fleet.down["a:1"]
    wake(client)  # on a second channel
    assert client._failure("a:1", 0, FakeRpcError(UNAVAILABLE)) == ""
    assert client._failures == 0


def test_a_heartbeat_stream_without_a_reply_counts_as_a_failed_call_and_is_reopened():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"])
    silent = fleet.silent["a:1"] = threading.Event()  # a:1 answers nothing until set
    try:
        for _ in range(MOVE_AFTER_FAILURES):
            with pytest.raises(CoordinatorUnavailable, match="no heartbeat reply"):
                client.heartbeat(pb.HeartbeatRequest(), timeout=0.05)
            assert client._stream is None  # never reused: a late reply is not the next one's
        assert client.address == "b:1"
        client.heartbeat(pb.HeartbeatRequest(), timeout=1)
        assert fleet.addresses_called()[-1] == "b:1"
    finally:
        silent.set()
        client.close()


def test_a_refusal_is_not_a_reason_to_move():
    fleet = Coordinators()
    client = FakeClient(fleet, ["a:1", "b:1"], token=lambda: ("t", "--worker.token"))
    fleet.down["a:1"] = grpc.StatusCode.UNAUTHENTICATED
    for _ in range(MOVE_AFTER_FAILURES):
        with pytest.raises(CoordinatorRefused):
            client.call("Heartbeat", pb.HeartbeatRequest(), timeout=1)
    assert client.address == "a:1"


# --- the agent across a move -----------------------------------------------------------------


def agent_with(fleet: Coordinators, tmp_path: Path) -> WorkerAgent:
    config = resolve(
        env={},
        flags={
            "worker.id": "w1",
            "worker.coordinators": "a:1,b:1",
            "paths.data_dir": str(tmp_path),
        },
    )
    client = FakeClient(fleet, ["a:1", "b:1"], who="worker w1")
    return WorkerAgent(config, client=client)


def hold_attempt(agent: WorkerAgent, run_id: str, token: str) -> ActiveRun:
    active = ActiveRun(
        task=pb.Task(dag_run_id=run_id, attempt_token=token, attempt=1),
        cancel=threading.Event(),
        started_at=datetime.now(UTC),
    )
    agent._runs[token] = active
    return active


def test_after_a_move_the_agent_heartbeats_the_new_coordinator_with_its_running_attempts(
    tmp_path: Path,
):
    fleet = Coordinators()
    agent = agent_with(fleet, tmp_path)
    hold_attempt(agent, "run-1", "tok-1")
    assert agent.heartbeat_once()
    fleet.down["a:1"] = UNAVAILABLE
    for _ in range(MOVE_AFTER_FAILURES):
        assert not agent.heartbeat_once()
    # The move asks the heartbeat loop to beat now rather than after its backoff.
    assert agent._beat_now.is_set()
    assert agent.heartbeat_once()
    address, method, request = fleet.calls[-1]
    assert (address, method) == ("b:1", "HeartbeatStream")
    assert [r.attempt_token for r in request.running] == ["tok-1"]


def test_the_outbox_is_replayed_to_the_new_coordinator_and_its_rejection_still_cancels(
    tmp_path: Path,
):
    fleet = Coordinators()
    agent = agent_with(fleet, tmp_path)
    stale = hold_attempt(agent, "run-1", "old-token")
    for seq in (1, 2):
        agent.outbox.put(Event(seq, "run-1", "old-token", STEP_LOG, step="s", data=b"x"))
    agent.outbox.put(Event(3, "run-1", "old-token", RUN_FINISHED, status="succeeded"))
    fleet.down["a:1"] = UNAVAILABLE
    for _ in range(MOVE_AFTER_FAILURES):
        with pytest.raises(CoordinatorUnavailable):
            agent.flush_reports_once()
    assert len(agent.outbox) == 3  # nothing acknowledged, nothing lost
    # b:1 knows (from the database) that this attempt was superseded meanwhile.
    fleet.replies["Report"] = pb.ReportResponse(rejected_attempt_tokens=["old-token"])
    assert agent.flush_reports_once() == 3
    address, method, request = fleet.calls[-1]
    assert (address, method) == ("b:1", "Report")
    assert [e.seq for e in request.events] == [1, 2, 3]  # from the first unacknowledged one
    assert len(agent.outbox) == 0
    assert stale.cancel.is_set()
