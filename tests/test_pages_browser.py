"""A real Chromium drives the Workers page and a run page against a live server.

The pages must update without a reload: the test changes rows with the ORM and waits for
the DOM to follow. Screenshots land in the test's temp dir.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.core.spec import parse_dag_file
from dags.models import Attempt, DagRun, StepRun
from dags.reports import step_log_path
from dags.runs import create_run
from tests.browser import CHROMIUM, PASSWORD, USER, logged_in_tab
from tests.roles import user_with_role
from workers.models import Worker, WorkerLabel

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
]

# Thresholds ten times the defaults, so a slow browser start cannot age a worker into the
# next state before the first assertion.
TIMING = {"health_warning_after": 50.0, "health_unhealthy_after": 150.0,
          "health_offline_after": 300.0}  # fmt: skip
WAIT_MS = 10_000


@pytest.fixture
def site(settings, tmp_path: Path, monkeypatch, live_server) -> str:
    settings.DAGU = dataclasses.replace(
        settings.DAGU,
        timing=dataclasses.replace(settings.DAGU.timing, **TIMING),
        paths=dataclasses.replace(settings.DAGU.paths, log_dir=tmp_path / "logs"),
    )
    # No coordinator runs here; the API's wake-up call must not wait for one.
    monkeypatch.setattr("dags.api.wake_coordinator_soon", lambda config: False)
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    user_with_role(USER, "manager", password=PASSWORD)
    return live_server.url


@pytest.fixture
def page(site: str) -> Iterator[object]:
    with logged_in_tab(site, timeout_ms=WAIT_MS) as tab:
        yield tab


def make_worker(wid: str, *, age: float, labels: dict[str, str], **fields) -> Worker:
    now = datetime.now(UTC)
    worker = Worker.objects.create(id=wid, labels=labels, registered_at=now,
                                   last_heartbeat_at=now - timedelta(seconds=age),
                                   host=wid.split("@")[0], pid=100, **fields)  # fmt: skip
    WorkerLabel.objects.bulk_create(WorkerLabel(worker=worker, key=k, value=v)
                                    for k, v in labels.items())  # fmt: skip
    return worker


def health_of(tab: object, wid: str) -> str:
    return tab.get_attribute(f'tr[data-worker-id="{wid}"]', "data-health")


def test_workers_page_shows_health_and_labels_and_updates_live(site, page, tmp_path):
    tab = page
    assert tab.inner_text("#worker-rows") == "No workers connected"
    make_worker("gpu-1@host-a", age=1, labels={"gpu": "true", "region": "us-east-1"},
                max_active_runs=4)  # fmt: skip
    make_worker("cpu-1@host-b", age=80, labels={"region": "eu-west-1"}, draining=True)
    make_worker("cpu-2@host-c", age=200, labels={"region": "eu-west-1"})
    make_worker("old@host-d", age=3600, labels={"zone": "z"})

    # Rows appear without a reload, each with its health state and labels.
    tab.wait_for_selector('tr[data-worker-id="old@host-d"]')
    assert health_of(tab, "gpu-1@host-a") == "HEALTHY"
    assert health_of(tab, "cpu-1@host-b") == "WARNING"
    assert health_of(tab, "cpu-2@host-c") == "UNHEALTHY"
    assert health_of(tab, "old@host-d") == "OFFLINE"
    gpu_row = tab.locator('tr[data-worker-id="gpu-1@host-a"]')
    assert gpu_row.locator(".chip").all_inner_texts() == ["gpu=true", "region=us-east-1"]
    assert "draining" in tab.inner_text('tr[data-worker-id="cpu-1@host-b"] .wid')
    assert tab.inner_text("#m-workers") == "4"
    assert tab.inner_text("#m-healthy") == "1 healthy"
    tab.screenshot(path=str(tmp_path / "workers.png"), full_page=True)

    # A heartbeat brings the offline worker back; a child run starts on the GPU worker.
    Worker.objects.filter(pk="old@host-d").update(last_heartbeat_at=datetime.now(UTC))
    root = DagRun.objects.create(id="root-1", dag_name="pipeline", spec="", status="running",
                                 execution_mode="local", queued_at=datetime.now(UTC))  # fmt: skip
    child = DagRun.objects.create(id="child-1", dag_name="train", spec="", status="running",
                                  execution_mode="distributed", worker_id="gpu-1@host-a",
                                  root=root, parent=root, queued_at=datetime.now(UTC),
                                  started_at=datetime.now(UTC), attempt=1)  # fmt: skip
    # As dispatch leaves it: the worker holds the run's active attempt (what "busy" counts).
    Attempt.objects.create(run=child, number=1, token="t-child-1", mode="distributed",
                           worker_id="gpu-1@host-a", status="running",
                           created_at=datetime.now(UTC))  # fmt: skip
    tab.wait_for_selector('tr[data-worker-id="old@host-d"][data-health="HEALTHY"]')
    tab.wait_for_function("document.getElementById('m-tasks').textContent === '1'")
    assert gpu_row.locator(".usage-text").inner_text() == "1/4"
    gpu_row.locator("summary").click()
    lineage = gpu_row.locator(".lineage")
    assert lineage.inner_text() == "pipeline \u203a train"
    assert lineage.locator("a.task-run").get_attribute("href") == "/runs/child-1/"
    # The expanded task list stays open across refreshes.
    tab.wait_for_timeout(1500)
    assert gpu_row.locator("details").get_attribute("open") is not None

    tab.screenshot(path=str(tmp_path / "workers-live.png"), full_page=True)

    # The search box filters as you type: by label pair, then by id.
    tab.fill("#worker-search", "region=eu")
    tab.wait_for_function("document.querySelectorAll('#worker-rows tr.worker').length === 2")
    tab.fill("#worker-search", "GPU-1")
    tab.wait_for_function("document.querySelectorAll('#worker-rows tr.worker').length === 1")


SPEC = """\
steps:
  - name: greet
    command: echo hello
  - name: bye
    command: echo bye
