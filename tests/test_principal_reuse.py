"""A token's principal is reused for a few seconds (a fleet's thousands of calls a second
would otherwise read its credential row each time); a revoked token is refused once that
window has passed, and from then on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.rpc import auth
from workers.credentials import CredentialError, issue_credential, revoke

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.django_db
def test_a_principal_is_reused_within_the_window_and_a_revoked_token_refused_after_it(
    monkeypatch,
):
    token = issue_credential("pool", labels={}, worker_id_pattern="w*", now=T0)
    first = auth.authenticated(token)
    assert first.credential == "pool"
    assert auth.reused(token, ()) == first
    revoke(["pool"], now=T0)
    assert auth.authenticated(token) == first  # within the window: not read again
    monkeypatch.setattr(auth, "PRINCIPAL_REUSE_SECONDS", 0.0)
    assert auth.reused(token, ()) is None
    for _ in range(2):
        with pytest.raises(CredentialError, match="revoked token"):
            auth.authenticated(token)
    monkeypatch.setattr(auth, "PRINCIPAL_REUSE_SECONDS", 5.0)
    assert auth.reused(token, ()) is None  # a refusal is never reused
