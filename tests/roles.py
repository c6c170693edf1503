"""Users for tests, each in the role the test needs (controlplane.roles)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from rest_framework.authtoken.models import Token

from controlplane.roles import set_role


def user_with_role(username: str, role: str | None, **fields: Any) -> AbstractBaseUser:
    """A user in `role` (None: no role at all)."""
    user = get_user_model().objects.create_user(username, **fields)
    if role is not None:
        set_role(user, role)
    return user


def token_for(username: str, role: str | None) -> str:
    return Token.objects.create(user=user_with_role(username, role)).key
