"""Apply what an executing attempt reports: attempt/step states, logs, the run's end.

Workers report over gRPC and the local executor in-process; both end here. Events carry
the attempt token and a per-attempt sequence number:
- events at or below the attempt's `last_event_seq` were applied before (a replay): acked;
- events of an attempt that is no longer the run's current one are rejected, and the
  caller tells the worker to cancel that attempt;
- log chunks carry their byte offset, so a replayed chunk is written once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction
from django.db.models import Q

from controlplane.core.events import (
    ATTEMPT_STARTED,
    RUN_FINISHED,
    STEP_FINISHED,
    STEP_LOG,
    STEP_STARTED,
    Event,
)
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from dags.models import Attempt, AttemptStatus, DagRun, RunStatus, StepRun, StepStatus

logger = logging.getLogger(__name__)

_ATTEMPT_END = {
    RunStatus.SUCCEEDED: AttemptStatus.SUCCEEDED,
    RunStatus.FAILED: AttemptStatus.FAILED,
    RunStatus.CANCELLED: AttemptStatus.CANCELLED,
}

# What steps never reported finished may become at the run's end.
_LEFTOVER_STATES = frozenset({StepStatus.CANCELLED, StepStatus.SKIPPED, StepStatus.FAILED})


@dataclass
class ApplyResult:
    applied: int = 0
    rejected_tokens: set[str] = field(default_factory=set)
    finished_runs: list[str] = field(default_factory=list)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120] or "_"


def step_log_path(run_id: str, attempt: int, step: str, retry: int = 0) -> str:
    """Log file of one try of a step in one attempt, relative to the log dir.

    The first try writes `<run>/<attempt>/<step>.log`, try N (N >= 2) writes
    `<run>/<attempt>/try-N/<step>.log`: `safe_name` never yields a `/`, so no step's first
    try can share a file with another step's later try.
    """
    folder = f"{safe_name(run_id)}/{attempt}"
    if retry > 0:
        folder = f"{folder}/try-{retry + 1}"
    return f"{folder}/{safe_name(step)}.log"


def apply_events(events: Iterable[Event], *, log_dir: Path) -> ApplyResult:
    """Apply a batch in order; see the module docstring for replay and rejection rules."""
    result = ApplyResult()
    by_token: dict[str, list[Event]] = {}
    for event in events:
        by_token.setdefault(event.attempt_token, []).append(event)
    # Log files first and outside any transaction: a slow disk must not hold the database
    # (SQLite's single write lock above all), and offsets make the writes idempotent.
    for token, batch in by_token.items():
        _write_logs(token, batch, log_dir=log_dir)
    # One transaction for the whole report: every write transaction queues for SQLite's
    # single write lock, so fewer, larger ones are what raise throughput.
    with transaction.atomic():
        for token, batch in by_token.items():
            _apply_attempt_batch(token, batch, result=result)
    return result


def _apply_attempt_batch(token: str, batch: list[Event], *, result: ApplyResult) -> None:
    attempt = Attempt.objects.select_related("run").filter(token=token).first()
    if attempt is None:
        result.rejected_tokens.add(token)
        return
    fresh = [e for e in batch if e.seq > attempt.last_event_seq]
    result.applied += len(batch) - len(fresh)
    if not fresh:
        return
    run = attempt.run
    if run.attempt != attempt.number or attempt.status not in ACTIVE_ATTEMPT_STATUSES:
        logger.info(
            "rejected %d report(s) from superseded attempt %s #%d of run %s",
            len(fresh),
            attempt.worker_id or "local",
            attempt.number,
            run.id,
        )
        result.rejected_tokens.add(token)
        return
    with transaction.atomic():
        for event in fresh:
            if event.kind != STEP_LOG:
                _apply_one(event, attempt=attempt, run=run, result=result)
        Attempt.objects.filter(pk=attempt.pk).update(last_event_seq=fresh[-1].seq)
    result.applied += len(fresh)


def _write_logs(token: str, batch: list[Event], *, log_dir: Path) -> None:
    """Append the batch's log chunks if its attempt is current (checked again on apply)."""
    logs = [e for e in batch if e.kind == STEP_LOG]
    attempt = Attempt.objects.select_related("run").filter(token=token).first() if logs else None
    if attempt is None or attempt.run.attempt != attempt.number:
        return
    if attempt.status not in ACTIVE_ATTEMPT_STATUSES:
        return
    for event in logs:
        if event.seq > attempt.last_event_seq:
            _append_log(log_dir, attempt.run_id, attempt.number, event)


