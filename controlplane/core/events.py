"""What an executing attempt reports, as plain data. No Django: the worker agent builds these."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controlplane.core.execution import RunOutcome

ATTEMPT_STARTED = "attempt_started"
STEP_STARTED = "step_started"
STEP_LOG = "step_log"
STEP_FINISHED = "step_finished"
RUN_FINISHED = "run_finished"


# `logs.max_step_bytes`: a step printing 100 MB in a loop must not fill the log disk.
DEFAULT_MAX_STEP_LOG_BYTES = 16 * 1024 * 1024


def truncation_marker(limit: int) -> bytes:
    return (
        f"\n[log truncated: this step wrote more than {limit} bytes "
        "(logs.max_step_bytes); the rest of its output was dropped]\n"
    ).encode()


@dataclass(frozen=True)
class Event:
    seq: int
    dag_run_id: str
    attempt_token: str
    kind: str
    at: datetime | None = None
    step: str = ""
    retry: int = 0
    stream: str = ""
    data: bytes = b""
    offset: int = 0
    status: str = ""
    exit_code: int | None = None
    output_value: str | None = None
    error: str = ""
    outputs: Mapping[str, str] = field(default_factory=dict)
    # run_finished only: what the steps never reported finished become ("" = the old rule).
    unstarted_status: str = ""


class EventReporter:
    """The `execute_run` reporter for one attempt: numbers the events and hands them to `sink`.

    The sink is the only difference between a worker (a replayable outbox) and the main
    instance (straight into the database). Calls come from several step threads.
    """

    def __init__(
        self,
        sink: Callable[[Event], None],
        *,
        run_id: str,
        token: str,
        max_step_log_bytes: int = DEFAULT_MAX_STEP_LOG_BYTES,
    ) -> None:
        self.sink, self.run_id, self.token = sink, run_id, token
        self.max_step_log_bytes = max_step_log_bytes
        self._seq = itertools.count(1)
        self._offsets: dict[str, int] = {}
        self._retries: dict[str, int] = {}
        # Bytes of each step's output kept so far, over all its tries: the cap is per step.
        self._logged: dict[str, int] = {}
        self._lock = threading.Lock()

    def _emit(self, kind: str, **fields: Any) -> None:
        # Numbering and handing over under one lock keeps sequence numbers in sink order.
        with self._lock:
            self.sink(
                Event(
                    seq=next(self._seq),
                    dag_run_id=self.run_id,
                    attempt_token=self.token,
                    kind=kind,
                    **fields,
                )
            )

    def attempt_started(self, *, at: datetime) -> None:
        self._emit(ATTEMPT_STARTED, at=at)

    def step_started(self, step: str, *, at: datetime, retry: int) -> None:
        with self._lock:
            # Each try has a log of its own (the coordinator keeps them all), from offset 0.
            self._offsets[step], self._retries[step] = 0, retry
        self._emit(STEP_STARTED, step=step, at=at, retry=retry)

    def step_log(self, step: str, stream: str, data: bytes) -> None:
        with self._lock:
            offset, retry = self._offsets.get(step, 0), self._retries.get(step, 0)
            logged = self._logged.get(step, 0)
            if logged > self.max_step_log_bytes:
                return  # the marker went out with the chunk that reached the cap
            room = self.max_step_log_bytes - logged
            if len(data) > room:
                data = data[:room] + truncation_marker(self.max_step_log_bytes)
            self._logged[step] = logged + len(data)
            self._offsets[step] = offset + len(data)
        self._emit(STEP_LOG, step=step, stream=stream, data=data, offset=offset, retry=retry)

    def step_finished(
        self,
        step: str,
        *,
        status: str,
        exit_code: int | None,
        at: datetime,
        output: str | None,
        error: str,
    ) -> None:
        self._emit(
            STEP_FINISHED,
            step=step,
            status=status,
            exit_code=exit_code,
            at=at,
            output_value=output,
            error=error,
        )

    def run_finished(self, outcome: RunOutcome, *, at: datetime) -> None:
        self._emit(
            RUN_FINISHED,
            status=outcome.status,
            error=outcome.error,
            outputs=dict(outcome.outputs),
            at=at,
            unstarted_status=outcome.unstarted_status,
        )
