"""Client side of the coordinator protocol: discovery, failover between addresses, TLS.

Model-free: the worker agent uses it, and so do the CLI commands that nudge a coordinator.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from controlplane.config import Config, ConfigError, PeerConfig
from controlplane.rpc.v1 import coordinator_pb2_grpc
from workers import registry

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
]
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class CoordinatorUnavailable(Exception):
    """No coordinator answered; the message says why in an operator's words."""


def discover_coordinators(registry_dir: Path) -> list[str]:
    """`host:port` of registered coordinators, the most recently alive first."""
    found = registry.scan(registry_dir, "coordinator")
    records = [e.record for e in found.entries if isinstance(e.record, registry.CoordinatorRecord)]
    records.sort(key=lambda r: r.last_heartbeat, reverse=True)
    return [f"{r.host}:{r.port}" for r in records]


def address_source(config: Config) -> Callable[[], list[str]]:
    """Configured coordinators if any, else whatever the service registry lists now."""
    if config.worker.coordinators:
        fixed = list(config.worker.coordinators)
        return lambda: fixed
    root = Path(config.paths.service_registry_dir)
    return lambda: discover_coordinators(root)


def explain_rpc_error(exc: grpc.RpcError, address: str) -> str:
    """Turn transport failures into something an operator can act on."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    low = details.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return (
            f"TLS handshake with coordinator {address} failed: its certificate is not "
            f"signed by the CA in peer.client_ca_file (wrong CA?)"
        )
    if "hostname" in low and ("mismatch" in low or "match" in low):
        return (
            f"TLS handshake with coordinator {address} failed: the certificate does not "
            f"name this host (name mismatch); connect by a name in the certificate"
        )
    if "peer did not return a certificate" in low or "certificate required" in low:
        return (
            f"coordinator {address} requires a client certificate: set peer.cert_file "
            f"and peer.key_file"
        )
    if "ssl" in low or "handshake" in low or "tls" in low:
        return f"TLS handshake with coordinator {address} failed: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"coordinator {address} is unreachable: {details or 'connection refused'}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"coordinator {address} did not answer in time"
    return f"coordinator {address}: {code.name if code else 'error'}: {details}"


def channel_credentials(peer: PeerConfig) -> grpc.ChannelCredentials | None:
    """None for plaintext h2c; else TLS, with a client certificate when one is configured."""
    if peer.insecure and not (peer.cert_file or peer.client_ca_file):
        return None

    def read(path: str, key: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(key, path, f"cannot read: {exc.strerror}") from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(peer.client_ca_file, "peer.client_ca_file"),
        private_key=read(peer.key_file, "peer.key_file"),
        certificate_chain=read(peer.cert_file, "peer.cert_file"),
    )


class CoordinatorClient:
    """Calls the coordinator, moving on to the next known address when one fails."""

    def __init__(self, *, addresses: Callable[[], list[str]], peer: PeerConfig) -> None:
        self._addresses = addresses
        self._credentials = channel_credentials(peer)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: coordinator_pb2_grpc.CoordinatorStub | None = None
        self._address = ""
        self._failed: set[str] = set()

    @property
    def address(self) -> str:
        return self._address

    def _connect(self) -> coordinator_pb2_grpc.CoordinatorStub:
        with self._lock:
            if self._stub is not None:
                return self._stub
            candidates = self._addresses()
            if not candidates:
                raise CoordinatorUnavailable(
                    "no coordinator address: none configured and none in the service registry"
                )
            fresh = [a for a in candidates if a not in self._failed] or candidates
            if len(fresh) == len(candidates):
                self._failed.clear()
            address = fresh[0]
            self._channel = (
                grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
                if self._credentials
                else grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            )
            self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
            self._address = address
            return self._stub

    def _drop(self, address: str) -> None:
        with self._lock:
            if self._address == address and self._channel is not None:
                self._channel.close()
                self._channel, self._stub = None, None
                self._failed.add(address)

    def call(self, method: str, request: Any, *, timeout: float) -> Any:
        """Invoke `method`; transport failures become CoordinatorUnavailable.

        Application errors (e.g. FAILED_PRECONDITION) are re-raised as grpc.RpcError.
        """
        stub = self._connect()
        address = self._address
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in _RETRYABLE:
                self._drop(address)
                raise CoordinatorUnavailable(explain_rpc_error(exc, address)) from None
            raise

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel, self._stub = None, None


class Backoff:
    """Exponential backoff with jitter (0.5x-1.5x), reset on success."""

    def __init__(self, *, initial: float = 0.5, maximum: float = 5.0, factor: float = 2.0) -> None:
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next * random.uniform(0.5, 1.5)
        self._next = min(self.maximum, self._next * self.factor)
        return delay

    def reset(self) -> None:
        self._next = self.initial


def wake_coordinator(config: Config, *, timeout: float = 1.0) -> bool:
    """Best effort: tell a coordinator that runs were queued. False if none answered.

    The coordinator also scans the queue on its own every half second, so a missed
    wake-up only costs latency, never a run.
    """
    from controlplane.rpc.v1 import coordinator_pb2 as pb

    client = CoordinatorClient(addresses=address_source(config), peer=config.peer)
    try:
        client.call("Wake", pb.WakeRequest(), timeout=timeout)
        return True
    except (CoordinatorUnavailable, grpc.RpcError, ConfigError):
        return False
    finally:
        client.close()
