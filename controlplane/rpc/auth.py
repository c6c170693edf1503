"""Authentication of every coordinator RPC, in one place: a grpc.aio server interceptor.

The interceptor wraps each Coordinator method (the standard health and reflection services
stay open) so the caller is authenticated before the servicer runs: by its
`authorization: Bearer <token>` metadata, or, when peer.client_ca_file makes the server
verify client certificates, by its certificate's CN and DNS SANs. No credential (or a bad
one) is UNAUTHENTICATED; the servicer then asks `current_principal()` what the caller may do.
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import grpc
import grpc.aio
from django.db import close_old_connections

from controlplane.core.clock import utcnow
from controlplane.core.rpc.v1 import coordinator_pb2
from controlplane.rpc.threads import BlockingContext, call_blocking
from workers.credentials import CredentialError, Principal, authenticate

SERVICE_PREFIX = "/" + coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name + "/"

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "rpc_principal", default=None
)


def current_principal() -> Principal:
    principal = _principal.get()
    assert principal is not None, "called outside an authenticated RPC"
    return principal


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def certificate_names(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> tuple[str, ...]:
    """CN and DNS SANs of the verified client certificate (empty without mutual TLS).

    gRPC exposes only names of a certificate it verified against the configured CA, so
    these can be trusted as the worker's identity.
    """
    auth = context.auth_context()
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names += [v.decode(errors="replace") for v in auth.get(key, []) if v]
    return tuple(dict.fromkeys(names))


# Authenticating a token reads its credential's row. A fleet of 2,000 workers makes ~2,200
# calls a second (a heartbeat each, a poll every 10 s), and that query was the largest part
# of each call's cost; so a token's principal is reused for this long after its row was
# read. Revoking a credential thus refuses its workers within this many seconds
# (docs/security.md). Refusals are never reused: a bad token is looked up every time.
PRINCIPAL_REUSE_SECONDS = 5.0
PRINCIPAL_CACHE_SIZE = 10_000  # distinct live tokens kept; past that the cache starts over
_principals: dict[str, tuple[float, Principal]] = {}
# Tokens whose row one call is reading again. Meanwhile the others keep the principal they
# had (for at most another PRINCIPAL_REUSE_SECONDS) instead of all queueing for the same
# row, which, behind SQLite's write lock (last_used_at), held up hundreds of heartbeats.
_refreshing: set[str] = set()


def _known(token: str) -> Principal | None:
    hit = _principals.get(token)
    if hit is None:
        return None
    age = time.monotonic() - hit[0]
    if age < PRINCIPAL_REUSE_SECONDS:
        return hit[1]
    if token in _refreshing and age < 2 * PRINCIPAL_REUSE_SECONDS:
        return hit[1]
    return None


def authenticated(token: str) -> Principal:
    """`authenticate`, with a principal read less than PRINCIPAL_REUSE_SECONDS ago reused."""
    known = _known(token)
    if known is not None:
        return known
    _refreshing.add(token)
    try:
        read_at = time.monotonic()
        principal = authenticate(token, now=utcnow())
    except CredentialError:
        _principals.pop(token, None)  # revoked: refused from now on
        raise
    finally:
        _refreshing.discard(token)
    if len(_principals) >= PRINCIPAL_CACHE_SIZE:
        _principals.clear()
    _principals[token] = (read_at, principal)
    return principal


def reused(token: str, cert_names: tuple[str, ...]) -> Principal | None:
    """The caller's principal if it is known without the database, else None."""
    if token:
        known = _known(token)
        return None if known is None else _with_names(known, cert_names)
    if cert_names:
        return identify("", cert_names)
    return None


def identify(token: str, cert_names: tuple[str, ...]) -> Principal:
    """The caller's principal; CredentialError when it has no valid credential."""
    if token:
        return _with_names(authenticated(token), cert_names)
    if cert_names:
        return Principal(credential=f"certificate {cert_names[0]}", cert_names=cert_names)
    raise CredentialError("no credential (authorization: Bearer <worker token>)")


