"""Client side of the coordinator protocol: discovery, failover between addresses, TLS.

Model-free: the worker agent uses it, and so do the CLI commands that nudge a coordinator.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import random
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from controlplane.core import registry
from controlplane.core.config import Config, ConfigError, PeerConfig
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.rpc.v1 import coordinator_pb2_grpc

logger = logging.getLogger(__name__)

# How long fetching a peer's certificate (peer.skip_tls_verify) may take before it fails.
CERT_FETCH_TIMEOUT_SECONDS = 5.0

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A ping every 20 s, calls in flight or not, finds a dead coordinator within 30 s. The
    # coordinator accepts pings down to every 10 s (controlplane/rpc/server.py
    # MIN_CLIENT_PING_INTERVAL_MS); pinging more often than it allows gets GOAWAY.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
]
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class CoordinatorUnavailable(Exception):
    """No coordinator answered; the message says why in an operator's words."""


class CoordinatorRefused(CoordinatorUnavailable):
    """A coordinator answered but refused this caller's credential or claimed identity."""


# Written by the coordinator (mode 0600) for workers on its own host; see docs/security.md.
BOOTSTRAP_TOKEN_FILE = "worker_token"
# Refusals of these calls are about the worker itself (its token, id or labels), not one run.
_IDENTITY_CALLS = {"Heartbeat", "Poll"}

TokenSource = Callable[[], tuple[str, str]]


def worker_token_source(config: Config) -> TokenSource:
    """(token, where it came from): worker.token, worker.token_file, else the bootstrap file.

    The bootstrap file is looked at on every call, so a worker started before its
    coordinator, or one whose coordinator wrote a new file on restart, picks the current
    token up.
    """
    if config.worker.token:
        fixed = (config.worker.token, config.sources.get("worker.token", "worker.token"))
        return lambda: fixed
    if config.worker.token_file:
        text = _read(config.worker.token_file, "worker.token_file") or b""
        from_file = (
            text.decode(errors="replace").strip(),
            config.sources.get("worker.token_file", "worker.token_file"),
        )
        return lambda: from_file
    return BootstrapToken(Path(config.paths.data_dir) / BOOTSTRAP_TOKEN_FILE)


class BootstrapToken:
    """The bootstrap token file's token, read again only when the file changed.

    Every RPC asks for the token; opening and reading the file each time was ~5% of a busy
    worker's sampled Python time (docs/benchmarks.md), a `stat` is one system call. A file
    replaced (new inode), rewritten (new mtime or size) or gone is noticed at the next call.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._token = ("", "")

    def __call__(self) -> tuple[str, str]:
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                # The token before the key: a thread that sees the new key reads it.
                self._token = (self.path.read_text().strip(), str(self.path))
                self._seen = seen
        except OSError:
            self._seen = None
            return "", ""
        return self._token


def refusal(exc: grpc.RpcError, method: str, where: str) -> str | None:
    """The one-line reason a coordinator refused this worker, or None for other errors."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if not where:
            return (
                "coordinator refused this worker: no token (set --worker.token, "
                "DAGU_WORKER_TOKEN or worker.token_file; <data-dir>/worker_token, which a "
                "coordinator on this host writes, is not readable)"
            )
        reason = "invalid token" if details.startswith("no credential") else details
        return f"coordinator refused this worker: {reason} (from {where})"
    if code == grpc.StatusCode.PERMISSION_DENIED and method in _IDENTITY_CALLS:
        return f"coordinator {details}"
    return None


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


def live_source(config: Config) -> Callable[[], list[str]] | None:
    """With several configured coordinators, the registry says which of them are running."""
    if len(config.worker.coordinators) < 2:
        return None
    root = Path(config.paths.service_registry_dir)
    return lambda: discover_coordinators(root)


def next_address(
    candidates: list[str], *, after: str, skip: set[str], live: list[str] | None = None
) -> str:
    """Round-robin: the next candidate after `after` that is not in `skip`, preferring those
    in `live` (what the registry lists as running) when it is known.

    When every candidate is in `skip` (a whole round failed), the next one again; the
    caller's backoff keeps that from spinning.
    """
    if after in candidates:
        i = candidates.index(after) + 1
        candidates = candidates[i:] + candidates[:i]
    if live:
        running = set(live)
        candidates = [a for a in candidates if a in running] + [
            a for a in candidates if a not in running
        ]
    fresh = [a for a in candidates if a not in skip]
    return (fresh or candidates)[0]


