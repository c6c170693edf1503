"""Every try of a retried step keeps its own log; the last one is what the API shows."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from controlplane.core.events import EventReporter
from controlplane.core.execution import RunOutcome
from controlplane.core.rpc.events import event_from_pb, event_to_pb
from controlplane.core.spec import parse_dag_file
from dags.models import DagRun
from dags.reports import apply_events, read_step_log
from dags.runs import create_run, start_attempt
from tests.roles import user_with_role

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FLAKY = """
steps:
  - name: flaky
    command: ./flaky.sh
    retry_policy: {limit: 2, interval_sec: 0}
"""


def retried_run(log_dir: Path, *, over_the_wire: bool = False) -> DagRun:
    """A step that failed twice and then succeeded, reported as an executor reports it."""
    run = create_run(
        parse_dag_file(FLAKY, source="flaky.yaml", default_name="flaky"),
        now=T0,
        default_mode="local",
    )
    attempt = start_attempt(run, now=T0, mode="local", worker_id="local")
    assert attempt is not None
    events = []
    # A worker's events cross the wire as protobuf; the local executor's do not.
    sink = (
        (lambda e: events.append(event_from_pb(event_to_pb(e)))) if over_the_wire else events.append
    )
    reporter = EventReporter(sink, run_id=run.id, token=attempt.token)
    reporter.attempt_started(at=T0)
    for retry, (text, status) in enumerate(
        [(b"first try\n", "failed"), (b"second try\n", "failed"), (b"third try ok\n", "succeeded")]
    ):
        reporter.step_started("flaky", at=T0, retry=retry)
        reporter.step_log("flaky", "stdout", text)
        if retry == 2:
            apply_events(events, log_dir=log_dir)  # the last try's start, applied separately
            events.clear()
        if status == "succeeded":
            reporter.step_finished(
                "flaky", status=status, exit_code=0, at=T0, output=None, error=""
            )
    reporter.run_finished(RunOutcome(status="succeeded"), at=T0)
    apply_events(events, log_dir=log_dir)
    run.refresh_from_db()
    return run


@pytest.mark.parametrize("over_the_wire", [False, True])
def test_each_try_of_a_retried_step_keeps_its_output(tmp_path: Path, over_the_wire: bool):
    run = retried_run(tmp_path, over_the_wire=over_the_wire)
    step = run.steps.get()
    assert (step.status, step.retries) == ("succeeded", 2)
    assert read_step_log(tmp_path, step) == "third try ok\n"
    assert read_step_log(tmp_path, step, try_number=1) == "first try\n"
    assert read_step_log(tmp_path, step, try_number=2) == "second try\n"
    assert read_step_log(tmp_path, step, try_number=3) == "third try ok\n"


def test_the_logs_api_shows_the_last_try_and_serves_earlier_ones(tmp_path: Path, settings):
    paths = dataclasses.replace(settings.DAGU.paths, log_dir=tmp_path)
    settings.DAGU = dataclasses.replace(settings.DAGU, paths=paths)
    run = retried_run(tmp_path)
    client = APIClient()
    client.force_authenticate(user_with_role("ops", "manager"))
    url = f"/api/v2/dag-runs/{run.id}/logs"
    [last] = client.get(url).json()["steps"]
    assert (last["log"], last["try"], last["tries"]) == ("third try ok\n", 3, 3)
    [first] = client.get(url, {"step": "flaky", "try": "1"}).json()["steps"]
    assert (first["log"], first["try"], first["tries"]) == ("first try\n", 1, 3)
    missing = client.get(url, {"step": "flaky", "try": "4"})
    assert missing.status_code == 404 and "3 tries" in missing.json()["detail"]
    bad = client.get(url, {"step": "flaky", "try": "x"})
    assert bad.status_code == 400 and "try" in bad.json()["detail"]
    assert client.get(url, {"try": "1"}).status_code == 400  # a try needs its step


def test_the_run_page_shows_the_last_try_and_links_the_earlier_ones(
    tmp_path: Path, settings, client
):
    paths = dataclasses.replace(settings.DAGU.paths, log_dir=tmp_path)
    settings.DAGU = dataclasses.replace(settings.DAGU, paths=paths)
    run = retried_run(tmp_path)
    client.force_login(user_with_role("ops", "manager"))
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert "third try ok" in page and "first try" not in page
    for n in (1, 2):
        assert f"/api/v2/dag-runs/{run.id}/logs?step=flaky&amp;try={n}" in page
