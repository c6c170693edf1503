"""OpenAPI links: from the responses that name a run, a worker or a DAG to the operations on it.

Clients (and stateful fuzzers) follow them instead of guessing ids. A drf-spectacular
postprocessing hook, so the views keep describing only themselves.
"""

from __future__ import annotations

from typing import Any

RUN_OPERATIONS = ("getDagRun", "getDagRunLogs", "cancelDagRun", "retryDagRun")
WORKER_OPERATIONS = ("getWorker", "drainWorker", "undrainWorker")

RUN_ID = "$response.body#/dag_run_id"

# (operation, status) -> {target operation: {parameter: runtime expression}}
LINKS: dict[tuple[str, str], dict[str, dict[str, str]]] = {
    ("createDagRun", "201"): {op: {"run_id": RUN_ID} for op in RUN_OPERATIONS},
    ("listDagRuns", "200"): {
        op: {"run_id": "$response.body#/dag_runs/0/dag_run_id"} for op in RUN_OPERATIONS
    },
    ("getDagRun", "200"): {op: {"run_id": RUN_ID} for op in RUN_OPERATIONS},
    ("cancelDagRun", "200"): {"retryDagRun": {"run_id": RUN_ID}},
    ("retryDagRun", "200"): {"cancelDagRun": {"run_id": RUN_ID}},
    ("listWorkers", "200"): {
        op: {"worker_id": "$response.body#/workers/0/id"} for op in WORKER_OPERATIONS
    },
    ("drainWorker", "200"): {"undrainWorker": {"worker_id": "$response.body#/id"}},
    ("listDags", "200"): {"getDag": {"name": "$response.body#/dags/0/name"}},
}
# A run of a DAG the list names: the request body a link can fill in.
BODY_LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("listDags", "200"): {"createDagRun": {"dag": "$response.body#/dags/0/name"}},
}


def add_links(
    result: dict[str, Any], generator: object, request: object, public: bool
) -> dict[str, Any]:
    operations = {
        op["operationId"]: op
        for methods in result.get("paths", {}).values()
        for op in methods.values()
        if isinstance(op, dict) and "operationId" in op
    }
    for (source, status), targets in LINKS.items():
        for target, parameters in targets.items():
            _link(operations, source, status, target, {"parameters": parameters})
    for (source, status), targets in BODY_LINKS.items():
        for target, body in targets.items():
            # OpenAPI's requestBody is the whole body; schemathesis merges it into a generated
            # one (which may also carry `spec`) unless told to take it as given.
            how = {"requestBody": body, "x-schemathesis": {"merge_body": False}}
            _link(operations, source, status, target, how)
    return result


def _link(
    operations: dict[str, dict[str, Any]],
    source: str,
    status: str,
    target: str,
    how: dict[str, Any],
) -> None:
    response = operations.get(source, {}).get("responses", {}).get(status)
    if response is None or target not in operations:
        return
    response.setdefault("links", {})[target] = {"operationId": target, **how}


# Every operation needs a token (401) and a role (403, naming it); the views don't repeat it.
DENIALS = {
    "401": "no or an invalid token",
    "403": 'the caller\'s role is not enough; the body names the role needed ("viewer" to '
    'read, "operator" to start, cancel or retry, "manager" for an inline spec or to drain)',
}
DETAIL_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}


def add_denials(
    result: dict[str, Any], generator: object, request: object, public: bool
) -> dict[str, Any]:
    for methods in result.get("paths", {}).values():
        for op in methods.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for code, why in DENIALS.items():
                body = {"application/json": {"schema": DETAIL_SCHEMA}}
                op["responses"].setdefault(code, {"description": why, "content": body})
    return result