def explain_rpc_error(
    exc: grpc.RpcError,
    address: str,
    *,
    tls: bool = False,
    client_cert: bool = False,
    answered: bool = False,
) -> str:
    """Turn transport failures into something an operator can act on.

    `answered`: this coordinator answered before, so a closed socket means it went away (a
    crash, a restart), not a TLS mismatch.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    low = details.lower()
    if answered and ("socket closed" in low or "connection reset" in low):
        return f"coordinator {address} closed the connection: {details}"
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return (
            f"TLS handshake with coordinator {address} failed: its certificate is not signed by "
            f"the CA in peer.client_ca_file (wrong CA?), or set peer.skip_tls_verify for a "
            f"self-signed setup"
        )
    if "hostname verification" in low or "hostname mismatch" in low:
        return (
            f"TLS handshake with coordinator {address} failed: its certificate does not name "
            f"{address.rsplit(':', 1)[0]} (name mismatch); connect by a name in the certificate"
        )
    if "wrong_version_number" in low or "wrong version number" in low:
        return (
            f"coordinator {address} does not speak TLS: drop peer.client_ca_file/cert_file or "
            f"enable TLS on the coordinator"
        )
    if tls and not client_cert and ("socket closed" in low or "connection reset" in low):
        return (
            f"coordinator {address} closed the TLS connection: it probably requires a client "
            f"certificate (mutual TLS); set peer.cert_file and peer.key_file"
        )
    if "ssl" in low or "handshake" in low or "tls" in low:
        return f"TLS handshake with coordinator {address} failed: {details}"
    if not tls and ("socket closed" in low or "connection reset" in low):
        return (
            f"coordinator {address} closed a plaintext connection: it probably requires TLS; "
            f"set peer.client_ca_file (or peer.skip_tls_verify)"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"coordinator {address} is unreachable: {details or 'connection refused'}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"coordinator {address} did not answer in time"
    return f"coordinator {address}: {code.name if code else 'error'}: {details}"


def uses_tls(peer: PeerConfig) -> bool:
    """Plaintext h2c unless TLS is asked for (insecure=false) or implied by TLS settings."""
    return not peer.insecure or bool(peer.client_ca_file or peer.cert_file) or peer.skip_tls_verify


def _read(path: str, key: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(key, path, f"cannot read: {exc.strerror}") from None


def channel_credentials(
    peer: PeerConfig, *, trusted_pem: bytes | None = None
) -> grpc.ChannelCredentials | None:
    """None for plaintext h2c; else TLS, with a client certificate when one is configured."""
    if not uses_tls(peer):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=trusted_pem or _read(peer.client_ca_file, "peer.client_ca_file"),
        private_key=_read(peer.key_file, "peer.key_file"),
        certificate_chain=_read(peer.cert_file, "peer.cert_file"),
    )


def unverified_server_identity(
    address: str, *, timeout: float = CERT_FETCH_TIMEOUT_SECONDS
) -> tuple[bytes, str]:
    """For peer.skip_tls_verify: the coordinator's own certificate and a name it carries.

    gRPC Python cannot switch verification off, so we trust exactly the certificate the
    server presents (fetched without verification) and check the name it was issued for.
    A peer that accepts the connection but never answers costs `timeout` seconds, not a hang.
    """
    host, port = address.rsplit(":", 1)
    pem = ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=timeout)
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(name) for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    names += [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return pem.encode(), names[0] if names else host


# Consecutive transport failures (UNAVAILABLE or DEADLINE_EXCEEDED, from any of the worker's
# loops) after which a coordinator counts as gone and the client moves to the next address.
# One is not enough: a long poll can race its deadline on a busy coordinator. A channel that
# gRPC reports in TRANSIENT_FAILURE (it cannot connect at all) is left at the first failure.
MOVE_AFTER_FAILURES = 2


class _StreamEnded(Exception):
    """The coordinator closed a heartbeat stream without an error (it is opened anew)."""


class _NoReply(Exception):
    """No heartbeat reply within the call's timeout."""


