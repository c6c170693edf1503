"""Schemathesis hooks for tests/test_api_schema_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

`POST /api/v2/dag-runs` takes DAG YAML inline as `spec`, and a spec that parses is a run: on
a worker, or on the main instance itself with `worker_selector: local`. No configuration of
the cluster stops that, so the guard is here, on the fuzzer's side, with the project's own
parser: a generated spec that would parse as a DAG is never generated (filter_body) and never
sent (before_call refuses it, which fails the run loudly instead of executing it). Everything
else about the operation is fuzzed: invalid YAML, invalid DAGs, `dag` names, params.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from controlplane.core.spec import DagSpecError, parse_dag_file

CREATE_RUN = "createDagRun"


def runnable_spec(body: object) -> bool:
    """True when `body` carries an inline spec the API would turn into a run."""
    if not isinstance(body, dict) or not isinstance(body.get("spec"), str) or not body["spec"]:
        return False
    try:
        parse_dag_file(body["spec"], source="fuzz.yaml", default_name="fuzz")
    except (DagSpecError, RecursionError, ValueError):
        return False
    return True


@schemathesis.hook("filter_body").apply_to(operation_id=CREATE_RUN)
def no_runnable_spec(context: Any, body: Any) -> bool:
    return not runnable_spec(body)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.definition.raw.get("operationId") == CREATE_RUN and runnable_spec(case.body):
        raise RuntimeError(f"refusing to send a runnable fuzzed DAG spec: {case.body['spec']!r}")
