"""The operator's whole job in a real Chromium against real processes: `start_all` (web,
coordinator, dispatch) and a worker, on loopback ports chosen at run time.

Start a run from the DAG page with a param and watch the run page's graph turn green; drain
the worker from the Workers page and see the row and the database agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.browser import CHROMIUM, PASSWORD, USER, logged_in_tab
from tests.procs import Cluster, wait_for, write_dag

pytestmark = [
    pytest.mark.browser,
    pytest.mark.processes,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
]

WAIT_MS = 60_000
GREET = """\
description: says hello on a worker
worker_selector: {pool: e2e}
params:
  - WHO: world
steps:
  - name: greet
    command: echo hello $WHO
  - name: bye
    command: echo bye
    depends: [greet]
"""


@pytest.fixture
def site(cluster: Cluster) -> Iterator[tuple[Cluster, str]]:
    (cluster.home / "dags").mkdir()
    write_dag(cluster.home / "dags", "greet", GREET)
    web = cluster.start_main()
    cluster.start_worker("e2e-w1", "pool=e2e")
    made = cluster.manage(
        "shell", "-c",
        "from django.contrib.auth import get_user_model; from controlplane.roles import set_role; "
        f"user = get_user_model().objects.create_user({USER!r}, password={PASSWORD!r}); "
        "set_role(user, 'manager')",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    yield cluster, f"http://127.0.0.1:{web}"


@pytest.fixture
def tab(site: tuple[Cluster, str]) -> Iterator[object]:
    with logged_in_tab(site[1], timeout_ms=WAIT_MS) as page:
        yield page


def test_start_a_run_from_the_dag_page_and_watch_it_finish(site, tab, tmp_path):
    cluster, url = site
    tab.goto(f"{url}/dags/")
    tab.click('[data-dag="greet"] a')
    tab.wait_for_url(f"{url}/dags/greet/")
    tab.fill('input[name="param_WHO"]', "operators")
    tab.click("#start-button")
    tab.wait_for_url(f"{url}/runs/*/")
    run_id = tab.url.rstrip("/").rsplit("/", 1)[-1]
    # The graph follows the run live: both nodes end green without a reload.
    for step in ("greet", "bye"):
        tab.wait_for_selector(f'#dag-graph g.node.status-succeeded[data-step="{step}"]')
    tab.wait_for_function("document.getElementById('run-status').textContent === 'succeeded'")
    tab.wait_for_function(
        "document.querySelector('#logs details[data-step=\"greet\"] pre')"
        ".textContent.includes('hello operators')"
    )
    tab.screenshot(path=str(tmp_path / "run-from-dag-page.png"), full_page=True)
    row = cluster.run_row(run_id)
    assert (row["status"], row["worker_id"]) == ("succeeded", "e2e-w1")
    params = row["params"]  # JSON text from SQLite, a dict from PostgreSQL
    assert (json.loads(params) if isinstance(params, str) else params) == {"WHO": "operators"}


def test_drain_a_worker_from_the_workers_page(site, tab, tmp_path):
    cluster, _ = site
    row = 'tr[data-worker-id="e2e-w1"]'
    tab.wait_for_selector(f'{row}[data-health="HEALTHY"]')
    tab.click(f'{row} button[data-action="drain"]')
    tab.wait_for_selector(f"{row} .badge-draining")
    tab.wait_for_selector(f'{row} button[data-action="undrain"]')
    assert wait_for(lambda: cluster.worker_row("e2e-w1")["draining"], timeout=10, what="drain")
    tab.screenshot(path=str(tmp_path / "workers-drained.png"), full_page=True)
    # The health filter still finds it; undrain puts it back in the pool.
    tab.click('#health-filter a[data-health="HEALTHY"]')
    tab.wait_for_selector(f'{row} button[data-action="undrain"]')
    tab.click(f'{row} button[data-action="undrain"]')
    tab.wait_for_selector(f'{row} button[data-action="drain"]')
    assert wait_for(
        lambda: not cluster.worker_row("e2e-w1")["draining"], timeout=10, what="undrain"
    )