_CLOSE = object()  # ends a heartbeat stream's requests


class HeartbeatStream:
    """One open `HeartbeatStream` call: `exchange` sends a heartbeat and waits for its reply.

    gRPC's synchronous streams block on the next reply without a timeout, so a thread reads
    the replies into a queue and `exchange` waits on that with one. The coordinator answers
    each request once, in order; a stream that missed a reply is closed, never reused, so a
    late reply can never be taken for the next heartbeat's.
    """

    def __init__(self, stub: Any, *, metadata: list[tuple[str, str]] | None, channel: int) -> None:
        self.channel = channel  # the client's channel number it was opened on
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._call = stub.HeartbeatStream(self._outgoing(), metadata=metadata)
        threading.Thread(target=self._read, name="heartbeat-stream", daemon=True).start()

    def _outgoing(self) -> Iterator[pb.HeartbeatRequest]:
        while (request := self._requests.get()) is not _CLOSE:
            yield request  # type: ignore[misc]

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._replies.put(reply)
            self._replies.put(_StreamEnded())
        except grpc.RpcError as exc:
            self._replies.put(exc)
        except ValueError:  # the channel was closed under the stream
            self._replies.put(_StreamEnded())

    def exchange(self, request: pb.HeartbeatRequest, *, timeout: float) -> pb.HeartbeatResponse:
        """The reply to `request`; raises the stream's grpc.RpcError, _StreamEnded or _NoReply."""
        self._requests.put(request)
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise _NoReply(f"no heartbeat reply in {timeout:g} s") from None
        if isinstance(reply, BaseException):
            raise reply
        return reply  # type: ignore[return-value]

    def close(self) -> None:
        self._requests.put(_CLOSE)
        self._call.cancel()


