"""A parked long poll costs the coordinator no thread (issue 11, target 1).

Hundreds of idle workers each hold a `Poll` open; on a thread-per-call server they took the
whole pool and heartbeats waited behind them. Against a real coordinator: 320 polls parked
at once (more than the old pool's 256 threads), then a heartbeat must still answer, and the
coordinator's thread count must stay far below one thread per poll.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.rpc.v1 import coordinator_pb2_grpc as rpc
from tests.procs import Cluster

pytestmark = pytest.mark.processes

PARKED = 320
# Threads the coordinator may have with every poll parked: its loops, gRPC's own threads and
# the bounded RPC pools (controlplane.rpc.server), a few dozen; one per poll would be 320+.
THREAD_BOUND = 120
HEARTBEAT_DEADLINE_S = 5.0  # generous: the point is that it answers at all, not how fast
PARK_TIMEOUT_S = 60.0


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for pid {pid}")


def worker(worker_id: str) -> pb.WorkerInfo:
    return pb.WorkerInfo(worker_id=worker_id, host="parked", pid=1, max_active_runs=1)


async def park_and_beat(port: int, token: str, pid: int) -> tuple[int, int, list[str]]:
    """Park PARKED polls; then (threads seen, workers listed, errors) after one heartbeat."""
    auth = (("authorization", f"Bearer {token}"),)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
    stubs = [rpc.CoordinatorStub(c) for c in channels]
    errors: list[str] = []
    stop = asyncio.Event()

    async def poll_forever(i: int) -> None:
        # As an idle agent does: poll again as soon as a poll returns empty.
        while not stop.is_set():
            try:
                await stubs[i % len(stubs)].Poll(
                    pb.PollRequest(worker=worker(f"parked-{i:03d}"), free_slots=1, wait_ms=20_000),
                    timeout=40,
                    metadata=auth,
                )
            except grpc.aio.AioRpcError as exc:
                if not stop.is_set():
                    errors.append(f"poll: {exc.code().name} {exc.details()}")
                return

    polls = [asyncio.create_task(poll_forever(i)) for i in range(PARKED)]
    try:
        # Every poll has reached the coordinator once its worker is listed (a poll records
        # the worker before it parks).
        listed = 0
        deadline = time.monotonic() + PARK_TIMEOUT_S
        while listed < PARKED and time.monotonic() < deadline and not errors:
            try:
                reply = await stubs[0].ListWorkers(
                    pb.ListWorkersRequest(), timeout=10, metadata=auth
                )
            except grpc.aio.AioRpcError as exc:
                errors.append(f"list workers: {exc.code().name} {exc.details()}")
                break
            listed = sum(w.info.worker_id.startswith("parked-") for w in reply.workers)
            await asyncio.sleep(0.2)
        threads = thread_count(pid)
        try:
            await stubs[1].Heartbeat(
                pb.HeartbeatRequest(worker=worker("beating")),
                timeout=HEARTBEAT_DEADLINE_S,
                metadata=auth,
            )
        except grpc.aio.AioRpcError as exc:
            errors.append(f"heartbeat: {exc.code().name} {exc.details()}")
        threads = max(threads, thread_count(pid))
        return threads, listed, errors
    finally:
        stop.set()
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        for channel in channels:
            await channel.close(grace=None)


def test_parked_polls_hold_no_thread_and_a_heartbeat_still_answers(cluster: Cluster):
    coordinator = cluster.start_coordinator()
    out = cluster.manage("create_worker_token", "parked-pool", check=True)
    token = out.stdout.strip().splitlines()[-1]
    threads, listed, errors = asyncio.run(park_and_beat(cluster.port, token, coordinator.pid))
    assert errors == []
    assert listed == PARKED
    assert threads < THREAD_BOUND, f"{threads} threads with {PARKED} polls parked"
    # And the coordinator still stops promptly, releasing whatever is parked.
    assert cluster.stop("coordinator") == 0