def _apply_one(event: Event, *, attempt: Attempt, run: DagRun, result: ApplyResult) -> None:
    if event.kind == ATTEMPT_STARTED:
        Attempt.objects.filter(pk=attempt.pk, status=AttemptStatus.ASSIGNED).update(
            status=AttemptStatus.RUNNING, started_at=event.at
        )
        DagRun.objects.filter(pk=run.pk, started_at__isnull=True).update(started_at=event.at)
    elif event.kind == STEP_STARTED:
        StepRun.objects.filter(run=run, name=event.step).update(
            status=StepStatus.RUNNING,
            started_at=event.at,
            finished_at=None,
            exit_code=None,
            error="",
            attempt=attempt.number,
            retries=event.retry,
            log_path=step_log_path(run.id, attempt.number, event.step, event.retry),
        )
    elif event.kind == STEP_FINISHED:
        StepRun.objects.filter(run=run, name=event.step).update(
            status=event.status,
            exit_code=event.exit_code,
            finished_at=event.at,
            attempt=attempt.number,
            output_value=event.output_value or "",
            error=event.error[:10000],
        )
    elif event.kind == RUN_FINISHED:
        _finish_run(event, attempt=attempt, run=run, result=result)
    else:
        logger.warning("ignoring unknown report kind %r for run %s", event.kind, run.id)


def _finish_run(event: Event, *, attempt: Attempt, run: DagRun, result: ApplyResult) -> None:
    status = event.status if event.status in _ATTEMPT_END else RunStatus.FAILED
    # Compare-and-set on the attempt number: only the current attempt can end the run,
    # which is what keeps a run from being completed twice.
    ended = DagRun.objects.filter(
        pk=run.pk, attempt=attempt.number, status=RunStatus.RUNNING
    ).update(
        status=status,
        finished_at=event.at,
        error=event.error[:10000],
        outputs=dict(event.outputs),
        waiting_reason="",
    )
    Attempt.objects.filter(pk=attempt.pk).update(
        status=_ATTEMPT_END[status], finished_at=event.at, end_reason=event.error[:10000]
    )
    if not ended:
        return
    # Steps never reported finished, in one UPDATE whatever their number. The engine names
    # their state (cancelled after a cancel or a DAG timeout, where the run itself failed);
    # a report without it (a crash, a worker before the field) keeps the old rule.
    leftover = event.unstarted_status or (
        StepStatus.CANCELLED if status == RunStatus.CANCELLED else StepStatus.SKIPPED
    )
    if leftover not in _LEFTOVER_STATES:  # a worker cannot leave steps running forever
        leftover = StepStatus.CANCELLED
    StepRun.objects.filter(run=run).filter(
        Q(status=StepStatus.PENDING) | Q(status=StepStatus.RUNNING)
    ).update(status=leftover, finished_at=event.at, error=event.error[:10000])
    result.finished_runs.append(run.id)
    logger.info("run %s %s (attempt %d)", run.id, status, attempt.number)


def _append_log(log_dir: Path, run_id: str, attempt: int, event: Event) -> None:
    path = log_dir / step_log_path(run_id, attempt, event.step, event.retry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        size = fh.tell()
        end = event.offset + len(event.data)
        if end <= size:
            return  # replay of bytes already written
        skip = max(0, size - event.offset)
        fh.write(event.data[skip:])


def step_tries(step: StepRun) -> int:
    """How many tries of the step its current attempt started (0 before it started)."""
    return step.retries + 1 if step.log_path else 0


@dataclass(frozen=True)
class LogChunk:
    """Bytes [start, end) of a step's log file, decoded; `end` is where a follower asks next."""

    text: str
    start: int
    end: int


def _utf8_start(data: bytes) -> int:
    """Bytes to skip so a chunk cut mid-file does not begin inside a character."""
    skip = 0
    while skip < min(len(data), 3) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return skip


def _utf8_end(data: bytes) -> int:
    """Length of `data` without a trailing, still incomplete character (the writer may be in
    the middle of it); the follower reads those bytes again on its next call."""
    for back in range(1, min(len(data), 4) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: keep looking for the lead byte
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if back < needed else len(data)
        return len(data)
    return len(data)


def read_step_log_chunk(
    log_dir: Path,
    step: StepRun,
    *,
    offset: int = 0,
    limit: int = 1 << 20,
    try_number: int | None = None,
) -> LogChunk:
    """The log from byte `offset` on, but never more than its last `limit` bytes.

    A follower passes the `end` of its last chunk as the next `offset`, so each poll reads
    only what is new; one that fell far behind skips ahead to the bounded tail. An offset past
    the end (the file was replaced) also starts over at the tail.
    """
    if not step.log_path:
        return LogChunk("", 0, 0)
    relative = step.log_path
    if try_number is not None:
        relative = step_log_path(step.run_id, step.attempt, step.name, try_number - 1)
    try:
        with open(log_dir / relative, "rb") as fh:
            size = fh.seek(0, 2)
            start = max(0, size - limit) if offset > size else max(offset, size - limit)
            fh.seek(start)
            data = fh.read(size - start)
    except FileNotFoundError:
        return LogChunk("", 0, 0)
    skip = _utf8_start(data) if start not in (0, offset) else 0
    keep = _utf8_end(data)
    return LogChunk(
        data[skip:keep].decode("utf-8", errors="replace"), start + skip, start + max(skip, keep)
    )


def read_step_log(
    log_dir: Path, step: StepRun, *, limit: int = 1 << 20, try_number: int | None = None
) -> str:
    """The tail of a step's log (at most `limit` bytes), decoded leniently.

    The last try's by default; `try_number` (1-based) picks an earlier try of the attempt.
    """
    return read_step_log_chunk(log_dir, step, limit=limit, try_number=try_number).text