class CoordinatorClient:
    """Calls one coordinator at a time; moves to the next known address when it stops answering.

    All callers (a worker's heartbeat, poll and report loops, its sub-DAG calls) share the
    current coordinator, so a worker polls one coordinator only. `on_move(address)` runs
    after each move to another address: the agent heartbeats there at once.
    """

    def __init__(
        self,
        *,
        addresses: Callable[[], list[str]],
        peer: PeerConfig,
        token: TokenSource | None = None,
        live: Callable[[], list[str]] | None = None,
        who: str = "client",
        on_move: Callable[[str], None] | None = None,
    ) -> None:
        self._addresses = addresses
        self._live = live or (lambda: [])
        self._peer = peer
        self._token = token or (lambda: ("", ""))
        self._tls = uses_tls(peer)
        self._credentials = None if peer.skip_tls_verify else channel_credentials(peer)
        self._who = who  # names the caller in the one line logged per move
        self.on_move = on_move
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: coordinator_pb2_grpc.CoordinatorStub | None = None
        self._address = ""  # the current coordinator; "" until the first pick
        self._connectivity: grpc.ChannelConnectivity | None = None
        self._failures = 0  # consecutive transport failures on the current coordinator
        self._failed: set[str] = set()  # addresses given up on in this round
        self._answered_by: set[str] = set()  # addresses that answered a call once
        self._channels = 0  # channels given up on so far: tells a late failure from a fresh one
        # Heartbeats ride one open stream on the current channel (`heartbeat`), reopened on
        # a new channel; coordinators that do not serve it get unary Heartbeat calls.
        self._beat_lock = threading.Lock()
        self._stream: HeartbeatStream | None = None
        self._unary_heartbeats: set[str] = set()

    @property
    def address(self) -> str:
        return self._address

    def _connect(self) -> tuple[coordinator_pb2_grpc.CoordinatorStub, str, int]:
        moved = ""
        with self._lock:
            if self._stub is not None:
                return self._stub, self._address, self._channels
            if not self._address:
                candidates = self._addresses()
                if not candidates:
                    raise CoordinatorUnavailable(
                        "no coordinator address: none configured and none in the service registry"
                    )
                self._address = self._pick(candidates, after="")
            address = self._address
            try:
                channel = self._open_channel(address)
            except CoordinatorUnavailable as exc:
                moved = self._give_up(address, reason=str(exc))
                error = exc
            else:
                self._channel, self._connectivity = channel, None
                channel.subscribe(lambda state: self._on_connectivity(channel, state))
                # The generated stub has no annotations (protoc writes none for grpc code).
                self._stub = coordinator_pb2_grpc.CoordinatorStub(channel)  # type: ignore[no-untyped-call]
                return self._stub, address, self._channels
        self._announce(moved)
        raise error

    def _on_connectivity(self, channel: grpc.Channel, state: grpc.ChannelConnectivity) -> None:
        # gRPC calls this from its own thread; a late call about a closed channel is ignored.
        if channel is self._channel:
            self._connectivity = state

    def _open_channel(self, address: str) -> grpc.Channel:
        if not self._tls:
            return grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        if self._credentials is not None:
            return grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
        try:
            pem, name = unverified_server_identity(address)
        except OSError as exc:
            raise CoordinatorUnavailable(
                f"coordinator {address}: cannot fetch its TLS certificate: {exc}"
            ) from None
        credentials = channel_credentials(self._peer, trusted_pem=pem)
        assert credentials is not None
        options = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", name)]
        return grpc.secure_channel(address, credentials, options=options)

    def _failure(self, address: str, channel: int, exc: grpc.RpcError) -> str:
        """Count one transport failure on `address`; returns the address moved to, if any."""
        code = exc.code() if hasattr(exc, "code") else None
        details = ((exc.details() if hasattr(exc, "details") else "") or "").splitlines()
        return self._failed_on(
            address,
            channel,
            f"{code.name if code else 'error'}{': ' + details[0] if details else ''}",
        )

    def _failed_on(self, address: str, channel: int, what: str) -> str:
        with self._lock:
            if channel != self._channels:
                return ""  # the call started on a channel given up on since: already dealt with
            self._failures += 1
            if self._connectivity == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                return self._give_up(address, reason=f"{what}; channel in TRANSIENT_FAILURE")
            if self._failures < MOVE_AFTER_FAILURES:
                return ""
            return self._give_up(address, reason=f"{what}; {self._failures} calls in a row")

    def _give_up(self, address: str, *, reason: str) -> str:
        """With the lock held: close `address` and pick the next coordinator, round-robin.

        Returns the new address when it is another one (then logs the move), else "".
        """
        if self._channel is not None:
            self._channel.close()  # in-flight calls on it end; none is left to answer late
        self._channel, self._stub, self._connectivity = None, None, None
        self._channels += 1
        self._failures = 0
        self._failed.add(address)
        candidates = self._addresses()
        if not candidates:
            self._address = ""
            return ""
        self._address = self._pick(candidates, after=address)
        if self._failed.issuperset(candidates):
            self._failed.clear()  # a whole round failed: the next one starts afresh
        if self._address == address:
            return ""
        logger.warning(
            "%s: coordinator %s stopped answering (%s); now using %s",
            self._who,
            address,
            reason,
            self._address,
        )
        return self._address

    def _pick(self, candidates: list[str], *, after: str) -> str:
        return next_address(candidates, after=after, skip=self._failed, live=self._live())

    def _announce(self, moved: str) -> None:
        if moved and self.on_move is not None:
            self.on_move(moved)

    def _answered(self, address: str) -> None:
        if address not in self._answered_by:
            self._answered_by.add(address)
        if self._failures or self._failed:
            with self._lock:
                if address == self._address:
                    self._failures = 0
                    self._failed.clear()

    def call(self, method: str, request: Any, *, timeout: float) -> Any:
        """Invoke `method`; transport failures become CoordinatorUnavailable.

        Application errors (e.g. FAILED_PRECONDITION) are re-raised as grpc.RpcError.
        """
        stub, address, channel = self._connect()
        token, where = self._token()
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            reply = getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        except ValueError:
            # grpc's "Cannot invoke RPC on closed channel!": another thread (a worker's
            # heartbeat, a web server's other request) gave this channel up after `_connect`.
            raise self._abandoned(address, channel) from None
        except grpc.RpcError as exc:
            refused = refusal(exc, method, where)
            if refused is not None:
                raise CoordinatorRefused(refused) from None
            code = exc.code() if hasattr(exc, "code") else None
            if code in _RETRYABLE:
                self._announce(self._failure(address, channel, exc))
                message = explain_rpc_error(
                    exc,
                    address,
                    tls=self._tls,
                    client_cert=bool(self._peer.cert_file),
                    answered=address in self._answered_by,
                )
                raise CoordinatorUnavailable(message) from None
            if code == grpc.StatusCode.CANCELLED and channel != self._channels:
                # Its channel was given up on: a poll cut short here handed out nothing this
                # worker will run; failover supersedes what the coordinator may have assigned.
                raise self._abandoned(address, channel) from None
            raise
        self._answered(address)
        return reply

    def heartbeat(self, request: pb.HeartbeatRequest, *, timeout: float) -> pb.HeartbeatResponse:
        """One heartbeat on the open HeartbeatStream (opened on the current channel if none).

        Errors are `call`'s: a refusal is CoordinatorRefused, a transport failure, or no
        reply within `timeout`, is CoordinatorUnavailable and counts towards moving to the
        next coordinator; the stream is then closed and the next heartbeat opens a new one
        (on the new channel after a move). A coordinator without the stream (UNIMPLEMENTED:
        an older version) gets unary Heartbeat calls from then on.
        """
        with self._beat_lock:
            stub, address, channel = self._connect()
            if address in self._unary_heartbeats:
                unary: pb.HeartbeatResponse = self.call("Heartbeat", request, timeout=timeout)
                return unary
            stream = self._stream
            if stream is None or stream.channel != channel:
                if stream is not None:
                    stream.close()
                token, _ = self._token()
                metadata = [("authorization", f"Bearer {token}")] if token else None
                try:
                    stream = HeartbeatStream(stub, metadata=metadata, channel=channel)
                except ValueError:  # the channel was closed meanwhile, as in `call`
                    raise self._abandoned(address, channel) from None
                self._stream = stream
            try:
                reply = stream.exchange(request, timeout=timeout)
            except grpc.RpcError as exc:
                self._stream = None
                stream.close()
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    logger.info("%s: coordinator %s has no heartbeat stream", self._who, address)
                    self._unary_heartbeats.add(address)
                    unary = self.call("Heartbeat", request, timeout=timeout)
                    return unary
                raise self._stream_error(exc, address, channel) from None
            except (_NoReply, _StreamEnded) as exc:
                self._stream = None
                stream.close()
                if isinstance(exc, _NoReply):  # as a unary call's DEADLINE_EXCEEDED counts
                    self._announce(self._failed_on(address, channel, f"DEADLINE_EXCEEDED: {exc}"))
                raise CoordinatorUnavailable(f"coordinator {address}: {exc}") from None
            self._answered(address)
            return reply

    def _abandoned(self, address: str, channel: int) -> CoordinatorUnavailable:
        """A call that found its channel closed: given up on, or dropped by `close`."""
        if channel != self._channels:
            return CoordinatorUnavailable(
                f"coordinator {address}: call abandoned on leaving it for {self._address}"
            )
        return CoordinatorUnavailable(f"coordinator {address}: the client was closed")

    def _stream_error(self, exc: grpc.RpcError, address: str, channel: int) -> Exception:
        """What a heartbeat stream's error becomes, as `call` treats a call's."""
        _, where = self._token()
        refused = refusal(exc, "Heartbeat", where)
        if refused is not None:
            return CoordinatorRefused(refused)
        code = exc.code() if hasattr(exc, "code") else None
        if code in _RETRYABLE:
            self._announce(self._failure(address, channel, exc))
            return CoordinatorUnavailable(
                explain_rpc_error(
                    exc,
                    address,
                    tls=self._tls,
                    client_cert=bool(self._peer.cert_file),
                    answered=address in self._answered_by,
                )
            )
        if code == grpc.StatusCode.CANCELLED and channel != self._channels:
            return CoordinatorUnavailable(
                f"coordinator {address}: stream abandoned on leaving it for {self._address}"
            )
        error: Exception = exc
        return error

    def close(self) -> None:
        # Not under _beat_lock: a heartbeat waiting for its reply must not hold up closing.
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
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


