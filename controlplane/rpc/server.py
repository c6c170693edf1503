"""Build the coordinator's gRPC server: our service plus standard health and reflection."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.coordinator import Coordinator
from controlplane.core.config import ConfigError, PeerConfig
from controlplane.core.rpc.v1 import coordinator_pb2, coordinator_pb2_grpc
from controlplane.rpc.auth import AuthInterceptor
from controlplane.rpc.servicer import CoordinatorService

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def build_server(
    core: Coordinator, *, host: str, port: int, peer: PeerConfig, max_workers: int = 256
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Returns the (not yet started) server, the bound port (for port 0) and its health."""
    # Every long poll holds a pool thread for its duration, so the pool must be larger
    # than the number of connected workers plus concurrent unary calls.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=MESSAGE_OPTIONS,
        interceptors=[AuthInterceptor()],
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorService.as_servicer(coordinator=core), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    credentials = server_credentials(peer)
    bound = (
        server.add_secure_port(address, credentials)
        if credentials
        else server.add_insecure_port(address)
    )
    if bound == 0:
        raise ConfigError("coordinator.port", address, "cannot listen (address in use?)")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer


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
