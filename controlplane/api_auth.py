"""Bearer-token authentication for the REST API (DRF tokens, `Authorization: Bearer <key>`)."""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"