# Wake-up clients by where they send: a process that queues runs (the API, `start_all`, a
# benchmark) keeps one channel per coordinator set instead of dialing for every run.
_WAKE_CLIENTS: dict[tuple[object, ...], CoordinatorClient] = {}
_WAKE_CLIENTS_MAX = 8
_wake_lock = threading.Lock()


def wake_coordinator(config: Config, *, timeout: float = 1.0) -> bool:
    """Best effort: tell a coordinator that runs were queued. False if none answered.

    The coordinator also scans the queue on its own every half second, so a missed
    wake-up only costs latency, never a run. The channel is kept for the next call (closed
    at exit); one that went stale (a restarted coordinator) is dropped and dialed again.
    """
    try:
        client, kept = _wake_client(config)
        try:
            client.call("Wake", pb.WakeRequest(), timeout=timeout)
        except CoordinatorUnavailable:
            if not kept:
                return False
            # A kept channel may be stale; the client dropped it, so this dials afresh (and
            # finds a restarted coordinator's new address in the registry).
            client.call("Wake", pb.WakeRequest(), timeout=timeout)
        return True
    except (CoordinatorUnavailable, grpc.RpcError, ConfigError):
        return False
    except Exception:
        # Callers wake after their runs are committed: an error here must not turn a created
        # run into a failed request (the API would answer 500 and a client retry double it).
        logger.exception("waking the coordinator failed; it will see the runs on its next scan")
        return False


