"""Who may do what: the operator roles of the API, the pages and the admin, in one place.

The roles are Dagu's own (viewer < operator < manager < admin), kept as Django groups that a
data migration creates; a superuser is an admin. A user with no role may do nothing at all.
The views, permission classes and templates only ever ask the functions here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import AnonymousUser, Group
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

VIEWER, OPERATOR, MANAGER, ADMIN = "viewer", "operator", "manager", "admin"
# Lowest first: each role may do everything the ones before it may.
ROLES = (VIEWER, OPERATOR, MANAGER, ADMIN)

User = AbstractBaseUser | AnonymousUser


def role_of(user: User | None) -> str | None:
    """The user's highest role, or None (anonymous, inactive, or in no role group)."""
    if user is None or not user.is_active or not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return ADMIN
    # Cached on the user object: one query per request however often the edge asks.
    cached = getattr(user, "_dagu_role", False)
    if cached is False:
        names = set(user.groups.values_list("name", flat=True))  # type: ignore[union-attr]
        cached = next((role for role in reversed(ROLES) if role in names), None)
        user._dagu_role = cached  # type: ignore[union-attr]
    return cached


def has_role(user: User | None, role: str) -> bool:
    """Whether the user holds `role` or a higher one."""
    held = role_of(user)
    return held is not None and ROLES.index(held) >= ROLES.index(role)


def can_start_runs(user: User) -> bool:
    """Start a run of a DAG file in the DAGs dir, cancel, retry."""
    return has_role(user, OPERATOR)


def can_run_inline_specs(user: User) -> bool:
    """Start a run of YAML sent with the request: any command on the main instance."""
    return has_role(user, MANAGER)


def can_drain_workers(user: User) -> bool:
    """Drain or undrain a worker."""
    return has_role(user, MANAGER)


def denial(role: str) -> str:
    """The one-line reason every 403 gives: the role that would have been enough."""
    return f'permission denied: this needs the "{role}" role (or higher)'


class RolePermission(BasePermission):
    """DRF: reading needs `read_role`; any other method needs `write_role`."""

    read_role = VIEWER
    write_role = ADMIN

    def required_role(self, request: Request, view: Any) -> str:
        return self.read_role if request.method in SAFE_METHODS else self.write_role

    def has_permission(self, request: Request, view: Any) -> bool:
        role = self.required_role(request, view)
        if has_role(request.user, role):
            return True
        self.message = denial(role)
        return False


class ViewerRequired(RolePermission):
    """The default for every API view: reading only."""


class OperatorWrites(RolePermission):
    write_role = OPERATOR


class ManagerWrites(RolePermission):
    write_role = MANAGER


class RunStartPermission(OperatorWrites):
    """Starting a run of a file in the DAGs dir is an operator's; YAML sent inline is any
    command on the main instance, so a manager's. The body is only read once the caller is
    known to be an operator, so nobody without a role gets a parse error instead of a 403."""

    def required_role(self, request: Request, view: Any) -> str:
        role = super().required_role(request, view)
        if role != OPERATOR or not has_role(request.user, OPERATOR):
            return role
        data = request.data
        return MANAGER if isinstance(data, dict) and data.get("spec") else OPERATOR


class AdminBackend(ModelBackend):
    """The admin role holds every model permission, as a superuser does, so a member of the
    `admin` group can use the admin site without per-model grants."""

    def has_perm(self, user_obj: Any, perm: str, obj: object = None) -> bool:
        return has_role(user_obj, ADMIN) or super().has_perm(user_obj, perm, obj)

    def has_module_perms(self, user_obj: Any, app_label: str) -> bool:
        return has_role(user_obj, ADMIN) or super().has_module_perms(user_obj, app_label)


def viewer_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Pages: a session with any role may look; nobody logged in goes to the login page, and
    a logged-in user with no role gets a 403 naming the role."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not has_role(request.user, VIEWER):
            return HttpResponseForbidden(denial(VIEWER), content_type="text/plain")
        return view(request, *args, **kwargs)

    return wrapped


class RoleLoginForm(AdminAuthenticationForm):
    """The one login form (the admin's): any user with a role may log in for the pages; the
    admin site itself still lets in only the admin role (AdminSite.has_permission)."""

    def confirm_login_allowed(self, user: AbstractBaseUser) -> None:
        AuthenticationForm.confirm_login_allowed(self, user)
        if not has_role(user, VIEWER):
            raise ValidationError(denial(VIEWER), code="no_role")


def admin_site_permission(request: HttpRequest) -> bool:
    """The admin site (users, API tokens, worker credentials, raw rows) is the admin role's."""
    return has_role(request.user, ADMIN)


def set_role(user: AbstractBaseUser, role: str) -> None:
    """Put the user in exactly one role group.

    The data migration makes the groups; one deleted by hand (or by a test database flush)
    is made again rather than failing the command that assigns it.
    """
    if role not in ROLES:
        raise ValueError(f'unknown role "{role}"; expected one of {", ".join(ROLES)}')
    groups = user.groups  # type: ignore[attr-defined]
    groups.remove(*groups.filter(name__in=ROLES))
    groups.add(Group.objects.get_or_create(name=role)[0])
    user.__dict__.pop("_dagu_role", None)
