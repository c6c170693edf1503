"""The worker agent's report batching: a fast run's events travel in one Report. No database."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controlplane.core import agent as agent_module
from controlplane.core.agent import Outbox, WorkerAgent
from controlplane.core.config import resolve
from controlplane.core.events import (
    ATTEMPT_STARTED,
    RUN_FINISHED,
    STEP_FINISHED,
    STEP_STARTED,
    EventReporter,
)
from controlplane.core.execution import RunOutcome
from controlplane.core.rpc.v1 import coordinator_pb2 as pb

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class RecordingClient:
    """Stands in for CoordinatorClient: acknowledges every Report and remembers it."""

    address = "fake:1"

    def __init__(self) -> None:
        self.reports: list[list[str]] = []
        self.lock = threading.Lock()

    def call(self, method: str, request: Any, *, timeout: float) -> Any:
        assert method == "Report", method
        with self.lock:
            self.reports.append([e.WhichOneof("event") for e in request.events])
        return pb.ReportResponse(applied=len(request.events))

    def close(self) -> None:
        pass


def test_an_outbox_is_ready_at_once_when_a_run_ends_else_after_the_linger():
    box = Outbox()
    reporter = EventReporter(box.put, run_id="r", token="t")
    assert not box.ready(now=0.0, linger=0.01)  # empty
    reporter.attempt_started(at=T0)
    first = box._pending_since
    assert first is not None
    assert not box.ready(now=first, linger=0.01)
    assert box.ready(now=first + 0.02, linger=0.01)
    reporter.step_started("a", at=T0, retry=0)
    assert not box.ready(now=first + 0.005, linger=0.01)  # the oldest event sets the clock
    reporter.run_finished(RunOutcome(status="succeeded"), at=T0)
    assert box.ready(now=first, linger=0.01)


def test_acknowledging_a_run_end_ends_its_claim_on_a_prompt_report():
    box = Outbox()
    reporter = EventReporter(box.put, run_id="r", token="t")
    reporter.run_finished(RunOutcome(status="succeeded"), at=T0)
    box.ack(len(box.batch()))
    other = EventReporter(box.put, run_id="r2", token="t2")
    other.attempt_started(at=T0)
    start = box._pending_since
    assert start is not None
    assert not box.ready(now=start, linger=1.0)
    box.discard_attempt("t2")
    assert len(box) == 0 and not box.ready(now=start + 2, linger=1.0)


def test_a_fast_run_sends_its_events_in_one_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A linger far longer than the run: only the run's end can make the Report go out,
    # so the count below does not depend on how fast this machine is.
    monkeypatch.setattr(agent_module, "REPORT_LINGER_SECONDS", 600.0)
    config = resolve(env={"DAGU_HOME": str(tmp_path), "DAGU_WORKER_ID": "w-fast"})
    client = RecordingClient()
    worker = WorkerAgent(config, client=client)  # type: ignore[arg-type]
    reporting = threading.Thread(target=worker._report_loop, daemon=True)
    reporting.start()
    try:
        task = pb.Task(
            dag_run_id="run-fast",
            dag_name="fast",
            attempt=1,
            attempt_token="tok-fast",
            definition='steps:\n  - name: a\n    command: "true"\n',
            source="fast.yaml",
        )
        worker.start_task(task)
        active = worker._runs.get("tok-fast")
        if active is not None:
            assert active.done.wait(30)
        assert worker.outbox.wait_empty(timeout=30)
    finally:
        worker.halt_event.set()
        reporting.join(timeout=10)
    assert client.reports == [[ATTEMPT_STARTED, STEP_STARTED, STEP_FINISHED, RUN_FINISHED]]


class RefillingClient(RecordingClient):
    """Answers the first Report that ends a run with one new task (claim on report)."""

    def __init__(self, task: pb.Task) -> None:
        super().__init__()
        self.next_task: pb.Task | None = task
        self.wanted: list[int] = []

    def call(self, method: str, request: Any, *, timeout: float) -> Any:
        reply = super().call(method, request, timeout=timeout)
        self.wanted.append(request.want_tasks)
        if request.want_tasks and self.next_task is not None:
            reply.tasks.append(self.next_task)
            self.next_task = None
        return reply


def fast_task(name: str) -> pb.Task:
    return pb.Task(
        dag_run_id=f"run-{name}",
        dag_name=name,
        attempt=1,
        attempt_token=f"tok-{name}",
        definition='steps:\n  - name: a\n    command: "true"\n',
        source=f"{name}.yaml",
    )


def test_a_report_ending_a_run_asks_for_its_slot_and_starts_what_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(agent_module, "REPORT_LINGER_SECONDS", 600.0)  # one Report per run
    config = resolve(
        env={
            "DAGU_HOME": str(tmp_path),
            "DAGU_WORKER_ID": "w-refill",
            "DAGU_WORKER_MAX_ACTIVE_RUNS": "3",
        }
    )
    client = RefillingClient(fast_task("second"))
    worker = WorkerAgent(config, client=client)  # type: ignore[arg-type]
    reporting = threading.Thread(target=worker._report_loop, daemon=True)
    reporting.start()
    try:
        worker.start_task(fast_task("first"))
        # The second run comes in the reply to the first one's end, and reports in turn.
        deadline = time.monotonic() + 30
        while len(client.reports) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.outbox.wait_empty(timeout=30)
    finally:
        worker.halt_event.set()
        reporting.join(timeout=10)
    assert len(client.reports) == 2
    # Each report ended a run; every slot but the other run's (if still held) was asked for.
    assert client.wanted[0] == 3 and client.wanted[1] == 3
