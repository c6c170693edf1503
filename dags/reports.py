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
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from controlplane.core.events import (
    ATTEMPT_STARTED,
    RUN_FINISHED,
    STEP_FINISHED,
    STEP_LOG,
    STEP_STARTED,
    Event,
)
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from dags import sql
from dags.models import Attempt, AttemptStatus, DagRun, RunStatus, StepRun, StepStatus
from dags.runs import TaskPayload

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
    # A run of the batch whose attempt is another worker's: then nothing of it was applied.
    foreign_run: str = ""
    # Claim on report: queued runs claimed for the sender in the same transaction.
    tasks: list[TaskPayload] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """One report's events and the worker that sent it (None: the local executor, trusted).

    `want`: how many queued runs the worker would take back in the reply (claim on report).
    """

    events: Sequence[Event]
    worker_id: str | None = None
    want: int = 0


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


def apply_events(
    events: Iterable[Event], *, log_dir: Path, worker_id: str | None = None
) -> ApplyResult:
    """Apply a batch in order; see the module docstring for replay and rejection rules.

    With `worker_id`, a batch naming another worker's attempt is refused whole
    (`foreign_run`), checked in the same SELECT that reads the attempts."""
    return apply_batches([Report(list(events), worker_id)], log_dir=log_dir)[0]


def apply_batches(
    reports: Sequence[Report],
    *,
    log_dir: Path,
    then: Callable[[list[ApplyResult]], None] | None = None,
    write_logs: bool = True,
) -> list[ApplyResult]:
    """Apply several reports together; each gets the result it would have got alone.

    However many attempts and events they hold, it costs one transaction and a fixed
    handful of statements: one SELECT of the attempts (with their runs' current attempt and
    status, and the worker each is assigned to), then one `executemany` per table: the
    steps, the runs (starts and ends), the steps an ending run leaves over (only if any),
    the attempts. Events are folded in order first, so a fast run's four events (attempt
    started, step started, step finished, run finished) change each of its rows once. An
    event sent twice (a worker's retry racing its first send) is applied once.

    `then` is called with the results inside the same transaction, once they are applied:
    the coordinator claims the slots the reports freed there, so a finished run and its
    slot's next run cost one commit, not two. `write_logs=False`: the caller wrote the
    reports' log chunks already (`write_report_logs`), before its transaction began.
    """
    # Log files first and outside any transaction: a slow disk must not hold the database
    # (SQLite's single write lock above all), and offsets make the writes idempotent.
    if write_logs:
        write_report_logs(reports, log_dir=log_dir)
    ending = {e.attempt_token for r in reports for e in r.events if e.kind == RUN_FINISHED}
    tokens = list({e.attempt_token: None for r in reports for e in r.events})
    # One transaction for all: every write transaction queues for SQLite's single write
    # lock, so fewer, larger ones are what raise throughput. Inside a caller's transaction
    # (the group commit's) no savepoint: a failure fails the whole group.
    with transaction.atomic(savepoint=False):
        found = _current_attempts(tokens, ending=list(ending))
        foreign = [_foreign_run(report, found) for report in reports]
        by_token: dict[str, dict[int, Event]] = {}
        for report, refused in zip(reports, foreign, strict=True):
            if refused:
                continue
            for event in report.events:
                by_token.setdefault(event.attempt_token, {}).setdefault(event.seq, event)
        merged = {token: [seen[seq] for seq in sorted(seen)] for token, seen in by_token.items()}
        finished = _apply_merged(merged, found=found)
        results = [
            ApplyResult(foreign_run=refused)
            if refused
            else _result_of(report.events, found=found, finished=finished)
            for report, refused in zip(reports, foreign, strict=True)
        ]
        if then is not None:
            then(results)
    return results


def _foreign_run(report: Report, found: Mapping[str, _Current]) -> str:
    """A run of the report whose attempt another worker holds ("" if none)."""
    if report.worker_id is None:
        return ""
    for event in report.events:
        current = found.get(event.attempt_token)
        if current is not None and current.worker_id != report.worker_id:
            return current.run_id
    return ""


def _result_of(
    batch: Sequence[Event], *, found: Mapping[str, _Current], finished: dict[str, str]
) -> ApplyResult:
    """What one report's batch got: replays acked, fresh events applied or their token
    rejected (unknown, or no longer the run's current attempt)."""
    result = ApplyResult()
    by_token: dict[str, list[Event]] = {}
    for event in batch:
        by_token.setdefault(event.attempt_token, []).append(event)
    for token, events in by_token.items():
        current = found.get(token)
        if current is None:
            result.rejected_tokens.add(token)
            continue
        fresh = sum(1 for e in events if e.seq > current.last_event_seq)
        result.applied += len(events) - fresh
        if not fresh:
            continue
        if not current.is_current:
            result.rejected_tokens.add(token)
            continue
        result.applied += fresh
        if token in finished and any(e.kind == RUN_FINISHED for e in events):
            result.finished_runs.append(finished[token])
    return result


