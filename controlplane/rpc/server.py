"""Build the coordinator's gRPC server: our service plus standard health and reflection.

The server is grpc.aio, on one asyncio event loop in a thread of its own, so that a parked
long Poll (every idle worker holds one, up to 20 s) costs a future and a timer, not a
thread: a thread-per-call server starved heartbeats once the fleet outgrew its pool (issue
11). Whatever blocks runs in bounded pools sized here, not by the fleet: the database work
of every unary method and of a Poll that got mail in one, heartbeats in their own, so a
burst of Reports waiting on SQLite's write lock never delays a heartbeat.
`CoordinatorServer` lets the synchronous rest of the process (service.py, tests) start and
stop it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.coordinator import Coordinator
from controlplane.core.config import ConfigError, PeerConfig
from controlplane.core.rpc.v1 import coordinator_pb2, coordinator_pb2_grpc
from controlplane.rpc.auth import SERVICE_PREFIX, AuthInterceptor
from controlplane.rpc.servicer import coordinator_servicer

logger = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
HEARTBEAT_METHODS = {SERVICE_PREFIX + "Heartbeat", SERVICE_PREFIX + "HeartbeatStream"}

# Threads for the blocking part of calls: authentication, Report, StartChild, the other
# unary methods, and building the tasks of a Poll that got mail. Python runs one of them at
# a time anyway; more threads only help while some wait on the database (SQLite's write
# lock, a PostgreSQL round trip). Not sized by the fleet: waiting polls need none.
RPC_THREADS = 16
# Heartbeats that need the database (to authenticate a token not read in the last seconds,
# or to read the attempts they carry) get a pool of their own, so they never queue behind
# Reports waiting on the write lock; an idle worker's heartbeat needs no thread at all
# (servicer.coordinator_servicer).
HEARTBEAT_THREADS = 4

# Every connected worker holds one parked Poll and now and then a Heartbeat or Report, so
# 2,000 workers (issue 11's target) need a bit over 2,000 at once; this leaves room for a
# fleet several times that. Past it grpc.aio takes no new call until one ends: the excess
# waits in gRPC core's queue (which cancels what waited 30 s) instead of adding tasks and
# memory here without bound.
MAX_CONCURRENT_RPCS = 10_000

# Keepalive. Agents ping every 20 s, with or without calls in flight
# (controlplane/core/rpc/client.py); the server must accept that or it answers the third
# "too early" ping with GOAWAY (too_many_pings), dropping every parked poll on the
# connection. So pings are allowed down to every 10 s, with no call in flight too.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
# The server's own pings find agents that vanished without closing (a host lost, a
# partition), so their connections and parked polls are released within about 80 s.
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
SERVER_OPTIONS = [
    *MESSAGE_OPTIONS,
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.http2.max_pings_without_data", 0),  # our own keepalive pings never stop
]

# How long starting, or a call into the loop from outside (health), may take.
LOOP_CALL_TIMEOUT_SECONDS = 30.0


class CoordinatorServer:
    """The grpc.aio server on its own event loop thread, driven from synchronous code.

    `start` and `stop(grace)` behave as grpc.Server's do (`stop` returns an event that is
    set once the server, its pools and its loop are gone).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.rpc_pool = ThreadPoolExecutor(RPC_THREADS, thread_name_prefix="rpc")
        self.heartbeat_pool = ThreadPoolExecutor(HEARTBEAT_THREADS, thread_name_prefix="rpc-hb")
        self.server: grpc.aio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="rpc-loop", daemon=True)
        self._thread.start()
        self._stopped = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def executor_for(self, method: str) -> Executor:
        return self.heartbeat_pool if method in HEARTBEAT_METHODS else self.rpc_pool

    def call(self, coroutine: Awaitable[T]) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(  # type: ignore[arg-type]
            LOOP_CALL_TIMEOUT_SECONDS
        )

    def start(self) -> None:
        assert self.server is not None
        self.call(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls, give those in flight `grace` seconds, then end them all."""
        if self._stopped.is_set():
            return self._stopped
        if self.server is not None and self.loop.is_running():
            server = self.server
            try:
                asyncio.run_coroutine_threadsafe(server.stop(grace), self.loop).result(
                    (grace or 0) + LOOP_CALL_TIMEOUT_SECONDS
                )
            except Exception as exc:  # stopping goes on: the pools and the loop must end
                logger.warning("gRPC server stop: %s", exc)
        # Work already in a pool thread finishes (it is a bounded database call); queued
        # work of calls that were cancelled is dropped.
        for pool in (self.rpc_pool, self.heartbeat_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(LOOP_CALL_TIMEOUT_SECONDS)
        self._stopped.set()
        return self._stopped


class HealthStatus:
    """The standard health service's state, set from synchronous code."""

    def __init__(self, server: CoordinatorServer, servicer: Any) -> None:
        self._server = server
        self._servicer = servicer

    def set(self, service: str, status: Any) -> None:
        self._server.call(self._servicer.set(service, status))

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING from now on, so health checks steer clients away during shutdown."""
        self._server.call(self._servicer.enter_graceful_shutdown())


def build_server(
    core: Coordinator, *, host: str, port: int, peer: PeerConfig
) -> tuple[CoordinatorServer, int, HealthStatus]:
    """Returns the (not yet started) server, the bound port (for port 0) and its health."""
    credentials = server_credentials(peer)
    running = CoordinatorServer()
    health_servicer = health.aio.HealthServicer()

    async def build() -> int:
        # grpc.aio binds a server to the loop it is created on: this one.
        server = grpc.aio.server(
            migration_thread_pool=running.rpc_pool,  # any synchronous handler (none today)
            options=SERVER_OPTIONS,
            interceptors=[
                AuthInterceptor(running.executor_for, client_certificates=bool(peer.client_ca_file))
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            coordinator_servicer(
                core, executor=running.rpc_pool, heartbeat_executor=running.heartbeat_pool
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{host}:{port}"
        try:
            bound = (
                server.add_secure_port(address, credentials)
                if credentials
                else server.add_insecure_port(address)
            )
        except RuntimeError:
            bound = 0  # grpc.aio raises where grpc.server returned 0
        if bound:
            running.server = server
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return bound

    bound = running.call(build())
    if bound == 0:
        running.stop(0)
        raise ConfigError("coordinator.port", f"{host}:{port}", "cannot listen (address in use?)")
    return running, bound, HealthStatus(running, health_servicer)


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(key, path, f"cannot read: {exc.strerror}") from None


def server_credentials(peer: PeerConfig) -> grpc.ServerCredentials | None:
    """TLS when cert and key are set; client_ca_file additionally requires client certs."""
    if not (peer.cert_file and peer.key_file):
        if not peer.insecure:
            raise ConfigError(
                "peer.insecure",
                "configuration",
                "is false, but there is no peer.cert_file and peer.key_file to serve TLS with",
            )
        return None
    cert = _read(peer.cert_file, "peer.cert_file")
    key = _read(peer.key_file, "peer.key_file")
    ca = _read(peer.client_ca_file, "peer.client_ca_file") if peer.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
