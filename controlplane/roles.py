"""Who may do what on the operator pages: the one place the web edge asks.

Until the roles of the security issue land, every action needs a staff account (as the pages
themselves do). When they land, these functions are what changes; the views and templates
only ever call them.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser


def can_start_runs(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Start a run from a DAG page (the issue's operator role and up)."""
    return bool(user.is_active and getattr(user, "is_staff", False))


def can_drain_workers(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Drain or undrain a worker from the Workers page (the issue's manager role and up)."""
    return bool(user.is_active and getattr(user, "is_staff", False))