"""


def test_run_page_follows_the_run_and_its_buttons_work(site, page, tmp_path):
    tab = page
    run = create_run(parse_dag_file(SPEC, source="hello.yaml", default_name="hello"),
                     now=datetime.now(UTC), default_mode="local")  # fmt: skip
    tab.goto(f"{site}/runs/{run.id}/")
    assert tab.inner_text("#run-status") == "queued"
    assert tab.is_visible('[data-action="cancel"] button')

    # The run starts and writes a log: the page follows without a reload.
    now = datetime.now(UTC)
    log = step_log_path(run.id, 1, "greet")
    (tmp_path / "logs" / log).parent.mkdir(parents=True)
    (tmp_path / "logs" / log).write_text("hello\n")
    DagRun.objects.filter(pk=run.id).update(status="running", started_at=now, attempt=1,
                                            worker_id="local")  # fmt: skip
    StepRun.objects.filter(run=run, name="greet").update(status="running", started_at=now,
                                                         attempt=1, log_path=log)  # fmt: skip
    tab.wait_for_function("document.getElementById('run-status').textContent === 'running'")
    tab.wait_for_selector('#steps-body tr[data-step="greet"][data-status="running"]')
    tab.wait_for_function(
        "document.querySelector('#logs details[data-step=\"greet\"] pre').textContent"
        " === 'hello\\n'"
    )
    tab.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    # It ends: the Retry button replaces Cancel, and polling stops.
    DagRun.objects.filter(pk=run.id).update(status="failed", finished_at=datetime.now(UTC),
                                            error="step bye failed")  # fmt: skip
    StepRun.objects.filter(run=run).update(status="failed", exit_code=1)
    tab.wait_for_function("document.getElementById('run-status').textContent === 'failed'")
    tab.wait_for_selector('[data-action="retry"] button', state="visible")
    assert tab.is_hidden('[data-action="cancel"]')

    # Retry and Cancel POST to the API with the session's CSRF token.
    tab.click('[data-action="retry"] button')
    tab.wait_for_function("document.getElementById('run-status').textContent === 'queued'")
    assert DagRun.objects.get(pk=run.id).status == "queued"
    tab.click('[data-action="cancel"] button')
    tab.wait_for_function("document.getElementById('run-status').textContent === 'cancelled'")
    assert DagRun.objects.get(pk=run.id).status == "cancelled"
    events = tab.locator("#decisions-body tr td:nth-child(3)").all_inner_texts()
    assert events == ["created", "retry"]

    # The runs list picks up a new run by itself.
    tab.click("nav >> text=Runs")
    tab.wait_for_selector(f'#run-rows tr[data-run-id="{run.id}"][data-status="cancelled"]')
    later = create_run(parse_dag_file(SPEC, source="later.yaml", default_name="later"),
                       now=datetime.now(UTC), default_mode="distributed")  # fmt: skip
    tab.wait_for_selector(f'#run-rows tr[data-run-id="{later.id}"][data-status="queued"]')
    tab.screenshot(path=str(tmp_path / "runs.png"), full_page=True)


def test_run_page_follows_the_running_steps_log_by_offsets_bounded(site, page, tmp_path):
    tab = page
    run = create_run(parse_dag_file(SPEC, source="hello.yaml", default_name="hello"),
                     now=datetime.now(UTC), default_mode="local")  # fmt: skip
    now = datetime.now(UTC)
    log = tmp_path / "logs" / step_log_path(run.id, 1, "greet")
    log.parent.mkdir(parents=True)
    log.write_text("line 0\n")
    DagRun.objects.filter(pk=run.id).update(status="running", started_at=now, attempt=1)
    StepRun.objects.filter(run=run, name="greet").update(
        status="running", started_at=now, attempt=1, log_path=step_log_path(run.id, 1, "greet")
    )
    tab.goto(f"{site}/runs/{run.id}/")
    pre = "document.querySelector('#logs details[data-step=\"greet\"] pre')"
    assert tab.is_checked("#log-follow")
    assert tab.get_attribute('#logs details[data-step="greet"]', "open") is not None

    # Lines appended to the file appear after the ones already shown, in order.
    with open(log, "a") as fh:
        fh.write("line 1\nline 2\n")
    tab.wait_for_function(f"{pre}.textContent === 'line 0\\nline 1\\nline 2\\n'")

    # A burst far past the bound: the page keeps only the last 64 KiB and says so.
    with open(log, "a") as fh:
        fh.writelines(f"burst {i:06d}\n" for i in range(20_000))  # 260 KB
    tab.wait_for_function(f"{pre}.textContent.endsWith('burst 019999\\n')")
    shown = tab.evaluate(f"{pre}.textContent")
    assert len(shown) <= 64 * 1024 and shown.startswith("burst ")
    assert tab.is_visible('#logs details[data-step="greet"] .trimmed')
    # Follow mode keeps the newest line in view.
    assert tab.evaluate(f"{pre}.scrollTop + {pre}.clientHeight >= {pre}.scrollHeight - 4")
    tab.screenshot(path=str(tmp_path / "run-tail.png"), full_page=True)

    # The run ends: the last bytes arrive, then the page stops asking.
    with open(log, "a") as fh:
        fh.write("done\n")
    DagRun.objects.filter(pk=run.id).update(status="succeeded", finished_at=datetime.now(UTC))
    StepRun.objects.filter(run=run).update(status="succeeded", exit_code=0)
    tab.wait_for_function("document.getElementById('run-status').textContent === 'succeeded'")
    tab.wait_for_function(f"{pre}.textContent.endsWith('done\\n')")
    assert tab.is_hidden("#log-follow-label")
    requests: list[str] = []
    tab.on("request", lambda request: requests.append(request.url))
    tab.wait_for_timeout(2500)
    assert requests == []
