"""The worker agent: register, heartbeat, long-poll for runs, execute them, report back.

It talks to the control plane over gRPC only and imports no model: a worker host needs no
database. Reports go through a bounded outbox that survives coordinator restarts: events
are kept until the coordinator acknowledges them, and replayed after a reconnect (the
coordinator applies each sequence number once).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc

from controlplane.core import pool, registry
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from controlplane.core.events import RUN_FINISHED, STEP_LOG, Event, EventReporter
from controlplane.core.execution import (
    ChildRequest,
    ChildResult,
    RunContext,
    RunOutcome,
    StepOutcome,
    execute_run,
)
from controlplane.core.rpc.client import (
    Backoff,
    CoordinatorClient,
    CoordinatorRefused,
    CoordinatorUnavailable,
    address_source,
    live_source,
    worker_token_source,
)
from controlplane.core.rpc.events import event_to_pb, ms
from controlplane.core.rpc.v1 import coordinator_pb2 as pb
from controlplane.core.spec import DagSpecError, parse_stored_dag_file
from controlplane.core.states import TERMINAL_RUN_STATUSES

logger = logging.getLogger(__name__)

POLL_WAIT_SECONDS = 10.0
RPC_TIMEOUT_SECONDS = 10.0
REPORT_BATCH_EVENTS = 500
REPORT_BATCH_BYTES = 4 * 1024 * 1024
# How long the first unsent event may wait for more before a Report goes out. A run that
# ends sooner (a fast step) sends attempt_started..run_finished in one Report, and a run's
# end is sent at once (it frees a slot); a long run's first report is this much later.
REPORT_LINGER_SECONDS = 0.01
CHILD_POLL_SECONDS = 0.5
CHILD_CANCEL_WAIT_SECONDS = 30.0
OUTBOX_DROP_MARKER = (
    b"\n[log output dropped here: the worker's report buffer was full while the "
    b"coordinator was unreachable]\n"
)


class Outbox:
    """Bounded FIFO of events awaiting acknowledgement.

    When full, log chunks are dropped first; state events are never dropped, since losing
    one would leave a run's state wrong rather than incomplete. The first chunk of a step
    dropped after one was kept is replaced by a short marker (same sequence number and
    offset), so the log shows where output is missing; markers may exceed the bounds, but
    there is at most one per kept chunk.
    """

    def __init__(self, *, max_events: int = 200_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_events, self.max_bytes = max_events, max_bytes
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.dropped_log_bytes = 0
        self._marked: set[tuple[str, str]] = set()  # (attempt token, step) with a marker out
        self._pending_since: float | None = None  # monotonic time the oldest unsent was put
        self._ends = 0  # run_finished events waiting: each makes the batch ready at once

    def put(self, event: Event) -> None:
        with self._cond:
            if event.kind == STEP_LOG:
                step = (event.attempt_token, event.step)
                if (
                    len(self._events) >= self.max_events
                    or self._bytes + len(event.data) > self.max_bytes
                ):
                    self.dropped_log_bytes += len(event.data)
                    if step in self._marked:
                        return
                    self._marked.add(step)
                    event = dataclasses.replace(event, data=OUTBOX_DROP_MARKER)
                else:
                    self._marked.discard(step)
            self._events.append(event)
            self._bytes += len(event.data)
            first = self._pending_since is None
            if first:
                self._pending_since = time.monotonic()
            if event.kind == RUN_FINISHED:
                self._ends += 1
            # Only what can change the report loop's mind wakes it: the first event (it
            # starts the linger) and what makes a batch ready. A step's events in between
            # would only cost the step's thread the interpreter lock while it spawns.
            if first or self._ready(self._pending_since or 0.0, float("inf")):
                self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._events), timeout=timeout)

    def ready(self, *, now: float, linger: float) -> bool:
        """Whether a Report should go now: a run ended, a batch is full, or the oldest
        unsent event has waited `linger` seconds (`now` on the monotonic clock)."""
        with self._cond:
            return self._ready(now, linger)

    def _ready(self, now: float, linger: float) -> bool:
        if not self._events:
            return False
        return (
            self._ends > 0
            or len(self._events) >= REPORT_BATCH_EVENTS
            or self._bytes >= REPORT_BATCH_BYTES
            or self._pending_since is None
            or now - self._pending_since >= linger
        )

    def wait_ready(self, timeout: float, *, linger: float) -> bool:
        """Wait up to `timeout` for an event, then up to `linger` for `ready`. True if any."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._events), timeout=timeout):
                return False
            while not self._ready(time.monotonic(), linger):
                assert self._pending_since is not None
                left = self._pending_since + linger - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
            return True

    def batch(self) -> list[Event]:
        with self._cond:
            out: list[Event] = []
            size = 0
            for event in self._events:
                if out and (
                    len(out) >= REPORT_BATCH_EVENTS or size + len(event.data) > REPORT_BATCH_BYTES
                ):
                    break
                out.append(event)
                size += len(event.data)
            return out

    def ack(self, count: int) -> None:
        with self._cond:
            for _ in range(count):
                event = self._events.popleft()
                self._bytes -= len(event.data)
                if event.kind == RUN_FINISHED:
                    self._ends -= 1
            # What stays behind (a batch was full) has waited long enough already.
            self._pending_since = self._pending_since if self._events else None
            self._cond.notify_all()

    def discard_attempt(self, token: str) -> None:
        with self._cond:
            kept = deque(e for e in self._events if e.attempt_token != token)
            self._bytes = sum(len(e.data) for e in kept)
            self._ends = sum(1 for e in kept if e.kind == RUN_FINISHED)
            self._events = kept
            if not kept:
                self._pending_since = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._events)

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._events, timeout=timeout)


