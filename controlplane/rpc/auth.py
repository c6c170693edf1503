"""Authentication of every coordinator RPC, in one place: a gRPC server interceptor.

The interceptor wraps each Coordinator method (the standard health and reflection services
stay open) so the caller is authenticated before the servicer runs: by its
`authorization: Bearer <token>` metadata, or, when peer.client_ca_file makes the server
verify client certificates, by its certificate's CN and DNS SANs. No credential (or a bad
one) is UNAUTHENTICATED; the servicer then asks `current_principal()` what the caller may do.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import grpc
from django.db import close_old_connections

from controlplane.core.clock import utcnow
from controlplane.core.rpc.v1 import coordinator_pb2
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


def certificate_names(context: grpc.ServicerContext) -> tuple[str, ...]:
    """CN and DNS SANs of the verified client certificate (empty without mutual TLS).

    gRPC exposes only names of a certificate it verified against the configured CA, so
    these can be trusted as the worker's identity.
    """
    auth = context.auth_context()
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names += [v.decode(errors="replace") for v in auth.get(key, []) if v]
    return tuple(dict.fromkeys(names))


def identify(token: str, cert_names: tuple[str, ...]) -> Principal:
    """The caller's principal; CredentialError when it has no valid credential."""
    if token:
        principal = authenticate(token, now=utcnow())
        return Principal(
            credential=principal.credential,
            allowed_labels=principal.allowed_labels,
            worker_id_pattern=principal.worker_id_pattern,
            cert_names=cert_names,
        )
    if cert_names:
        return Principal(credential=f"certificate {cert_names[0]}", cert_names=cert_names)
    raise CredentialError("no credential (authorization: Bearer <worker token>)")


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        behaviour = handler.unary_unary
        assert behaviour is not None, "the Coordinator service has unary methods only"
        token = bearer_token(details.invocation_metadata)

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            close_old_connections()  # as the request signals do for the servicer itself
            try:
                principal = identify(token, certificate_names(context))
            except CredentialError as exc:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            reset = _principal.set(principal)
            try:
                return behaviour(request, context)
            finally:
                _principal.reset(reset)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