def _with_names(principal: Principal, cert_names: tuple[str, ...]) -> Principal:
    if cert_names == principal.cert_names:
        # The cached object itself (no certificate names without mutual TLS): nothing to
        # allocate per call, and the servicer can tell by identity that it is unchanged.
        return principal
    return Principal(
        credential=principal.credential,
        allowed_labels=principal.allowed_labels,
        worker_id_pattern=principal.worker_id_pattern,
        cert_names=cert_names,
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every Coordinator call on the grpc.aio server, then runs it.

    Authentication reads the database, so it runs in the pool `executor_for(method)` names.
    A blocking method (the servicer's synchronous ones) runs in that same pool thread right
    after it: one hop off the event loop per call. An async method (Poll, Heartbeat) is
    awaited with the principal set in the call's context, authenticated in the pool only when
    its principal is not one read moments ago (`reused`).
    """

    def __init__(
        self, executor_for: Callable[[str], Executor], *, client_certificates: bool
    ) -> None:
        self.executor_for = executor_for
        # Without mutual TLS there are no certificate names to read, and reading the auth
        # context of every call was a tenth of the event loop's time with a fleet.
        self.client_certificates = client_certificates

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        token = bearer_token(details.invocation_metadata)
        executor = self.executor_for(details.method)
        if handler.stream_stream is not None:
            return self._stream(handler, token, executor)
        behaviour = handler.unary_unary
        assert behaviour is not None, "the Coordinator service has no server- or client-streams"

        if inspect.iscoroutinefunction(behaviour):

            async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
                names = certificate_names(context) if self.client_certificates else ()
                # A principal read a moment ago needs no thread (most calls of a fleet).
                principal = reused(token, names) or await call_blocking(
                    executor, context, lambda blocking: _identify(token, names, blocking)
                )
                reset = _principal.set(principal)
                try:
                    return await behaviour(request, context)
                finally:
                    _principal.reset(reset)

        else:

            async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
                names = certificate_names(context) if self.client_certificates else ()

                def run(blocking: BlockingContext) -> Any:
                    # This thread runs a copy of the call's context: the principal set here
                    # is the call's alone.
                    _principal.set(_identify(token, names, blocking))
                    return behaviour(request, blocking)

                return await call_blocking(executor, context, run)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _stream(
        self, handler: grpc.RpcMethodHandler, token: str, executor: Executor
    ) -> grpc.RpcMethodHandler:
        """A stream (HeartbeatStream) is authenticated when it opens and at each message.

        At each message as a unary call is: the principal read less than
        PRINCIPAL_REUSE_SECONDS ago is reused, else the credential's row is read again in the
        pool; a refusal then ends the stream UNAUTHENTICATED. So a revoked token stops a
        stream within the same bound as its unary calls (docs/security.md), and a stream of
        a known token costs the loop a dictionary lookup per message.
        """
        behaviour = handler.stream_stream
        client_certificates = self.client_certificates

        async def principal_of(
            names: tuple[str, ...], context: grpc.aio.ServicerContext
        ) -> Principal:
            return reused(token, names) or await call_blocking(
                executor, context, lambda blocking: _identify(token, names, blocking)
            )

        async def authenticated(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            # A connection's certificate does not change: its names are read once.
            names = certificate_names(context) if client_certificates else ()
            _principal.set(await principal_of(names, context))

            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    # A principal read a moment ago is taken without a coroutine, and set
                    # (in the call's own task: the behaviour reads it for this message)
                    # only when it is another object: each set copies the task's context.
                    principal = reused(token, names) or await principal_of(names, context)
                    if principal is not _principal.get():
                        _principal.set(principal)
                    yield request

            async for response in behaviour(checked(), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _identify(token: str, names: tuple[str, ...], context: BlockingContext) -> Principal:
    """The principal in a pool thread; no valid credential ends the call UNAUTHENTICATED."""
    close_old_connections()  # as the request signals do for the servicer itself
    try:
        return identify(token, names)
    except CredentialError as exc:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
