"""Worker credentials: issue, authenticate, attest labels, and the same-host bootstrap token.

A worker proves who may run it with a bearer token (or an mTLS client certificate, checked
by the gRPC edge); the credential then bounds which worker ids and labels it may claim, so a
stolen `region=eu` token cannot pull `gpu=true` work. See docs/security.md.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.db import IntegrityError, transaction

from controlplane.core.labels import format_labels, parse_label_string
from controlplane.core.privatefile import read_private_file, write_private_file
from workers.models import WorkerCredential

TOKEN_PREFIX = "dwt_"
BOOTSTRAP_FILE = "worker_token"
# last_used_at is a hint for operators, not an audit log: one write a minute per credential.
LAST_USED_EVERY = timedelta(seconds=60)
MAX_TOKEN_CHARS = 200


class CredentialError(Exception):
    """Refused: the message is what the caller is told (one line)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a credential, and/or the names of a verified client certificate."""

    credential: str = ""  # the credential's name; "" when only a certificate was shown
    allowed_labels: Mapping[str, str] = field(default_factory=dict)
    worker_id_pattern: str = ""
    cert_names: tuple[str, ...] = ()

    def check_worker(self, worker_id: str, labels: Mapping[str, str]) -> None:
        """Raise CredentialError when this caller may not act as `worker_id` with `labels`."""
        if self.cert_names and worker_id not in self.cert_names:
            raise CredentialError(
                f'refused worker id "{worker_id[:80]}": its client certificate names '
                f"{', '.join(self.cert_names)[:200]}"
            )
        if self.worker_id_pattern and not fnmatch.fnmatchcase(worker_id, self.worker_id_pattern):
            raise CredentialError(
                f'refused worker id "{worker_id[:80]}": credential "{self.credential}" allows '
                f"ids matching {self.worker_id_pattern}"
            )
        refused = refused_label(labels, self.allowed_labels)
        if refused is not None:
            raise CredentialError(
                f'refused label {refused}: credential "{self.credential}" allows '
                f"{format_labels(self.allowed_labels)}"
            )


def refused_label(labels: Mapping[str, str], allowed: Mapping[str, str]) -> str | None:
    """The first claimed `k=v` the allowed map does not cover (`k=*` covers any value)."""
    if not allowed:
        return None
    for key, value in sorted(labels.items()):
        if allowed.get(key) not in (value, "*"):
            return f"{key}={value}"[:120]
    return None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_allowed_labels(text: str) -> dict[str, str]:
    """`k=v,k2=*` as given to create_worker_token; raises LabelError."""
    if not text.strip():
        return {}
    return parse_label_string(text)


def issue_credential(
    name: str, *, labels: Mapping[str, str], worker_id_pattern: str, now: datetime
) -> str:
    """Create a credential; returns the token, which is never stored and cannot be shown again."""
    if not name.strip() or len(name) > 100:
        raise CredentialError("credential name must be 1-100 characters")
    token = new_token()
    try:
        with transaction.atomic():
            WorkerCredential.objects.create(
                name=name,
                token_hash=hash_token(token),
                allowed_labels=dict(labels),
                worker_id_pattern=worker_id_pattern,
                created_at=now,
            )
    except IntegrityError:
        raise CredentialError(
            f'a credential named "{name}" exists (revoke it in the admin, or pick another name)'
        ) from None
    return token


def authenticate(token: str, *, now: datetime) -> Principal:
    """The principal of a bearer token; CredentialError("invalid token"/"revoked token")."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise CredentialError("invalid token")
    credential = WorkerCredential.objects.filter(token_hash=hash_token(token)).first()
    if credential is None:
        raise CredentialError("invalid token")
    if credential.revoked_at is not None:
        raise CredentialError("revoked token")
    if credential.last_used_at is None or now - credential.last_used_at > LAST_USED_EVERY:
        WorkerCredential.objects.filter(pk=credential.pk).update(last_used_at=now)
    return Principal(
        credential=credential.name,
        allowed_labels=dict(credential.allowed_labels),
        worker_id_pattern=credential.worker_id_pattern,
    )


def revoke(names: list[str], *, now: datetime) -> int:
    return WorkerCredential.objects.filter(name__in=names, revoked_at=None).update(revoked_at=now)


def bootstrap_name() -> str:
    return f"bootstrap@{socket.gethostname()}"[:100]


def ensure_bootstrap_credential(data_dir: Path, *, now: datetime) -> Path:
    """Keep `<data_dir>/worker_token` (0600) valid: a credential for workers on this host.

    A token already in the file is reused while its credential exists and is not revoked, so
    workers that read it keep working across coordinator restarts; otherwise a new one is
    written. Revoking it in the admin takes effect until the next coordinator start.
    """
    path = Path(data_dir) / BOOTSTRAP_FILE
    name = bootstrap_name()
    try:
        current = read_private_file(path) or ""
    except OSError:
        current = ""
    if (
        current
        and WorkerCredential.objects.filter(
            token_hash=hash_token(current), revoked_at=None
        ).exists()
    ):
        return path
    token = new_token()
    WorkerCredential.objects.update_or_create(
        name=name,
        defaults={
            "token_hash": hash_token(token),
            "allowed_labels": {},
            "worker_id_pattern": "",
            "created_at": now,
            "revoked_at": None,
        },
    )
    write_private_file(path, token + "\n")
    return path
