"""Where the API and its OpenAPI schema used to disagree (found by schemathesis, see
tests/test_api_schema_fuzz.py): each case here is one such promise, kept."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.core.yamlload import YamlError, load_all
from tests.roles import token_for, user_with_role
from workers.api import SELECTOR_PATTERN

pytestmark = pytest.mark.django_db


@pytest.fixture
def api() -> APIClient:
    user = user_with_role("contract", "manager")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client


def schema(api: APIClient) -> dict:
    response = api.get("/api/v2/schema/?format=json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize(
    "path", ["/api/v2/nope", "/api/v2/workers/", "/api/v2/dag-runs/a/b/c", "/api/v2/"]
)
def test_a_path_no_route_matches_is_a_json_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "no API endpoint" in response.json()["detail"]


def test_a_json_404_needs_no_token_either():
    response = APIClient().post("/api/v2/nope")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"


@pytest.mark.parametrize("path", ["/api/v2/nope", "/api/v2/workers/%0A%F2%AE%B6%AF%05/drain"])
def test_a_post_no_route_matches_is_a_json_404_not_a_csrf_page(api, path):
    # As a real client meets it: Django's CSRF check runs on every view not exempted, and a
    # POST to the catch-all (a worker id with a newline, found by schemathesis) got its
    # HTML 403 page. The 404 changes nothing, so it needs no CSRF token.
    api.enforce_csrf_checks = True
    api.handler.enforce_csrf_checks = True
    api.cookies["sessionid"] = "whatever"
    response = api.post(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize("value", ["", "Healthy", "SICK"])
def test_health_outside_the_documented_enum_is_a_400(api, value):
    response = api.get("/api/v2/workers", {"health": value})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("health: unknown state")


@pytest.mark.parametrize("value", ["HEALTHY", "offline"])
def test_health_in_the_documented_enum_is_accepted(api, value):
    assert api.get("/api/v2/workers", {"health": value}).status_code == 200
    parameter = next(
        p
        for p in schema(api)["paths"]["/api/v2/workers"]["get"]["parameters"]
        if p["name"] == "health"
    )
    assert value in parameter["schema"]["enum"]


@pytest.mark.parametrize(
    "value",
    ["", "gpu=true", " gpu = true , region=eu-west-1", "a/b/c=x=y", "k=", f"{'k' * 63}=v"],
)
def test_a_selector_matching_the_documented_pattern_is_accepted(api, value):
    assert re.search(SELECTOR_PATTERN, value)
    assert api.get("/api/v2/workers", {"selector": value}).status_code == 200


@pytest.mark.parametrize(
    "value", ["gpu", "a=b,,c=d", "a b=c", "a=b\tc", f"{'k' * 64}=v", "x=\x00", "=v"]
)
def test_a_selector_outside_the_documented_pattern_is_a_400(api, value):
    assert not re.search(SELECTOR_PATTERN, value)
    response = api.get("/api/v2/workers", {"selector": value})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("selector: ")


def test_the_selector_pattern_is_in_the_schema(api):
    parameter = next(
        p
        for p in schema(api)["paths"]["/api/v2/workers"]["get"]["parameters"]
        if p["name"] == "selector"
    )
    assert parameter["schema"]["pattern"] == SELECTOR_PATTERN


@pytest.mark.parametrize(
    "query", ["offset=null", "offset=-1", "limit=0", "limit=ten", f"offset={2**63}", "status="]
)
def test_a_bad_page_or_filter_is_a_400_not_every_run(api, query):
    response = api.get(f"/api/v2/dag-runs?{query}")
    assert response.status_code == 400
    assert response.json()["detail"].split(":")[0] == query.split("=")[0]


def test_page_bounds_are_in_the_schema(api):
    parameters = {
        p["name"]: p["schema"]
        for p in schema(api)["paths"]["/api/v2/dag-runs"]["get"]["parameters"]
    }
    assert parameters["limit"]["minimum"] == 1
    assert parameters["offset"]["minimum"] == 0 and parameters["offset"]["maximum"] == 2**31 - 1


def test_a_spec_with_a_control_character_is_a_400_naming_it(api):
    assert api.get("/api/v2/dag-runs?limit=1").status_code == 200
    response = api.post("/api/v2/dag-runs", {"spec": "\x1f"}, format="json")
    assert response.status_code == 400
    assert "unacceptable character" in response.json()["errors"][0]
    with pytest.raises(YamlError):
        load_all("steps:\n  - command: echo \x07")


def test_a_run_is_created_from_json_only(api):
    response = api.post("/api/v2/dag-runs", {"dag": "hello"}, format="multipart")
    assert response.status_code == 415 and response["Content-Type"] == "application/json"
    body = schema(api)["paths"]["/api/v2/dag-runs"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json"}


def test_the_request_body_error_matches_its_documented_400(api):
    response = api.post("/api/v2/dag-runs", {}, format="json")
    assert response.status_code == 400
    body_schema = schema(api)["components"]["schemas"]["SpecError"]
    assert set(body_schema["required"]) <= set(response.json())


def test_links_lead_from_created_and_listed_resources_to_the_operations_on_them(api):
    document = schema(api)
    operations = {
        op["operationId"]: op for methods in document["paths"].values() for op in methods.values()
    }
    created = operations["createDagRun"]["responses"]["201"]["links"]
    assert set(created) == {"getDagRun", "getDagRunLogs", "cancelDagRun", "retryDagRun"}
    assert created["cancelDagRun"]["parameters"] == {"run_id": "$response.body#/dag_run_id"}
    workers = operations["listWorkers"]["responses"]["200"]["links"]
    assert set(workers) == {"getWorker", "drainWorker", "undrainWorker"}
    assert operations["listDags"]["responses"]["200"]["links"]["createDagRun"]["requestBody"]
    for op in operations.values():
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                assert link["operationId"] in operations


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    ["/api/v2/workers/a%0Ab/drain", "/api/v2/nothing", "/api/zzz%0A", "/api/v2/dag-runs/x%0Ay"],
)
def test_paths_no_route_matches_answer_json_even_with_a_newline(settings, path):
    # Found by schemathesis: a worker id with a newline slipped past every route pattern
    # (`.` stops at a newline) and reached Django's HTML 404.
    settings.DEBUG = False
    token = token_for("any-path", "admin")
    response = Client().post(path, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code in (404, 405)
    assert response["Content-Type"].startswith("application/json")


# Found by schemathesis on PostgreSQL, which refuses a NUL in any text parameter: these were 500s.
@pytest.mark.parametrize("name", ["root", "parent", "dag_name", "worker_id"])
def test_a_run_filter_holding_a_nul_matches_nothing(api, name):
    response = api.get("/api/v2/dag-runs", {name: "a\x00b"})
    assert response.status_code == 200
    assert response.json()["dag_runs"] == []


@pytest.mark.parametrize(
    "path", ["/api/v2/dag-runs/a%00b", "/api/v2/workers/a%00b", "/api/v2/dags/a%00b"]
)
def test_a_nul_in_an_api_path_is_a_json_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")


def test_a_param_holding_a_nul_is_a_400(api, tmp_path, settings):
    settings.DAGU = replace(
        settings.DAGU, paths=replace(settings.DAGU.paths, dags_dir=str(tmp_path))
    )
    (tmp_path / "hello.yaml").write_text("params: NAME=x\nsteps:\n  - command: echo $NAME\n")
    response = api.post("/api/v2/dag-runs", {"dag": "hello", "params": {"NAME": "a\x00b"}},
                        format="json")  # fmt: skip
    assert response.status_code == 400, response.content
    assert "NUL" in response.json()["detail"]
