"""What an executing attempt reports, as plain data. No Django: the worker agent builds these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

ATTEMPT_STARTED = "attempt_started"
STEP_STARTED = "step_started"
STEP_LOG = "step_log"
STEP_FINISHED = "step_finished"
RUN_FINISHED = "run_finished"


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
