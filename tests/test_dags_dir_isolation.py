"""A bad file in the DAGs dir affects only itself: the API lists the others, other names
start, other schedules keep firing, and the bad file is reported once per change."""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.core.config import resolve
from dags.models import DagRun
from dags.scheduler import CronScheduler
from tests.roles import user_with_role

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, 1, 59, tzinfo=UTC)
GOOD = "schedule: '0 2 * * *'\nsteps:\n  - name: a\n    command: 'true'\n"
BAD = {
    "recursive.yaml": "steps: &r [{name: a, command: echo}, *r]\n",
    "bomb.yaml": "\n".join(
        ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
        + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    ),
    "deep.yaml": "steps: " + "[" * 3000 + "]" * 3000 + "\n",
}


def bad_dags_dir(root: Path) -> Path:
    dags_dir = root / "dags"
    dags_dir.mkdir()
    (dags_dir / "good.yaml").write_text(GOOD)
    for name, text in BAD.items():
        (dags_dir / name).write_text(text)
    (dags_dir / "gone.yaml").symlink_to(root / "nowhere.yaml")  # a dangling link
    os.mkfifo(dags_dir / "fifo.yaml")  # reading it would block forever
    return dags_dir


@pytest.fixture
def api(settings, tmp_path: Path) -> APIClient:
    dags_dir = bad_dags_dir(tmp_path)
    paths = dataclasses.replace(settings.DAGU.paths, dags_dir=dags_dir, log_dir=tmp_path / "l")
    settings.DAGU = dataclasses.replace(settings.DAGU, paths=paths)
    user = user_with_role("dir-user", "manager")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client


def test_the_dag_list_shows_good_and_bad_files(api, monkeypatch):
    monkeypatch.setattr("dags.api.wake_coordinator_soon", lambda config: False)
    response = api.get("/api/v2/dags")
    assert response.status_code == 200
    dags = {d["file"]: d for d in response.json()["dags"]}
    assert set(dags) == {"good.yaml", *BAD}
    assert dags["good.yaml"]["valid"] is True
    for name in BAD:
        (error,) = dags[name]["errors"]
        assert dags[name]["valid"] is False
        assert error.startswith("invalid YAML at line 1, column "), error


def test_other_dags_start_by_name_and_unknown_names_are_a_404(api, monkeypatch):
    monkeypatch.setattr("dags.api.wake_coordinator_soon", lambda config: False)
    response = api.post("/api/v2/dag-runs", {"dag": "good"}, format="json")
    assert response.status_code == 201
    missing = api.post("/api/v2/dag-runs", {"dag": "not-there"}, format="json")
    assert missing.status_code == 404
    assert "not found" in missing.json()["detail"]


def test_schedules_of_other_files_keep_firing_and_bad_files_are_logged_once(tmp_path, caplog):
    dags_dir = bad_dags_dir(tmp_path)
    config = resolve(env={"DAGU_HOME": str(tmp_path), "DAGU_DAGS_DIR": str(dags_dir)})
    scheduler = CronScheduler(config, now=T0, on_queued=lambda: None)
    caplog.set_level(logging.WARNING, logger="dags.scheduler")
    assert scheduler.tick(now=T0.replace(hour=2, second=1)) == 1
    assert scheduler.tick(now=T0.replace(hour=2, second=2)) == 0
    assert scheduler.tick(now=T0.replace(hour=2, second=3)) == 0
    assert DagRun.objects.filter(dag_name="good").count() == 1
    skipped = sorted(Path(r.args[0]).name for r in caplog.records)  # type: ignore[index]
    assert skipped == sorted([*BAD, "gone.yaml", "fifo.yaml"])
    assert all("Traceback" not in r.getMessage() and not r.exc_info for r in caplog.records)

    caplog.clear()
    (dags_dir / "bomb.yaml").write_text(BAD["bomb.yaml"] + "\n# edited\n")
    scheduler.tick(now=T0.replace(hour=2, second=4))
    scheduler.tick(now=T0.replace(hour=2, second=5))
    assert [Path(r.args[0]).name for r in caplog.records] == ["bomb.yaml"]  # type: ignore[index]
