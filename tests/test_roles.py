"""The role matrix (issue 10 section 1) over every route of the URL conf.

A new route that is not in MATRIX fails test_every_route_is_in_the_matrix, so none can skip
the check; the other tests send each route each method as every role and as nobody.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.roles import ADMIN, MANAGER, OPERATOR, ROLES, VIEWER
from dags.models import DagRun
from tests.roles import user_with_role

pytestmark = pytest.mark.django_db

# route name -> {method: the least role that may call it}. None: answers the same to anyone.
MATRIX: dict[str, dict[str, str | None]] = {
    "api-workers": {"GET": VIEWER},
    "api-worker": {"GET": VIEWER},
    "api-worker-drain": {"POST": MANAGER},
    "api-worker-undrain": {"POST": MANAGER},
    "api-dag-runs": {"GET": VIEWER, "POST": OPERATOR},
    "api-dag-run": {"GET": VIEWER},
    "api-dag-run-cancel": {"POST": OPERATOR},
    "api-dag-run-retry": {"POST": OPERATOR},
    "api-dag-run-logs": {"GET": VIEWER},
    "api-dags": {"GET": VIEWER},
    "api-dag": {"GET": VIEWER},
    "api-schema": {"GET": VIEWER},
    # A JSON 404 for any path no route matches: it reads and changes nothing.
    "api-not-found": {"GET": None},
    "metrics": {"GET": VIEWER},
    "workers-page": {"GET": VIEWER},
    "worker-drain": {"POST": MANAGER},
    "worker-undrain": {"POST": MANAGER},
    "runs-page": {"GET": VIEWER},
    "run-page": {"GET": VIEWER},
    "dags-page": {"GET": VIEWER},
    "dag-page": {"GET": VIEWER, "POST": OPERATOR},
}
# The admin site is the admin role's (users, API tokens, worker credentials); only its login
# and logout are open, and the root redirects to the Workers page.
OPEN_ROUTES = {"admin:login", "admin:logout", None}


def routes(resolver: URLResolver | None = None, prefix: str = "", ns: str = "") -> list:
    """(namespaced name, pattern, pattern string) for every leaf route."""
    out = []
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{ns}{entry.namespace}:" if entry.namespace else ns
            out += routes(entry, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            name = f"{ns}{entry.name}" if entry.name else None
            out.append((name, entry, prefix + str(entry.pattern)))
    return out


def url_for(name: str, pattern: URLPattern) -> str:
    kwargs = {
        key: "x" for key in pattern.pattern.regex.groupindex if key not in pattern.default_args
    }
    if name == "api-not-found":
        return "/api/v2/no/such/thing"
    if name.startswith("admin:") and "object_id" in kwargs:
        kwargs["object_id"] = "1"
    if "app_label" in kwargs:
        kwargs["app_label"] = "dags"
    try:
        return reverse(name, kwargs=kwargs)
    except Exception:  # a route with a typed converter: try a number
        return reverse(name, kwargs={key: "1" for key in kwargs})


def api_client(role: str | None) -> APIClient:
    client = APIClient()
    if role != "anonymous":
        user = user_with_role(f"u-{role}", role)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client


def page_client(role: str | None) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(user_with_role(f"p-{role}", role))
    return client


def test_every_route_is_in_the_matrix():
    unchecked = [
        (name, path)
        for name, _, path in routes()
        if name not in MATRIX and name not in OPEN_ROUTES and not (name or "").startswith("admin:")
    ]
    assert unchecked == [], "add these routes to MATRIX in tests/test_roles.py"


def allowed(held: str | None, needed: str | None) -> bool:
    if needed is None:
        return True
    return held is not None and ROLES.index(held) >= ROLES.index(needed)


@pytest.mark.parametrize("held", ["anonymous", None, *ROLES])
def test_api_and_pages_follow_the_matrix(held: str | None):
    patterns = {name: pattern for name, pattern, _ in routes()}
    api, page = api_client(held), page_client(held)
    for name, methods in MATRIX.items():
        url = url_for(name, patterns[name])
        is_api = url.startswith("/api/") or name == "metrics"
        client = api if is_api else page
        for method, needed in methods.items():
            body = {"dag": "no-such-dag"} if name == "api-dag-runs" else {}
            if is_api:
                response = getattr(client, method.lower())(url, body, format="json")
            else:
                response = getattr(client, method.lower())(url, body)
            where = f"{method} {url} as {held}"
            if allowed(held if held != "anonymous" else None, needed):
                assert response.status_code not in (401, 403), where
                if not is_api:
                    assert "/admin/login/" not in response.get("Location", ""), where
            elif held == "anonymous":
                if is_api:
                    assert response.status_code == 401, where
                else:
                    assert response.status_code == 302, where
                    assert response["Location"].startswith("/admin/login/"), where
            else:
                assert response.status_code == 403, where
                if is_api:
                    assert f'\\"{needed}\\" role' in response.content.decode() or (
                        f'"{needed}" role' in response.content.decode()
                    ), where


@pytest.mark.parametrize("held", [None, *ROLES])
def test_the_admin_site_is_the_admin_roles(held: str | None):
    client = page_client(held)
    for name, pattern, _ in routes():
        if not (name or "").startswith("admin:") or name in OPEN_ROUTES:
            continue
        url = url_for(name, pattern)
        location = client.get(url).get("Location", "")
        if held == ADMIN:
            assert not location.startswith("/admin/login/"), url
        else:
            assert location.startswith("/admin/login/"), url


def test_an_inline_spec_needs_a_manager():
    spec = {"spec": "steps:\n  - name: a\n    command: echo hi\n"}
    operator = api_client(OPERATOR).post("/api/v2/dag-runs", spec, format="json")
    assert operator.status_code == 403
    assert operator.json() == {
        "detail": 'permission denied: this needs the "manager" role (or higher)'
    }
    assert not DagRun.objects.exists()
    manager = api_client(MANAGER).post("/api/v2/dag-runs", spec, format="json")
    assert manager.status_code == 201, manager.content


def test_who_started_cancelled_and_retried_is_recorded_and_shown():
    spec = {"spec": "steps:\n  - name: a\n    command: echo hi\n"}
    manager = api_client(MANAGER)
    run_id = manager.post("/api/v2/dag-runs", spec, format="json").json()["dag_run_id"]
    operator = api_client(OPERATOR)
    cancelled = operator.post(f"/api/v2/dag-runs/{run_id}/cancel").json()
    assert (cancelled["started_by"], cancelled["cancelled_by"]) == ("u-manager", "u-operator")
    retried = operator.post(f"/api/v2/dag-runs/{run_id}/retry").json()
    assert retried["retried_by"] == "u-operator"
    assert retried["cancelled_by"] is None
    detail = manager.get(f"/api/v2/dag-runs/{run_id}").json()
    assert detail["started_by"] == "u-manager"


def test_a_member_of_the_admin_group_uses_the_admin_like_a_superuser():
    client = page_client(ADMIN)
    assert client.get(reverse("admin:auth_user_changelist")).status_code == 200
    assert client.get(reverse("admin:authtoken_tokenproxy_changelist")).status_code == 200


def test_a_viewer_can_log_in_for_the_pages_but_nobody_without_a_role():
    user_with_role("v", VIEWER, password="pw")
    user_with_role("n", None, password="pw")
    client = Client()
    ok = client.post(
        "/admin/login/?next=/runs/", {"username": "v", "password": "pw", "next": "/runs/"}
    )
    assert ok.status_code == 302 and ok["Location"] == "/runs/"
    refused = Client().post("/admin/login/", {"username": "n", "password": "pw"})
    assert refused.status_code == 200
    assert "viewer&quot; role" in refused.content.decode()
    assert get_user_model().objects.get(username="n").last_login is None


def test_routes_are_walked():
    assert len(routes()) > len(MATRIX)
    assert any(re.match(r"admin/auth/user/", path) for _, _, path in routes())