# Events one group commit takes at most; a group over it leaves the rest to the next.
GROUP_MAX_EVENTS = 5000


@dataclass
class _Pending:
    report: Report
    done: bool = False
    lead: bool = False  # handed the writing by the writer before it
    result: ApplyResult | None = None
    error: BaseException | None = None


class GroupCommit:
    """Group commit for concurrent reports: what arrives while one group is being written
    is written next, together, as one `apply` (one transaction, one statement per table),
    instead of one transaction per report queueing for the write lock.

    No thread of its own: a caller that finds nobody writing writes, and the others wait
    for their result. A writer writes until its own report is stored, then hands the
    writing to the first waiting caller, so nobody writes for others for ever.

    The writer takes a group, does its `prepare` (log files) outside any transaction, then
    enters `hold`, which begins the write transaction (the coordinator's: its dispatch lock,
    then `transaction.atomic()`); the reports that arrived while it waited for the write
    lock join the group then (those without log chunks, whose files must not be written
    inside it), and `apply` runs inside. So the longer the lock is busy, the larger the
    group that waits for it: under load the coordinator's report transactions had held
    SQLite's lock for a third of the time, three runs each (docs/benchmarks.md, session 6).

    Under load (the last group ended less than `busy_within` seconds ago) a writer first
    waits `linger` seconds, holding nothing, and what arrives meanwhile joins its group: a
    transaction and its claim pass cost about as much for one report as for several, so
    fewer, larger groups spend less of the write lock and of the CPU per run. A report after
    a quiet spell goes at once (docs/design.md, "Group linger").
    """

    def __init__(
        self,
        apply: Callable[[list[Report]], list[ApplyResult]],
        *,
        prepare: Callable[[list[Report]], None] | None = None,
        hold: Callable[[], AbstractContextManager[object]] = nullcontext,
        timeout: float = 60.0,
        linger: float = 0.0,
        busy_within: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._apply = apply
        self._prepare = prepare
        self._hold = hold
        self._timeout = timeout
        self._linger, self._busy_within = linger, busy_within
        self._clock, self._sleep = clock, sleep
        self._last_end = float("-inf")  # when the last group was settled (`clock`)
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

    def submit(self, report: Report) -> ApplyResult:
        """Apply `report` (with whatever else is waiting); raises what applying raised."""
        me = _Pending(report)
        with self._cond:
            self._queue.append(me)
            if self._writing:
                woken = self._cond.wait_for(lambda: me.done or me.lead, timeout=self._timeout)
                if not woken and me in self._queue:
                    self._queue.remove(me)  # never taken: nothing of it was applied
                    raise TimeoutError("report not applied: the writers before it took too long")
                if not woken and not self._cond.wait_for(lambda: me.done, self._timeout):
                    # Being written by a writer that takes too long; the worker sends it again
                    # and replays are idempotent.
                    raise TimeoutError("report not confirmed: its writer took too long")
            else:
                self._writing = True
        if not me.done:
            self._write_until(me)
        if me.error is not None:
            raise me.error
        assert me.result is not None
        return me.result

    def _write_until(self, me: _Pending) -> None:
        try:
            while not me.done:
                if self._linger and self._clock() - self._last_end < self._busy_within:
                    self._sleep(self._linger)
                group = self._take(events=0, with_logs=True)
                results: list[ApplyResult] | None = None
                error: BaseException | None = None
                try:
                    if self._prepare is not None:
                        self._prepare([p.report for p in group])
                    with self._hold():
                        group += self._take(
                            events=sum(len(p.report.events) for p in group), with_logs=False
                        )
                        results = self._apply([p.report for p in group])
                except Exception as exc:  # every caller of the group gets it; each retries
                    error = exc
                # Only now: a result handed out before the commit could still roll back.
                self._settle(group, results, error)
                self._last_end = self._clock()
        finally:
            with self._cond:
                if self._queue:
                    self._queue[0].lead = True
                else:
                    self._writing = False
                self._cond.notify_all()

    def _take(self, *, events: int, with_logs: bool) -> list[_Pending]:
        """Queued reports, oldest first, while the group has under GROUP_MAX_EVENTS events
        (`events` so far); `with_logs=False` passes over those carrying log chunks."""
        group: list[_Pending] = []
        with self._cond:
            left: list[_Pending] = []
            for pending in self._queue:
                if events >= GROUP_MAX_EVENTS or (not with_logs and _has_logs(pending.report)):
                    left.append(pending)
                    continue
                group.append(pending)
                events += len(pending.report.events)
            self._queue = left  # one pass: a fleet's reports may queue by the hundred
        return group

    def _settle(
        self,
        group: list[_Pending],
        results: list[ApplyResult] | None,
        error: BaseException | None,
    ) -> None:
        with self._cond:
            for i, pending in enumerate(group):
                if results is not None:
                    pending.result = results[i]
                else:
                    pending.error = error or RuntimeError("report group not applied")
                pending.done = True
            self._cond.notify_all()


@dataclass
class _Current:
    """An attempt as the batch's SELECT found it, with its run's current attempt."""

    id: int
    number: int
    status: str
    last_event_seq: int
    run_id: str
    run_attempt: int
    run_status: str
    worker_id: str
    cancel_requested: bool
    # Steps still pending or running (read only for attempts whose batch ends the run).
    unfinished: set[str] = field(default_factory=set)

    @property
    def is_current(self) -> bool:
        """Still the run's current attempt, and not ended: its reports may change the run."""
        return self.run_attempt == self.number and self.status in ACTIVE_ATTEMPT_STATUSES


_ATTEMPT_COLUMNS = (
    "a.id, a.token, a.number, a.status, a.last_event_seq, a.run_id, r.attempt, r.status, "
    "a.worker_id, r.cancel_requested"
)


def _current_attempts(tokens: list[str], *, ending: list[str]) -> dict[str, _Current]:
    """One SELECT: the batch's attempts, and for those that end their run the steps left."""
    params: list[object] = []
    if ending:
        step = (
            f"s.name FROM {sql.table(Attempt)} a JOIN {sql.table(DagRun)} r ON r.id = a.run_id "
            f"LEFT JOIN {sql.table(StepRun)} s ON s.run_id = a.run_id AND s.status IN (%s, %s) "
            f"AND a.token IN ({sql.marks(len(ending))})"
        )
        params += [StepStatus.PENDING, StepStatus.RUNNING, *ending]
    else:
        step = f"NULL FROM {sql.table(Attempt)} a JOIN {sql.table(DagRun)} r ON r.id = a.run_id"
    rows = sql.fetch(
        f"SELECT {_ATTEMPT_COLUMNS}, {step} WHERE a.token IN ({sql.marks(len(tokens))})",
        [*params, *tokens],
    )
    found: dict[str, _Current] = {}
    for pk, token, number, status, seq, run_id, run_attempt, run_status, wid, flag, step in rows:
        current = found.get(token)
        if current is None:
            current = found[token] = _Current(
                pk, number, status, seq, run_id, run_attempt, run_status, wid, bool(flag)
            )
        if step is not None:
            current.unfinished.add(step)
    return found


@dataclass
class _Changes:
    """What a batch does to each row, folded event by event; written per table at the end."""

    attempts: dict[tuple[object, ...], dict[str, object]] = field(default_factory=dict)
    steps: dict[tuple[object, ...], dict[str, object]] = field(default_factory=dict)
    # run id -> when its (first applied) attempt_started says it started
    run_started: dict[str, object] = field(default_factory=dict)
    # run id -> (ending event, the status it ends the run in, its attempt's token, the attempt
    # as found)
    run_ends: dict[str, tuple[Event, str, str, _Current]] = field(default_factory=dict)


def _apply_merged(
    by_token: dict[str, list[Event]], *, found: Mapping[str, _Current]
) -> dict[str, str]:
    """Apply the reports merged by token; returns, per token, the run its attempt ended."""
    changes = _Changes()
    for token, batch in by_token.items():
        current = found.get(token)
        if current is None:
            continue
        fresh = [e for e in batch if e.seq > current.last_event_seq]
        if not fresh:
            continue
        if not current.is_current:
            logger.info(
                "rejected %d report(s) from superseded attempt #%d of run %s",
                len(fresh),
                current.number,
                current.run_id,
            )
            continue
        _fold(fresh, token=token, current=current, changes=changes)
    return _write_changes(changes)


def _fold(fresh: list[Event], *, token: str, current: _Current, changes: _Changes) -> None:
    """Fold one attempt's new events, in order, into the rows they change."""
    run_id, number = current.run_id, current.number
    attempt = changes.attempts.setdefault((current.id,), {})
    status = current.status
    for event in fresh:
        at = sql.when_datetime(event.at)
        if event.kind == ATTEMPT_STARTED:
            if status == AttemptStatus.ASSIGNED:
                status = AttemptStatus.RUNNING
                attempt.update(status=status, started_at=at)
            changes.run_started.setdefault(run_id, at)
        elif event.kind == STEP_STARTED:
            changes.steps.setdefault((run_id, event.step), {}).update(
                status=StepStatus.RUNNING,
                started_at=at,
                finished_at=None,
                exit_code=None,
                error="",
                attempt=number,
                retries=event.retry,
                log_path=step_log_path(run_id, number, event.step, event.retry),
            )
        elif event.kind == STEP_FINISHED:
            changes.steps.setdefault((run_id, event.step), {}).update(
                status=event.status,
                exit_code=event.exit_code,
                finished_at=at,
                attempt=number,
                output_value=event.output_value or "",
                error=event.error[:10000],
            )
        elif event.kind == RUN_FINISHED:
            ended = _end_status(event, current)
            status = _ATTEMPT_END[ended]
            attempt.update(status=status, finished_at=at, end_reason=event.error[:10000])
            changes.run_ends.setdefault(run_id, (event, ended, token, current))
        elif event.kind != STEP_LOG:
            logger.warning("ignoring unknown report kind %r for run %s", event.kind, run_id)
    attempt["last_event_seq"] = fresh[-1].seq


# One statement shape per table whatever the batch holds (a run starting, one ending, or
# both), so a batch is one `executemany` per table: NULL in a COALESCE keeps the column.
# Every step event sets status, attempt, exit_code, finished_at and error.
_STEP_UPDATE = (
    "UPDATE {table} SET status = %s, attempt = %s, exit_code = %s, finished_at = %s, "
    "error = %s, output_value = COALESCE(%s, output_value), "
    "started_at = COALESCE(%s, started_at), retries = COALESCE(%s, retries), "
    "log_path = COALESCE(%s, log_path) WHERE run_id = %s AND name = %s"
)
_STEP_OPTIONAL = ("output_value", "started_at", "retries", "log_path")
# A run's end is a compare-and-set on the attempt number (the second condition): only the
# current attempt can end the run, which is what keeps a run from being completed twice.
# A row that only records the start passes TRUE for the first condition.
_RUN_UPDATE = (
    "UPDATE {table} SET started_at = COALESCE(started_at, %s), status = COALESCE(%s, status), "
    "finished_at = COALESCE(%s, finished_at), error = COALESCE(%s, error), "
    "outputs = COALESCE(%s, outputs), waiting_reason = COALESCE(%s, waiting_reason) "
    "WHERE id = %s AND (%s OR (attempt = %s AND status = %s))"
)
# The status guard keeps an attempt superseded meanwhile (by another coordinator's
# failover, on PostgreSQL) superseded.
_ATTEMPT_UPDATE = (
    "UPDATE {table} SET status = COALESCE(%s, status), started_at = COALESCE(%s, started_at), "
    "finished_at = COALESCE(%s, finished_at), end_reason = COALESCE(%s, end_reason), "
    "last_event_seq = %s WHERE id = %s AND status IN ({active})"
)
_ATTEMPT_OPTIONAL = ("status", "started_at", "finished_at", "end_reason")
# Steps never reported finished, in one UPDATE whatever their number, and only where this
# attempt's compare-and-set ended the run.
_LEFTOVER_UPDATE = (
    "UPDATE {table} SET status = %s, finished_at = %s, error = %s "
    "WHERE run_id = %s AND status IN ({open}) "
    "AND EXISTS (SELECT 1 FROM {runs} r WHERE r.id = %s AND r.attempt = %s AND r.status = %s)"
)


def _end_status(event: Event, current: _Current) -> str:
    """The status a run ends in. A run whose cancel was asked for and that did not succeed
    ended because of the cancel, even where a step saw it first: a child cancelled with
    its parent fails the parent's call step before the parent's own watcher notices."""
    status = event.status if event.status in _ATTEMPT_END else RunStatus.FAILED
    if status == RunStatus.FAILED and current.cancel_requested:
        return RunStatus.CANCELLED
    return status


def _write_changes(changes: _Changes) -> dict[str, str]:
    """Write the folded changes; returns, per token, the run its attempt ended."""
    # Steps before the runs' ends: what an ending run leaves over is what is still unfinished
    # after the batch's own step events.
    sql.execute_many(
        _STEP_UPDATE.format(table=sql.table(StepRun)),
        [
            (
                v["status"],
                v["attempt"],
                v["exit_code"],
                v["finished_at"],
                v["error"],
                *(v.get(c) for c in _STEP_OPTIONAL),
                run_id,
                name,
            )
            for (run_id, name), v in changes.steps.items()
        ],
    )
    runs, leftovers = [], []
    finished: dict[str, str] = {}
    for run_id, (event, status, token, current) in changes.run_ends.items():
        if current.run_status != RunStatus.RUNNING:
            continue  # the compare-and-set would fail: someone ended it already
        number = current.number
        at, error = sql.when_datetime(event.at), event.error[:10000]
        outputs = sql.as_json(DagRun, "outputs", dict(event.outputs))
        started = changes.run_started.pop(run_id, None)
        runs.append(
            (started, status, at, error, outputs, "", run_id, False, number, RunStatus.RUNNING)
        )
        finished[token] = run_id
        logger.info("run %s %s (attempt %d)", run_id, status, number)
        if _leaves_steps(current, changes.steps):
            leftovers.append(
                (_leftover_state(event, status), at, error, run_id, run_id, number, status)
            )
    for run_id, started in changes.run_started.items():
        runs.append((started, None, None, None, None, None, run_id, True, 0, ""))
    sql.execute_many(_RUN_UPDATE.format(table=sql.table(DagRun)), runs)
    open_states = ", ".join(f"'{s}'" for s in (StepStatus.PENDING, StepStatus.RUNNING))
    sql.execute_many(
        _LEFTOVER_UPDATE.format(table=sql.table(StepRun), open=open_states, runs=sql.table(DagRun)),
        leftovers,
    )
    active = ", ".join(f"'{s}'" for s in ACTIVE_ATTEMPT_STATUSES)
    sql.execute_many(
        _ATTEMPT_UPDATE.format(table=sql.table(Attempt), active=active),
        [
            (*(v.get(c) for c in _ATTEMPT_OPTIONAL), v["last_event_seq"], pk)
            for (pk,), v in changes.attempts.items()
        ],
    )
    return finished


def _leaves_steps(current: _Current, steps: dict[tuple[object, ...], dict[str, object]]) -> bool:
    """Whether the run's end leaves steps pending or running, after the batch's step events."""
    open_states = (StepStatus.PENDING, StepStatus.RUNNING)
    for (run_id, _name), values in steps.items():
        if run_id == current.run_id and values.get("status") in open_states:
            return True
    return any(
        steps.get((current.run_id, name), {}).get("status", StepStatus.RUNNING) in open_states
        for name in current.unfinished
    )


def _leftover_state(event: Event, status: str) -> str:
    """What steps never reported finished become. The engine names their state (cancelled
    after a cancel or a DAG timeout, where the run itself failed); a report without it (a
    crash, a worker before the field) keeps the old rule."""
    leftover = event.unstarted_status or (
        StepStatus.CANCELLED if status == RunStatus.CANCELLED else StepStatus.SKIPPED
    )
    if leftover not in _LEFTOVER_STATES:  # a worker cannot leave steps running forever
        leftover = StepStatus.CANCELLED
    return leftover


def write_report_logs(reports: Sequence[Report], *, log_dir: Path) -> None:
    """Append the log chunks of attempts that are current and the sender's (checked again
    on apply); nothing to do (and no query) for reports without any."""
    if not any(_has_logs(report) for report in reports):
        return
    tokens = list({e.attempt_token: None for r in reports for e in r.events})
    rows = sql.fetch(
        f"SELECT a.token, a.run_id, a.number, a.status, a.last_event_seq, r.attempt, a.worker_id "
        f"FROM {sql.table(Attempt)} a JOIN {sql.table(DagRun)} r ON r.id = a.run_id "
        f"WHERE a.token IN ({sql.marks(len(tokens))})",
        tokens,
    )
    attempts = {row[0]: row[1:] for row in rows}
    written: set[tuple[str, int]] = set()
    for report in reports:
        owners = {
            attempts[e.attempt_token][-1] for e in report.events if e.attempt_token in attempts
        }
        if report.worker_id is not None and owners - {report.worker_id}:
            continue  # refused whole on apply
        for event in report.events:
            if event.kind != STEP_LOG or event.attempt_token not in attempts:
                continue
            run_id, number, status, last_seq, run_attempt, _ = attempts[event.attempt_token]
            if run_attempt != number or status not in ACTIVE_ATTEMPT_STATUSES:
                continue
            if event.seq > last_seq and (event.attempt_token, event.seq) not in written:
                written.add((event.attempt_token, event.seq))
                _append_log(log_dir, run_id, number, event)


def _has_logs(report: Report) -> bool:
    return any(e.kind == STEP_LOG for e in report.events)


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