class GrpcChildLauncher:
    """Sub-DAG steps on a worker: ask the coordinator for the child run, then follow it."""

    def __init__(
        self, client: CoordinatorClient, task: pb.Task, *, worker_id: str, stop: threading.Event
    ) -> None:
        self.client, self.task, self.worker_id, self.stop = client, task, worker_id, stop

    def run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
        msg = pb.StartChildRequest(
            worker_id=self.worker_id,
            parent_dag_run_id=self.task.dag_run_id,
            parent_attempt_token=self.task.attempt_token,
            step=request.step,
            dag_name=request.dag_name,
            params=dict(request.params),
            worker_selector=dict(request.worker_selector),
        )
        if request.item_index is not None:
            msg.item_index = request.item_index
        try:
            run_id = self._retrying(
                lambda: self.client.call("StartChild", msg, timeout=RPC_TIMEOUT_SECONDS), cancel
            )
        except grpc.RpcError as exc:
            return ChildResult(run_id="", status="failed", error=exc.details() or str(exc))
        if run_id is None:
            return ChildResult(run_id="", status="cancelled", error="cancelled before it started")
        return self._follow(run_id.dag_run_id, cancel)

    def _follow(self, run_id: str, cancel: threading.Event) -> ChildResult:
        cancel_sent: float | None = None
        request = pb.GetRunStatusRequest(dag_run_id=run_id, worker_id=self.worker_id)
        while True:
            try:
                status = self.client.call("GetRunStatus", request, timeout=RPC_TIMEOUT_SECONDS)
                if status.found and status.status in TERMINAL_RUN_STATUSES:
                    return ChildResult(run_id, status.status, dict(status.outputs), status.error)
                if cancel.is_set() and cancel_sent is None:
                    self.client.call(
                        "CancelRun",
                        pb.CancelRunRequest(dag_run_id=run_id, worker_id=self.worker_id),
                        timeout=RPC_TIMEOUT_SECONDS,
                    )
                    cancel_sent = time.monotonic()
            except CoordinatorUnavailable as exc:
                logger.warning("following child run %s: %s", run_id, exc)
            if (
                cancel_sent is not None
                and time.monotonic() - cancel_sent > CHILD_CANCEL_WAIT_SECONDS
            ):
                return ChildResult(run_id, "cancelled", {}, "child did not stop in time")
            time.sleep(CHILD_POLL_SECONDS)

    def _retrying(
        self, call: Callable[[], pb.StartChildResponse], cancel: threading.Event
    ) -> pb.StartChildResponse | None:
        backoff = Backoff()
        while not cancel.is_set():
            try:
                return call()
            except CoordinatorUnavailable as exc:
                logger.warning("starting a child run: %s", exc)
                cancel.wait(backoff.next_delay())
        return None


@dataclass
class ActiveRun:
    task: pb.Task
    cancel: threading.Event
    started_at: datetime
    done: threading.Event = field(default_factory=threading.Event)