def wake_coordinator_soon(config: Config) -> None:
    """`wake_coordinator` from a thread kept for `config`, without waiting for it.

    For a process that queues runs and has nothing to do with the answer (the API, the run
    pages, a bulk creator): under load the reply took milliseconds, a tenth of the time of
    a process creating runs back to back. Wake-ups asked for while one is on its way are
    sent as one. A wake-up lost at exit only costs latency (see `wake_coordinator`).
    """
    key = _wake_key(config)
    with _wake_lock:
        waker = _WAKERS.get(key)
        if waker is None:
            if len(_WAKERS) >= _WAKE_CLIENTS_MAX:
                _WAKERS.pop(next(iter(_WAKERS))).close()
            waker = _WAKERS[key] = _Waker(config)
    waker.asked.set()


class _Waker:
    """One daemon thread that sends a wake-up whenever one was asked for since the last."""

    def __init__(self, config: Config) -> None:
        self.asked = threading.Event()
        self._closed = False
        threading.Thread(
            target=self._loop, args=(config,), name="coordinator-waker", daemon=True
        ).start()

    def _loop(self, config: Config) -> None:
        while True:
            self.asked.wait()
            self.asked.clear()
            if self._closed:
                return
            wake_coordinator(config)

    def close(self) -> None:
        self._closed = True
        self.asked.set()


_WAKERS: dict[tuple[object, ...], _Waker] = {}


def _wake_key(config: Config) -> tuple[object, ...]:
    return (
        tuple(config.worker.coordinators),
        str(config.paths.service_registry_dir),
        str(config.paths.data_dir),
        config.peer,
        config.worker.token,
        config.worker.token_file,
    )


def _wake_client(config: Config) -> tuple[CoordinatorClient, bool]:
    """The kept client for `config`'s coordinators, and whether it was kept from before."""
    key = _wake_key(config)
    with _wake_lock:
        client = _WAKE_CLIENTS.get(key)
        if client is not None:
            return client, True
        client = CoordinatorClient(
            addresses=address_source(config), peer=config.peer, token=worker_token_source(config)
        )
        if len(_WAKE_CLIENTS) >= _WAKE_CLIENTS_MAX:
            _WAKE_CLIENTS.pop(next(iter(_WAKE_CLIENTS))).close()
        _WAKE_CLIENTS[key] = client
        return client, False


@atexit.register
def close_wake_clients() -> None:
    """Close the kept wake-up channels (at exit, or in tests that stop their coordinator)."""
    with _wake_lock:
        clients = list(_WAKE_CLIENTS.values())
        _WAKE_CLIENTS.clear()
    for client in clients:
        client.close()
