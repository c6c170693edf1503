"""The API keeps the promises of its own OpenAPI schema, checked by schemathesis.

A real main instance (`start_all`) with a worker, a Bearer token and the example DAGs; the
schemathesis CLI reads /api/v2/schema/ and runs all of its checks against every operation
in every phase (examples, coverage, fuzzing, and stateful sequences that follow the schema's
OpenAPI links from created and listed runs, workers and DAGs to the operations on them).
A new endpoint is under the fuzzer the day it appears in the schema: nothing here lists them.

Inline `spec` runs: tests/schemathesis_hooks.py keeps every fuzzed spec that would parse as
a DAG from being generated or sent, so no fuzzed shell command ever runs on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.procs import ROOT, Cluster

pytestmark = pytest.mark.processes

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# Enough to find schema drift in every operation while the test stays well under a minute.
MAX_EXAMPLES = 15
RUN_TIMEOUT = 240


def create_run(web: int, token: str, dag: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{web}/api/v2/dag-runs",
        data=json.dumps({"dag": dag}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["dag_run_id"]


def test_every_api_operation_keeps_its_schema_under_schemathesis(cluster: Cluster, tmp_path):
    dags = tmp_path / "dags"
    shutil.copytree(ROOT / "examples", dags)
    cluster.env["DAGU_DAGS_DIR"] = str(dags)
    web = cluster.start_main()
    cluster.start_worker("fuzz-w", "gpu=true,region=eu-west-1,cpu-only=true")
    created = cluster.manage("create_api_token", "fuzzer", "--role", "manager")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    # A finished run, so the run list the stateful phase starts from is not empty.
    cluster.wait_run(create_run(web, token, "hello"), timeout=60)

    result = subprocess.run(
        [
            SCHEMATHESIS,
            "--no-color",
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            f"http://127.0.0.1:{web}/api/v2/schema/?format=json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--request-timeout",
            "20",
            "--workers",
            "2",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    report = result.stdout + result.stderr
    print(report)  # pytest shows it with -s / -rP: phases, links covered, seed
    assert result.returncode == 0, f"schemathesis found problems:\n{report}"
    # Every operation in the schema ran: none was skipped or filtered out.
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", report)
    assert selected and selected[1] == selected[2], report