class WorkerAgent:
    def __init__(
        self,
        config: Config,
        *,
        client: CoordinatorClient | None = None,
        shutdown_grace: float = 30.0,
    ) -> None:
        self.config = config
        self.worker_id = config.worker.id
        self.labels = dict(config.worker.labels)
        self.max_active_runs = config.worker.max_active_runs
        self.host = socket.gethostname()
        self.started_at = utcnow()
        self.shutdown_grace = shutdown_grace
        # The environment steps inherit: this process's, read once. Nothing here changes
        # it later, and reading (decoding) os.environ for every run was a tenth of a
        # single-step run's Python in the worker (docs/benchmarks.md).
        self.environ = dict(os.environ)
        self.client = client or CoordinatorClient(
            addresses=address_source(config),
            peer=config.peer,
            token=worker_token_source(config),
            live=live_source(config),
            who=f"worker {self.worker_id}",
        )
        # After a move to another coordinator, heartbeat there at once: the heartbeat
        # re-registers this worker with its running attempts (see _heartbeat_loop).
        self._beat_now = threading.Event()
        self.client.on_move = lambda address: self._beat_now.set()
        self.refused = ""  # why the coordinator refused this worker; it then stops
        self.outbox = Outbox()
        self.stop_event = threading.Event()  # stop taking work
        self.halt_event = threading.Event()  # stop everything (after the grace period)
        self.draining = False
        self._runs: dict[str, ActiveRun] = {}
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._registrant: registry.Registrant | None = None
        self._connected: bool | None = None

    # -- identity ---------------------------------------------------------------------------

    def info(self) -> pb.WorkerInfo:
        return pb.WorkerInfo(
            worker_id=self.worker_id,
            host=self.host,
            pid=os.getpid(),
            labels=self.labels,
            max_active_runs=self.max_active_runs,
            started_at_ms=ms(self.started_at),
        )

    def registry_record(self) -> registry.WorkerRecord:
        now = utcnow()
        return registry.WorkerRecord(
            id=self.worker_id,
            host=self.host,
            pid=os.getpid(),
            labels=self.labels,
            max_active_runs=self.max_active_runs,
            active_tasks=len(self._runs),
            status="stopping"
            if self.stop_event.is_set()
            else ("draining" if self.draining else "active"),
            started_at=self.started_at,
            last_heartbeat=now,
        )

    # -- one-step functions ---------------------------------------------------------------

    def heartbeat_once(self) -> bool:
        """Send one heartbeat and apply the reply. False when the coordinator is unreachable."""
        with self._lock:
            running = [
                pb.RunningTask(
                    dag_run_id=r.task.dag_run_id,
                    attempt_token=r.task.attempt_token,
                    started_at_ms=ms(r.started_at),
                )
                for r in self._runs.values()
            ]
        request = pb.HeartbeatRequest(
            worker=self.info(), running=running, stopping=self.stop_event.is_set()
        )
        try:
            reply = self.client.heartbeat(request, timeout=RPC_TIMEOUT_SECONDS)
        except (CoordinatorUnavailable, grpc.RpcError) as exc:
            if isinstance(exc, CoordinatorRefused) and not self.refused:
                # Revoked or never valid: stop now; the coordinator fails our runs over.
                self.refused, self.shutdown_grace = str(exc), 0.0
                self.stop()
            self._note_connection(False, str(exc))
            return False
        self._note_connection(True, self.client.address)
        for token in reply.cancel_attempt_tokens:
            self.cancel_attempt(
                token, reason="the coordinator says this attempt is cancelled or superseded"
            )
        if reply.draining != self.draining:
            self.draining = reply.draining
            logger.info(
                "worker %s is %s", self.worker_id, "draining" if self.draining else "undrained"
            )
        return True

    def poll_once(self, *, wait: float = POLL_WAIT_SECONDS) -> int:
        """One long poll for work; starts what arrives. Returns how many runs started."""
        free = self.free_slots()
        if free <= 0 or self.stop_event.is_set():
            return 0
        request = pb.PollRequest(worker=self.info(), free_slots=free, wait_ms=int(wait * 1000))
        reply = self.client.call("Poll", request, timeout=wait + RPC_TIMEOUT_SECONDS)
        for task in reply.tasks:
            self.start_task(task)
        return len(reply.tasks)

    def flush_reports_once(self) -> int:
        """Send one batch from the outbox. Returns how many events were acknowledged."""
        batch = self.outbox.batch()
        if not batch:
            return 0
        request = pb.ReportRequest(
            worker_id=self.worker_id,
            events=[event_to_pb(e) for e in batch],
            want_tasks=self._slots_after(batch),
        )
        reply = self.client.call("Report", request, timeout=RPC_TIMEOUT_SECONDS)
        self.outbox.ack(len(batch))
        # Claim on report: the runs this batch ended are replaced in the same round trip.
        for task in reply.tasks:
            self.start_task(task)
        runs = {e.attempt_token: e.dag_run_id for e in batch}
        for token in reply.rejected_attempt_tokens:
            logger.warning(
                "coordinator rejected the reports of run %s (attempt superseded or cancelled); "
                "dropping them",
                runs.get(token, "?"),
            )
            self.outbox.discard_attempt(token)
            self.cancel_attempt(token, reason="its attempt was superseded")
        return len(batch)

    # -- runs ---------------------------------------------------------------------------------

    def _slots_after(self, batch: list[Event]) -> int:
        """Slots free once the runs this batch ends are gone (0 if it ends none): the tasks
        the coordinator may hand back with the reply. A run is dropped from `_runs` just
        after its end is queued, so the batch may still count it."""
        ending = {e.attempt_token for e in batch if e.kind == RUN_FINISHED}
        if not ending or self.draining or self.stop_event.is_set():
            return 0
        with self._lock:
            busy = sum(1 for token in self._runs if token not in ending)
        return max(0, self.max_active_runs - busy)

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self.draining else self.max_active_runs - len(self._runs)

    def start_task(self, task: pb.Task) -> None:
        active = ActiveRun(task=task, cancel=threading.Event(), started_at=utcnow())
        with self._lock:
            if task.attempt_token in {r.task.attempt_token for r in self._runs.values()}:
                return
            self._runs[task.attempt_token] = active
        # A reused thread (controlplane.core.pool): a thread start costs more CPU than a
        # fast run's scheduling does.
        pool.start(lambda: self._execute(active), name=f"run-{task.dag_run_id}")
        logger.info("run %s (%s) attempt %d started", task.dag_run_id, task.dag_name, task.attempt)

    def cancel_attempt(self, token: str, *, reason: str) -> None:
        with self._lock:
            active = self._runs.get(token)
        if active and not active.cancel.is_set():
            logger.warning(
                "cancelling run %s attempt %d: %s",
                active.task.dag_run_id,
                active.task.attempt,
                reason,
            )
            active.cancel.set()

    def _execute(self, active: ActiveRun) -> None:
        task = active.task
        reporter = EventReporter(
            self.outbox.put,
            run_id=task.dag_run_id,
            token=task.attempt_token,
            max_step_log_bytes=self.config.logs.max_step_bytes,
        )
        reporter.attempt_started(at=active.started_at)
        try:
            outcome = self._run_dag(task, reporter, active.cancel)
        except Exception as exc:  # a run must always end with a report
            logger.exception("run %s crashed", task.dag_run_id)
            outcome = RunOutcome(status="failed", error=f"worker error: {exc}")
        reporter.run_finished(outcome, at=utcnow())
        with self._lock:
            self._runs.pop(task.attempt_token, None)
            self._slot_freed.notify_all()
        active.done.set()
        logger.info("run %s attempt %d %s", task.dag_run_id, task.attempt, outcome.status)

    def _run_dag(
        self, task: pb.Task, reporter: EventReporter, cancel: threading.Event
    ) -> RunOutcome:
        source = task.source or f"{task.dag_name}.yaml"
        try:
            dag_file = parse_stored_dag_file(task.definition, source=source)
        except DagSpecError as exc:
            return RunOutcome(status="failed", error=f"invalid DAG: {exc}")
        dag = dag_file.get(task.dag_name) or dag_file.main
        completed = {
            c.name: StepOutcome(
                c.status,
                c.exit_code if c.HasField("exit_code") else None,
                c.output_value if c.HasField("output_value") else None,
            )
            for c in task.completed_steps
        }
        return execute_run(
            dag,
            context=RunContext(
                dag_run_id=task.dag_run_id,
                root_dag_run_id=task.root_dag_run_id or task.dag_run_id,
                parent_dag_run_id=task.parent_dag_run_id,
                worker_id=self.worker_id,
                params=dict(task.params),
            ),
            reporter=reporter,
            launcher=GrpcChildLauncher(
                self.client, task, worker_id=self.worker_id, stop=self.halt_event
            ),
            cancel=cancel,
            completed=completed,
            base_env=self.environ,
        )

    # -- loops ---------------------------------------------------------------------------------

    def _note_connection(self, ok: bool, detail: str) -> None:
        if ok != self._connected:
            if ok:
                logger.info("worker %s connected to coordinator %s", self.worker_id, detail)
            else:
                logger.warning("worker %s: %s (will retry)", self.worker_id, detail)
            self._connected = ok

    def _heartbeat_loop(self) -> None:
        backoff = Backoff(initial=self.config.timing.heartbeat_interval, maximum=5.0)
        while not self.halt_event.is_set():
            if self.heartbeat_once():
                backoff.reset()
                delay = self.config.timing.heartbeat_interval
            else:
                delay = backoff.next_delay()
            # Set by halt, and by a move to another coordinator: that one learns of this
            # worker and its running attempts now, not after a backoff.
            self._beat_now.wait(delay)
            self._beat_now.clear()

    def _poll_loop(self) -> None:
        backoff = Backoff()
        while not self.stop_event.is_set():
            if self.free_slots() <= 0:
                with self._lock:
                    self._slot_freed.wait(timeout=1.0)
                continue
            try:
                self.poll_once()
                backoff.reset()
            except CoordinatorUnavailable as exc:
                self._note_connection(False, str(exc))
                self.stop_event.wait(backoff.next_delay())
            except grpc.RpcError as exc:
                if self.stop_event.is_set():
                    break  # the channel was closed under a poll during shutdown
                logger.warning("poll failed: %s: %s", exc.code().name, exc.details())
                self.stop_event.wait(backoff.next_delay())

    def _report_loop(self) -> None:
        backoff = Backoff()
        while not (self.halt_event.is_set() and not len(self.outbox)):
            # Once halting, nothing more is coming: no reason to linger.
            linger = 0.0 if self.halt_event.is_set() else REPORT_LINGER_SECONDS
            if not self.outbox.wait_ready(0.5, linger=linger):
                if self.halt_event.is_set():
                    return
                continue
            try:
                self.flush_reports_once()
                backoff.reset()
            except (CoordinatorUnavailable, grpc.RpcError) as exc:
                self._note_connection(False, str(exc))
                if self.halt_event.wait(backoff.next_delay()) and self._gave_up_reporting():
                    return

    def _gave_up_reporting(self) -> bool:
        # After halt, keep trying for a bounded time so a shutdown cannot hang forever.
        return time.monotonic() > getattr(self, "_report_deadline", float("inf"))

    def _start_registrant(self) -> None:
        root = Path(self.config.paths.service_registry_dir)
        self._registrant = registry.Registrant(
            root, self.registry_record, interval=self.config.timing.registry_refresh_interval
        )
        try:
            self._registrant.start()
        except registry.RegistryError as exc:
            # The coordinator registers us from our heartbeats instead.
            logger.warning("%s; continuing without a registry file", exc)
            self._registrant = None

    def run(self) -> None:
        """Run until stop() and the shutdown sequence complete."""
        self._start_registrant()
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._poll_loop, name="poll", daemon=True),
            threading.Thread(target=self._report_loop, name="report", daemon=True),
        ]
        for thread in threads:
            thread.start()
        logger.info(
            "worker %s started (labels %s, max %d runs, coordinators %s)",
            self.worker_id,
            ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "none",
            self.max_active_runs,
            ",".join(self.config.worker.coordinators) or "from the service registry",
        )
        self.stop_event.wait()
        self._shutdown()
        for thread in threads:
            thread.join(timeout=15)

    def stop(self) -> None:
        self.stop_event.set()

    def _shutdown(self) -> None:
        """Take no new work; give running steps the grace period, then cancel; report; go."""
        logger.info(
            "worker %s stopping: waiting up to %.0fs for %d run(s)",
            self.worker_id,
            self.shutdown_grace,
            len(self._runs),
        )
        self.heartbeat_once()  # tell the coordinator now, not at the next tick
        deadline = time.monotonic() + self.shutdown_grace
        for active in list(self._runs.values()):
            active.done.wait(max(0.0, deadline - time.monotonic()))
        for active in list(self._runs.values()):
            active.cancel.set()
        for active in list(self._runs.values()):
            active.done.wait(10)
        self._report_deadline = time.monotonic() + 10
        self.outbox.wait_empty(timeout=10)
        self.halt_event.set()
        self._beat_now.set()
        if self._registrant is not None:
            self._registrant.stop()
        self.client.close()
