"""Fetching a peer's certificate for peer.skip_tls_verify: the names it carries, and a timeout."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trustme

from controlplane.core.rpc.client import unverified_server_identity


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def serve_tls_once(sock: socket.socket, context: ssl.SSLContext) -> threading.Thread:
    def serve() -> None:
        conn, _ = sock.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client hangs up once it has the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_certificate_and_its_dns_name_are_read(listener: socket.socket):
    cert = trustme.CA().issue_cert("coordinator.example", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    thread = serve_tls_once(listener, context)
    pem, name = unverified_server_identity(f"127.0.0.1:{listener.getsockname()[1]}")
    thread.join(timeout=10)
    assert b"BEGIN CERTIFICATE" in pem
    assert name == "coordinator.example"


def test_a_peer_that_never_answers_times_out(listener: socket.socket):
    # Accepts the TCP connection (the backlog does) but never speaks TLS.
    with pytest.raises(OSError):
        unverified_server_identity(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
