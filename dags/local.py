"""Local execution: runs that stay on the main instance, or in `manage.py start`'s process.

Reports go straight into the database through `dags.reports`, the same path worker
reports take, so a local run and a distributed one look the same everywhere.
Children of a locally executed parent that are local themselves run inline in the parent's
thread; distributed children are queued for the coordinator and waited for.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from django.db import close_old_connections, connection

from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from controlplane.core.events import STEP_FINISHED, Event, EventReporter
from controlplane.core.execution import (
    ChildRequest,
    ChildResult,
    RunContext,
    RunOutcome,
    StepOutcome,
    execute_run,
)
from controlplane.core.registry import pid_alive
from controlplane.core.spec import DagSpecError, parse_stored_dag_file
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from controlplane.failover import supersede_attempt
from controlplane.lease import (
    delete_executor,
    expire_executor,
    forget_executors,
    stale_executors,
)
from controlplane.loops import run_loop
from dags.models import Attempt, DagRun, ExecutionMode, RunStatus, StepStatus
from dags.reports import apply_events
from dags.runs import completed_steps, request_cancel, start_attempt, start_child_run

logger = logging.getLogger(__name__)

# Who holds a local attempt: the main instance, or one `manage.py start` process.
LOCAL_WORKER_ID = "local"


def cli_executor_id() -> str:
    return f"local:{socket.gethostname()}:{os.getpid()}"


CANCEL_CHECK_SECONDS = 0.3
CHILD_POLL_SECONDS = 0.2
CHILD_CANCEL_WAIT_SECONDS = 30.0
RECOVERY_SECONDS = 5.0
# Local reports are batched like a worker's: one transaction per batch, not per event.
REPORT_BATCH_EVENTS = 500
REPORT_FLUSH_SECONDS = 0.2
REPORT_CLOSE_SECONDS = 60.0
_DURABLE_STEP_ENDS = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED})


class BatchedReports:
    """A local attempt's reports, applied in batches as a worker's are.

    Step threads only queue events (under the reporter's lock, so that must stay cheap);
    one flusher thread applies what has accumulated every REPORT_FLUSH_SECONDS, at most
    REPORT_BATCH_EVENTS per `apply_events` call, i.e. per transaction. `close` applies the
    rest, so the run's final state is stored when `execute_attempt` returns.
    """

    def __init__(self, *, log_dir: Path, name: str) -> None:
        self.log_dir = log_dir
        self._events: deque[Event] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._urgent = False
        self._queued = self._stored = 0  # events put / applied so far
        self._thread = threading.Thread(target=self._loop, name=f"reports-{name}", daemon=True)
        self._thread.start()

    def put(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._queued += 1
            if len(self._events) >= REPORT_BATCH_EVENTS:
                self._cond.notify_all()
            if event.kind == STEP_FINISHED and event.status in _DURABLE_STEP_ENDS:
                # A step that ran is stored before its dependents start, as before batching:
                # a run resumed after a crash must not run it again.
                target = self._queued
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._stored >= target, timeout=REPORT_CLOSE_SECONDS)

    def flush_once(self) -> int:
        """Apply one batch in one transaction. Returns how many events it held."""
        with self._cond:
            batch = [self._events[i] for i in range(min(len(self._events), REPORT_BATCH_EVENTS))]
        if not batch:
            return 0
        apply_events(batch, log_dir=self.log_dir)
        with self._cond:
            for _ in batch:
                self._events.popleft()
            self._stored += len(batch)
            self._cond.notify_all()
        return len(batch)

    def close(self, *, timeout: float = REPORT_CLOSE_SECONDS) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("local reports not stored within %.0f s; giving up", timeout)

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: (
                            self._closing
                            or self._urgent
                            or len(self._events) >= REPORT_BATCH_EVENTS
                        ),
                        timeout=REPORT_FLUSH_SECONDS,
                    )
                    closing, self._urgent = self._closing, False
                try:
                    while self.flush_once() >= REPORT_BATCH_EVENTS:
                        pass
                except Exception:  # e.g. the database is locked: keep the events, retry
                    logger.exception("storing local run reports failed; retrying")
                    time.sleep(REPORT_FLUSH_SECONDS)
                    continue
                if closing and not self._events:
                    return
        finally:
            connection.close()  # a thread that ends closes its connection


def db_reporter(reports: BatchedReports, run_id: str, token: str, config: Config) -> EventReporter:
    """A reporter whose events reach the database through `reports`."""
    return EventReporter(
        reports.put,
        run_id=run_id,
        token=token,
        max_step_log_bytes=config.logs.max_step_bytes,
    )


class DbChildLauncher:
    """Starts a sub-DAG run from a locally executed parent and waits for it."""

    def __init__(
        self, config: Config, parent: DagRun, *, wake: Callable[[], None], executor_id: str
    ) -> None:
        self.config, self.parent, self.wake = config, parent, wake
        self.executor_id = executor_id

    def run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
        # Called in a step (or parallel item) thread that ends with the step: close its
        # connection rather than leave one open per finished step.
        try:
            return self._run_child(request, cancel=cancel)
        finally:
            connection.close()

    def _run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
        try:
            child = start_child_run(
                self.parent,
                step=request.step,
                item_index=request.item_index,
                dag_name=request.dag_name,
                params=request.params,
                selector=request.worker_selector,
                config=self.config,
                now=utcnow(),
            )
        except Exception as exc:  # a child that cannot start fails the step, not the parent
            return ChildResult(run_id="", status=RunStatus.FAILED, error=str(exc))
        if child.execution_mode == ExecutionMode.LOCAL and child.status == RunStatus.QUEUED:
            attempt = start_attempt(
                child, now=utcnow(), mode=ExecutionMode.LOCAL, worker_id=self.executor_id
            )
            if attempt is not None:
                execute_attempt(child, attempt, self.config, cancel=cancel, wake=self.wake)
        else:
            self.wake()
        return wait_for_run(child.id, cancel=cancel)


def wait_for_run(run_id: str, *, cancel: threading.Event) -> ChildResult:
    cancel_sent_at: float | None = None
    while True:
        run = DagRun.objects.get(pk=run_id)
        if run.is_terminal:
            return ChildResult(run.id, run.status, dict(run.outputs), run.error)
        if cancel.is_set():
            if cancel_sent_at is None:
                request_cancel(run_id, now=utcnow())
                cancel_sent_at = time.monotonic()
            elif time.monotonic() - cancel_sent_at > CHILD_CANCEL_WAIT_SECONDS:
                return ChildResult(run.id, RunStatus.CANCELLED, {}, "child did not stop in time")
        time.sleep(CHILD_POLL_SECONDS)


def execute_attempt(
    run: DagRun,
    attempt: Attempt,
    config: Config,
    *,
    cancel: threading.Event,
    wake: Callable[[], None],
) -> RunOutcome:
    """Run a claimed local attempt to the end, reporting into the database."""
    reports = BatchedReports(log_dir=Path(config.paths.log_dir), name=run.id)
    try:
        return _execute_attempt(run, attempt, config, cancel=cancel, wake=wake, reports=reports)
    finally:
        reports.close()


def _execute_attempt(
    run: DagRun,
    attempt: Attempt,
    config: Config,
    *,
    cancel: threading.Event,
    wake: Callable[[], None],
    reports: BatchedReports,
) -> RunOutcome:
    reporter = db_reporter(reports, run.id, attempt.token, config)
    reporter.attempt_started(at=utcnow())
    try:
        dag_file = parse_stored_dag_file(run.spec, source=run.source)
    except DagSpecError as exc:
        outcome = RunOutcome(status=RunStatus.FAILED, error=f"invalid DAG: {exc}")
        reporter.run_finished(outcome, at=utcnow())
        return outcome
    dag = dag_file.get(run.dag_name) or dag_file.main
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_cancel, args=(run.id, cancel, done), name=f"cancel-{run.id}", daemon=True
    )
    watcher.start()
    logger.info("local run %s of %s attempt %d started", run.id, run.dag_name, attempt.number)
    try:
        outcome = execute_run(
            dag,
            context=RunContext(
                dag_run_id=run.id,
                root_dag_run_id=run.root_run_id,
                parent_dag_run_id=run.parent_id or "",
                worker_id=LOCAL_WORKER_ID,
                params=run.params,
            ),
            reporter=reporter,
            launcher=DbChildLauncher(config, run, wake=wake, executor_id=attempt.worker_id),
            cancel=cancel,
            completed={
                s.name: StepOutcome(s.status, s.exit_code, s.output_value or None)
                for s in completed_steps(run)
            },
        )
    except Exception as exc:  # the run must end in a terminal state whatever happened
        logger.exception("local run %s crashed", run.id)
        outcome = RunOutcome(status=RunStatus.FAILED, error=f"executor error: {exc}")
    finally:
        done.set()
    logger.info("local run %s attempt %d %s", run.id, attempt.number, outcome.status)
    reporter.run_finished(outcome, at=utcnow())
    return outcome


def _watch_cancel(run_id: str, cancel: threading.Event, done: threading.Event) -> None:
    try:
        while not done.wait(CANCEL_CHECK_SECONDS):
            close_old_connections()
            if DagRun.objects.filter(pk=run_id, cancel_requested=True).exists():
                cancel.set()
                return
    finally:
        connection.close()


def recover_lost_local_attempts(*, now: datetime, started_at: datetime, mine: set[str]) -> int:
    """Requeue local attempts whose executor is gone, to resume on this main instance.

    Lost are the main instance's own attempts from before it (re)started, and attempts of
    `manage.py start` processes (or, on PostgreSQL, other coordinators) on this host that
    have exited. Returns how many.
    """
    cli_prefix = f"local:{socket.gethostname()}:"
    lost = 0
    attempts = Attempt.objects.filter(mode=ExecutionMode.LOCAL, status__in=ACTIVE_ATTEMPT_STATUSES)
    for attempt in attempts.select_related("run"):
        holder = attempt.worker_id
        # This process's own id too: a restarted container often gets its old pid back.
        if holder in (LOCAL_WORKER_ID, cli_executor_id()):
            if attempt.created_at >= started_at or attempt.run_id in mine:
                continue
            reason = "the main instance restarted while the run was executing"
        elif holder.startswith(cli_prefix) and holder[len(cli_prefix) :].isdigit():
            if pid_alive(int(holder[len(cli_prefix) :])):
                continue
            pid = holder[len(cli_prefix) :]
            reason = f"the start command or coordinator executing it (pid {pid}) exited"
        else:
            continue
        if supersede_attempt(attempt, reason=reason, now=now, count_as_redispatch=False):
            lost += 1
    return lost


def recover_dead_coordinators_local_attempts(*, now: datetime) -> int:
    """Lease holder only: requeue the local attempts of coordinators, on any host, whose
    liveness row went stale (`controlplane.lease.renew_executor`), then drop those rows.

    A live coordinator renews its row every lease round, so its attempts are never taken;
    an executor without a row (a `manage.py start` process) is left to the same-host
    recovery above. Idempotent: a second call finds neither the rows nor active attempts.
    """
    dead = stale_executors(now=now)
    if not dead:
        return 0
    lost = 0
    attempts = Attempt.objects.filter(
        mode=ExecutionMode.LOCAL, status__in=ACTIVE_ATTEMPT_STATUSES, worker_id__in=dead
    )
    for attempt in attempts.select_related("run"):
        reason = f"the coordinator executing it ({attempt.worker_id}) stopped renewing its liveness"
        if supersede_attempt(attempt, reason=reason, now=now, count_as_redispatch=False):
            lost += 1
    forget_executors(dead, now=now)
    return lost


def retire_executor(executor_id: str, *, now: datetime) -> None:
    """At a clean stop, after the local runs ended: drop the liveness row, or, if some are
    still active (a run outlived the grace), let it run out so the lease holder recovers them."""
    active = Attempt.objects.filter(
        mode=ExecutionMode.LOCAL, status__in=ACTIVE_ATTEMPT_STATUSES, worker_id=executor_id
    )
    if active.exists():
        expire_executor(executor_id, now=now)
    else:
        delete_executor(executor_id)


class LocalExecutor:
    """The main instance's executor: takes queued local runs and runs them in threads."""

    def __init__(
        self,
        config: Config,
        *,
        stop: threading.Event,
        max_runs: int = 32,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.config, self.stop, self.max_runs, self.wake = config, stop, max_runs, wake
        self._running: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.Lock()
        self.started_at = utcnow()
        self._next_recovery = 0.0
        # On SQLite this is the only coordinator and "local" means "this main instance" (its
        # restart recovery relies on that). On PostgreSQL several coordinators may each run
        # local runs: each holds them under its own process id, so none takes another's
        # running attempts for lost ones (docs/design.md, "Several coordinators").
        self.executor_id = LOCAL_WORKER_ID if connection.vendor == "sqlite" else cli_executor_id()

    def start(self) -> threading.Thread:
        return run_loop("local-executor", self.run_once, stop=self.stop, interval=0.25)

    def run_once(self) -> int:
        """Claim and start queued local runs up to the concurrency cap. Returns how many."""
        with self._lock:
            self._running = {k: v for k, v in self._running.items() if v[0].is_alive()}
            free = self.max_runs - len(self._running)
            mine = set(self._running)
        if time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + RECOVERY_SECONDS
            if recover_lost_local_attempts(now=utcnow(), started_at=self.started_at, mine=mine):
                self.wake()
        if free <= 0 or self.stop.is_set():
            return 0
        queued = DagRun.objects.filter(
            status=RunStatus.QUEUED, execution_mode=ExecutionMode.LOCAL, cancel_requested=False
        ).order_by("queued_at")[:free]
        started = 0
        for run in queued:
            attempt = start_attempt(
                run, now=utcnow(), mode=ExecutionMode.LOCAL, worker_id=self.executor_id
            )
            if attempt is None:
                continue
            cancel = threading.Event()
            thread = threading.Thread(
                target=self._execute,
                args=(run, attempt, cancel),
                name=f"local-{run.id}",
                daemon=True,
            )
            with self._lock:
                self._running[run.id] = (thread, cancel)
            thread.start()
            started += 1
        return started

    def _execute(self, run: DagRun, attempt: Attempt, cancel: threading.Event) -> None:
        try:
            execute_attempt(run, attempt, self.config, cancel=cancel, wake=self.wake)
        finally:
            connection.close()

    def stop_all(self, *, grace: float) -> None:
        """Give local runs `grace` seconds, then cancel them and wait for their reports."""
        with self._lock:
            running = list(self._running.values())
        deadline = time.monotonic() + grace
        for thread, _ in running:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for _, cancel in running:
            cancel.set()
        for thread, _ in running:
            thread.join(timeout=10)
