"""The run page's log tail: a follower reads a growing log by byte offsets, bounded."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from dags.api import FOLLOW_LOG_LIMIT
from dags.models import DagRun, StepRun
from dags.reports import read_step_log_chunk, step_log_path
from tests.roles import user_with_role

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def step(tmp_path: Path, settings) -> StepRun:
    paths = dataclasses.replace(settings.DAGU.paths, log_dir=tmp_path)
    settings.DAGU = dataclasses.replace(settings.DAGU, paths=paths)
    run = DagRun.objects.create(id="r1", dag_name="d", spec="", queued_at=NOW,
                                execution_mode="local", status="running")  # fmt: skip
    log = step_log_path(run.id, 1, "tail")
    (tmp_path / log).parent.mkdir(parents=True)
    (tmp_path / log).write_bytes(b"")
    return StepRun.objects.create(run=run, name="tail", status="running", attempt=1,
                                  log_path=log)  # fmt: skip


def append(tmp_path: Path, step: StepRun, data: bytes) -> None:
    with open(tmp_path / step.log_path, "ab") as fh:
        fh.write(data)


def test_a_follower_reads_only_what_is_new(tmp_path: Path, step: StepRun):
    append(tmp_path, step, b"one\n")
    first = read_step_log_chunk(tmp_path, step, offset=0, limit=1024)
    assert (first.text, first.start, first.end) == ("one\n", 0, 4)
    assert read_step_log_chunk(tmp_path, step, offset=first.end, limit=1024).text == ""
    append(tmp_path, step, b"two\n")
    second = read_step_log_chunk(tmp_path, step, offset=first.end, limit=1024)
    assert (second.text, second.start, second.end) == ("two\n", 4, 8)


def test_a_character_cut_by_the_writer_waits_for_its_last_byte(tmp_path: Path, step: StepRun):
    snowman = "☃".encode()  # three bytes
    append(tmp_path, step, b"a" + snowman[:2])
    cut = read_step_log_chunk(tmp_path, step, offset=0, limit=1024)
    assert (cut.text, cut.end) == ("a", 1)
    append(tmp_path, step, snowman[2:])
    assert read_step_log_chunk(tmp_path, step, offset=cut.end, limit=1024).text == "☃"


def test_a_follower_far_behind_skips_to_the_bounded_tail(tmp_path: Path, step: StepRun):
    append(tmp_path, step, "é".encode() * 1000)  # two bytes each
    chunk = read_step_log_chunk(tmp_path, step, offset=0, limit=101)
    # 101 bytes from the end starts inside a character: the chunk starts at the next one.
    assert (chunk.text, chunk.start, chunk.end) == ("é" * 50, 1900, 2000)
    # An offset past the end (the file was replaced) starts over at the tail.
    assert read_step_log_chunk(tmp_path, step, offset=5000, limit=4).start == 1996


def test_the_logs_api_follows_by_offset_and_bounds_each_answer(tmp_path: Path, step: StepRun):
    client = APIClient()
    client.force_authenticate(user_with_role("ops", "manager"))
    url = "/api/v2/dag-runs/r1/logs"
    append(tmp_path, step, b"x" * (FOLLOW_LOG_LIMIT + 10))
    [tail] = client.get(url, {"step": "tail", "offset": "0"}).json()["steps"]
    assert (len(tail["log"]), tail["start"], tail["end"]) == (FOLLOW_LOG_LIMIT, 10, 65546)
    append(tmp_path, step, b"new\n")
    [more] = client.get(url, {"step": "tail", "offset": tail["end"]}).json()["steps"]
    assert (more["log"], more["start"]) == ("new\n", tail["end"])
    # Without an offset the whole (1 MiB) tail, with where it ends to follow from.
    [whole] = client.get(url).json()["steps"]
    assert (len(whole["log"]), whole["end"]) == (FOLLOW_LOG_LIMIT + 14, FOLLOW_LOG_LIMIT + 14)
    assert client.get(url, {"offset": "0"}).status_code == 400  # an offset needs its step
    bad = client.get(url, {"step": "tail", "offset": "-1"})
    assert bad.status_code == 400 and "offset" in bad.json()["detail"]
