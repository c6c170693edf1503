"""Schedule the steps of one DAG run: dependencies, retries, timeouts, cancel, sub-DAG calls.

A command or script step's process is `controlplane.core.process`'s job.

Used by the worker agent (reports go over gRPC) and by the main instance's local executor
(reports go to the database), so nothing here imports Django. The outside world is reached
only through a `Reporter` (step progress and logs) and a `ChildLauncher` (sub-DAG runs).

Threads: `execute_run` schedules in the calling thread; a running step has a thread of its
own, which also reads its process's output, except a command step without retries that runs
alone, which runs on the calling thread. Reporter methods are called from all of them.
Run-wide cancel (the caller's `cancel` event or the DAG timeout) is turned into the internal
`abort` event by the scheduler (for a step on its thread, from that step's waits), and
everything else watches `abort`.

Decisions the spec leaves open:
- A step that times out or is cancelled reports `exit_code=None` (not the signal number).
- `completed` entries with status succeeded, failed or skipped count as finished on resume
  (a failed one still fails the run unless its step continues on failure); any other
  status (cancelled, running, pending) means the step runs again.
- An `output:` variable is captured when the process exited on its own (succeeded or
  failed), never from a killed process.
- `#!` scripts are started through the interpreter named on that line (as the kernel would),
  so a noexec temp dir or a "text file busy" race cannot break them.
- A relative `dir` is relative to the executing process's working directory.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from controlplane.core import pool
from controlplane.core.clock import utcnow
from controlplane.core.process import POLL_SEC, TryStop, deadline_after, run_step_process
from controlplane.core.spec import (
    KIND_COMMAND,
    KIND_DAG,
    KIND_PARALLEL,
    Dag,
    Parallel,
    Step,
    dag_name_problem,
    expand_vars,
    is_protected_env_name,
)
from controlplane.core.states import StepStatus

logger = logging.getLogger(__name__)


# Statuses a `completed` entry may carry to be taken as finished on resume.
_FINISHED_ON_RESUME = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})


@dataclass(frozen=True)
class RunContext:
    dag_run_id: str
    root_dag_run_id: str
    parent_dag_run_id: str  # "" for a root run
    worker_id: str  # "local" when run by the main instance or `manage.py start`
    params: Mapping[str, str]


@dataclass(frozen=True)
class StepOutcome:
    """A step finished by an earlier attempt (resume)."""

    status: str
    exit_code: int | None = None
    output_value: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    status: str  # a terminal RunStatus value
    error: str = ""
    outputs: Mapping[str, str] = field(default_factory=dict)
    # What the steps that never started become ("" when every step was reported one by one).
    # An aborted run does not report its unstarted steps singly: cancelling a 30,000-step
    # run is then one report and one UPDATE, not 30,000 of each.
    unstarted_status: str = ""


class Reporter(Protocol):
    """Called from several threads: implementations must be thread-safe."""

    def step_started(self, step: str, *, at: datetime, retry: int) -> None: ...

    def step_log(self, step: str, stream: str, data: bytes) -> None: ...

    def step_finished(
        self,
        step: str,
        *,
        status: str,
        exit_code: int | None,
        at: datetime,
        output: str | None,
        error: str,
    ) -> None: ...


@dataclass(frozen=True)
class ChildRequest:
    step: str
    item_index: int | None  # parallel item index, None for a plain call
    dag_name: str
    params: Mapping[str, str]
    worker_selector: Mapping[str, str]  # the step-level selector (may be empty)


@dataclass(frozen=True)
class ChildResult:
    run_id: str
    status: str  # terminal run status of the child
    outputs: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


class ChildLauncher(Protocol):
    def run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
        """Block until the child run is terminal; when `cancel` is set, cancel it and return."""
        ...


def execute_run(
    dag: Dag,
    *,
    context: RunContext,
    reporter: Reporter,
    launcher: ChildLauncher | None,
    cancel: threading.Event,
    completed: Mapping[str, StepOutcome] | None = None,
    base_env: Mapping[str, str] | None = None,
    now: Callable[[], datetime] = utcnow,
) -> RunOutcome:
    """Run `dag`'s steps until all are finished, the run is cancelled or the DAG times out.

    Never raises for a failing step or a failing reporter: the outcome says what happened.
    """
    run = _Run(
        dag,
        context=context,
        reporter=_SafeReporter(reporter),
        launcher=launcher,
        cancel=cancel,
        completed=completed or {},
        base_env=os.environ if base_env is None else base_env,
        now=now,
    )
    return run.execute()


# --------------------------------------------------------------------------- scheduling


@dataclass
class _StepResult:
    status: str
    exit_code: int | None = None
    output: str | None = None
    error: str = ""


class _Run:
    """State of one execution; `execute` runs in the caller's thread."""

    def __init__(
        self,
        dag: Dag,
        *,
        context: RunContext,
        reporter: _SafeReporter,
        launcher: ChildLauncher | None,
        cancel: threading.Event,
        completed: Mapping[str, StepOutcome],
        base_env: Mapping[str, str],
        now: Callable[[], datetime],
    ) -> None:
        self.dag = dag
        self.context = context
        self.reporter = reporter
        self.launcher = launcher
        self.cancel = cancel
        self.now = now
        self.base_env = dict(base_env)
        self.abort = threading.Event()
        self.abort_reason = ""  # set once, before `abort`
        self.deadline: float | None = None  # the DAG's (monotonic), from `execute` on
        self.abort_status = StepStatus.CANCELLED
        self.lock = threading.Lock()  # guards statuses, results and outputs
        self.statuses: dict[str, str] = {}
        self.results: dict[str, _StepResult] = {}
        self.outputs: dict[str, str] = {}
        # SimpleQueue: no conditions to build per run (queue.Queue makes three).
        self.finished: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.deps = self._dependencies()
        self._restore(completed)

    def _dependencies(self) -> dict[str, tuple[str, ...]]:
        if self.dag.uses_graph:
            return {s.name: tuple(s.depends) for s in self.dag.steps}
        # In sequence mode each step waits for the one before it, which gives the same
        # skip and continue-on rules as the graph.
        names = [s.name for s in self.dag.steps]
        return {name: (names[i - 1],) if i else () for i, name in enumerate(names)}

    def _restore(self, completed: Mapping[str, StepOutcome]) -> None:
        for step in self.dag.steps:
            outcome = completed.get(step.name)
            if outcome is None or outcome.status not in _FINISHED_ON_RESUME:
                continue
            self.statuses[step.name] = outcome.status
            self.results[step.name] = _StepResult(
                outcome.status, outcome.exit_code, outcome.output_value
            )
            if step.output and outcome.output_value is not None:
                self.outputs[step.output] = outcome.output_value

    def execute(self) -> RunOutcome:
        self.deadline = deadline = deadline_after(self.dag.timeout_sec)
        pending = [s for s in self.dag.steps if s.name not in self.statuses]
        running = 0
        # Debug only, as the end below: the callers (the agent, the local executor) log a
        # run's start and end, and on a worker running hundreds of short runs a second
        # log lines were a fifth of its CPU (docs/benchmarks.md).
        logger.debug(
            "run %s of %s: starting %d steps", self.context.dag_run_id, self.dag.name, len(pending)
        )
        while True:
            self._check_abort(deadline)
            if not self.abort.is_set():
                pending, started = self._start_ready(pending, alone=running == 0)
                running += started
            if running == 0:
                break
            try:
                self.finished.get(timeout=POLL_SEC)
                running -= 1
            except queue.Empty:
                pass
        for step in pending:
            self._finish_unstarted(step)
        return self._outcome()

    def _check_abort(self, deadline: float | None) -> None:
        if self.abort.is_set():
            return
        if self.cancel.is_set():
            self.abort_reason = "cancelled"
        elif deadline is not None and time.monotonic() >= deadline:
            self.abort_reason = f"DAG timed out after {_seconds(self.dag.timeout_sec)} s"
            self.abort_status = StepStatus.FAILED
        else:
            return
        logger.info("run %s: %s, stopping steps", self.context.dag_run_id, self.abort_reason)
        self.abort.set()

    def _start_ready(self, pending: list[Step], *, alone: bool) -> tuple[list[Step], int]:
        """Start every step whose dependencies allow it; skip those that never will.

        A step that would run `alone` (nothing else running or starting) and has no retries
        runs on this thread, which then watches cancel and the DAG's deadline from the
        step's own waits: a thread hand-over each way cost a `true` run 0.04 ms of the
        worker's 0.3 ms of Python, and a scheduling delay each under load
        (docs/benchmarks.md, session 8)."""
        ready: list[Step] = []
        progress = True
        while progress:  # a skip can unblock (skip) further steps in the same pass
            progress = False
            waiting: list[Step] = []
            for step in pending:
                verdict, reason = self._readiness(step)
                if verdict == "wait":
                    waiting.append(step)
                    continue
                progress = True
                if verdict == "skip":
                    self._finish_skipped(step, reason)
                else:
                    with self.lock:
                        # Marked now so the next pass does not start it again.
                        self.statuses[step.name] = StepStatus.RUNNING
                    ready.append(step)
            pending = waiting
        if alone and len(ready) == 1 and _runs_inline(ready[0]):
            _StepRunner(self, ready[0], check=lambda: self._check_abort(self.deadline)).run()
        else:
            for step in ready:
                # A reused thread: starting one costs more than a fast step's own Python.
                pool.start(_StepRunner(self, step).run, name=f"step-{step.name}")
        return pending, len(ready)

    def _readiness(self, step: Step) -> tuple[str, str]:
        with self.lock:
            for dep in self.deps[step.name]:
                status = self.statuses.get(dep)
                if status is None or status == StepStatus.RUNNING:
                    return "wait", ""
                if status == StepStatus.SUCCEEDED or (
                    status == StepStatus.FAILED and self._may_fail(dep)
                ):
                    continue
                return "skip", f'skipped because step "{dep}" {status}'
        return "run", ""

    def _may_fail(self, name: str) -> bool:
        try:
            return self.dag.step(name).continue_on_failure
        except KeyError:
            return False

    def step_done(self, step: Step, result: _StepResult) -> None:
        """Record a step's end (called by its thread) and wake the scheduler."""
        with self.lock:
            self.statuses[step.name] = result.status
            self.results[step.name] = result
            if step.output and result.output is not None:
                self.outputs[step.output] = result.output
        self.finished.put(step.name)

    def _finish_skipped(self, step: Step, reason: str) -> None:
        with self.lock:
            self.statuses[step.name] = StepStatus.SKIPPED
            self.results[step.name] = _StepResult(StepStatus.SKIPPED, error=reason)
        self.reporter.step_finished(
            step.name,
            status=StepStatus.SKIPPED,
            exit_code=None,
            at=self.now(),
            output=None,
            error=reason,
        )

    def _finish_unstarted(self, step: Step) -> None:
        if self.abort.is_set():
            # Not reported: the outcome's `unstarted_status` covers every such step at once.
            with self.lock:
                self.statuses[step.name] = StepStatus.CANCELLED
                self.results[step.name] = _StepResult(StepStatus.CANCELLED, error=self.abort_reason)
            return
        # Only reachable with dependencies that can never finish (unknown or cyclic),
        # which the parser rejects; still, every step gets a final state.
        status, reason = StepStatus.SKIPPED, "dependencies can never be satisfied"
        with self.lock:
            self.statuses[step.name] = status
            self.results[step.name] = _StepResult(status, error=reason)
        self.reporter.step_finished(
            step.name, status=status, exit_code=None, at=self.now(), output=None, error=reason
        )

    def _outcome(self) -> RunOutcome:
        outputs = dict(self.outputs)
        if self.abort.is_set():
            return RunOutcome(
                self.abort_status, self.abort_reason, outputs, unstarted_status=StepStatus.CANCELLED
            )
        failures = [
            (s.name, self.results[s.name])
            for s in self.dag.steps
            if self.results[s.name].status != StepStatus.SUCCEEDED
            and not (self.results[s.name].status == StepStatus.FAILED and s.continue_on_failure)
        ]
        status = StepStatus.SUCCEEDED
        error = ""
        if failures:
            status = StepStatus.FAILED
            name, result = next(
                ((n, r) for n, r in failures if r.status != StepStatus.SKIPPED), failures[0]
            )
            error = f'step "{name}" {result.status}'
            if result.error:
                error += f": {result.error}"
            if len(failures) > 1:
                error += f" ({len(failures) - 1} more steps did not succeed)"
        logger.debug("run %s finished %s", self.context.dag_run_id, status)
        return RunOutcome(status, error, outputs)

    def step_env(self, step: Step) -> dict[str, str]:
        """The environment a step sees, built in the documented order."""
        env = dict(self.base_env)
        env.update(
            DAG_NAME=self.dag.name,
            DAG_RUN_ID=self.context.dag_run_id,
            DAG_RUN_STEP_NAME=step.name,
            ROOT_DAG_RUN_ID=self.context.root_dag_run_id,
            PARENT_DAG_RUN_ID=self.context.parent_dag_run_id,
            WORKER_ID=self.context.worker_id,
        )
        # Parsing refuses protected names already; this drops them again for a task whose
        # spec or params did not pass through our parser (an old stored run, a crafted child).
        for key, value in self.dag.env.items():
            if not is_protected_env_name(key):
                env[key] = expand_vars(value, env)
        env.update(_unprotected(self.context.params))
        with self.lock:
            env.update(_unprotected(self.outputs))
        for key, value in step.env.items():
            if not is_protected_env_name(key):
                env[key] = expand_vars(value, env)
        return env


# --------------------------------------------------------------------------- one step


def _runs_inline(step: Step) -> bool:
    """Whether a step may run on the scheduler's thread: a command without retries (whose
    only wait, the process's, polls the run's cancel and deadline through `TryStop`)."""
    return step.kind == KIND_COMMAND and step.retry_policy.limit == 0


class _StepRunner:
    """Runs one step with its retries, then hands the result back: on a thread of its own,
    or on the scheduler's with `check` (which turns cancel and timeout into `abort`)."""

    def __init__(self, run: _Run, step: Step, *, check: Callable[[], None] | None = None) -> None:
        self.run_state = run
        self.step = step
        self.check = check
        self.call_target = step.call or ""  # a sub-DAG step's DAG, variables expanded

    def run(self) -> None:
        run = self.run_state
        result = _StepResult(StepStatus.FAILED, error="internal error")
        try:
            result = self._run_with_retries()
        except Exception as exc:  # a bug here must not hang the scheduler
            logger.exception("step %s of run %s crashed", self.step.name, run.context.dag_run_id)
            result = _StepResult(StepStatus.FAILED, error=f"internal error: {exc}")
        finally:
            run.reporter.step_finished(
                self.step.name,
                status=result.status,
                exit_code=result.exit_code,
                at=run.now(),
                output=result.output,
                error=result.error,
            )
            run.step_done(self.step, result)

    def _run_with_retries(self) -> _StepResult:
        run = self.run_state
        policy = self.step.retry_policy
        retry = 0
        while True:
            run.reporter.step_started(self.step.name, at=run.now(), retry=retry)
            result = self._try_once()
            if result.status != StepStatus.FAILED or retry >= policy.limit:
                return result
            retry += 1
            logger.info(
                "step %s of run %s failed (%s); retry %d of %d",
                self.step.name,
                run.context.dag_run_id,
                result.error,
                retry,
                policy.limit,
            )
            if run.abort.wait(policy.interval_sec):
                return _StepResult(StepStatus.CANCELLED, error=run.abort_reason)

    def _try_once(self) -> _StepResult:
        stop = TryStop(self.run_state.abort, self.step.timeout_sec, check=self.check)
        env = self.run_state.step_env(self.step)
        if self.step.kind == KIND_COMMAND:
            result = self._run_process(env, stop)
        elif self.step.kind in (KIND_DAG, KIND_PARALLEL):
            result = self._run_children(env, stop)
        else:
            return _StepResult(StepStatus.FAILED, error=f'unsupported step kind "{self.step.kind}"')
        if stop.timed_out:
            return _StepResult(
                StepStatus.FAILED, error=f"timed out after {_seconds(self.step.timeout_sec)} s"
            )
        if stop.event.is_set() and self.run_state.abort.is_set():
            return _StepResult(StepStatus.CANCELLED, error=self.run_state.abort_reason)
        return result

    # ---- command / script

    def _run_process(self, env: dict[str, str], stop: TryStop) -> _StepResult:
        reporter, name = self.run_state.reporter, self.step.name
        end = run_step_process(
            self.step, env, stop, lambda stream, data: reporter.step_log(name, stream, data)
        )
        if end.stopped:
            return _StepResult(StepStatus.FAILED, error="stopped")  # the caller says why
        if end.code == 0:
            return _StepResult(StepStatus.SUCCEEDED, 0, end.output)
        return _StepResult(StepStatus.FAILED, end.code, end.output, end.error)

    # ---- sub-DAG calls

    def _run_children(self, env: dict[str, str], stop: TryStop) -> _StepResult:
        launcher = self.run_state.launcher
        if launcher is None:
            return _StepResult(StepStatus.FAILED, error="sub-DAG steps need a coordinator")
        if not self.step.call:
            return _StepResult(StepStatus.FAILED, error="sub-DAG step has no DAG to call")
        # `call: ${VAR}` names its DAG from params and env now, under the file's name rules.
        self.call_target = expand_vars(self.step.call, env)
        problem = dag_name_problem(self.call_target)
        if problem:
            return _StepResult(StepStatus.FAILED, error=f'call "{self.step.call}": {problem}')
        done = threading.Event()
        # Launchers wait on a plain Event, so something must set it on abort or timeout.
        watcher = threading.Thread(
            target=stop.watch, args=(done,), name=f"{self.step.name}-watch", daemon=True
        )
        watcher.start()
        try:
            if self.step.kind == KIND_DAG:
                return self._call_one(launcher, env, stop)
            return self._call_parallel(launcher, env, stop)
        finally:
            done.set()
            watcher.join()

    def _call_one(self, launcher: ChildLauncher, env: dict[str, str], stop: TryStop) -> _StepResult:
        params = {k: expand_vars(v, env) for k, v in self.step.params.items()}
        result = self._launch_child(launcher, params, item_index=None, stop=stop)
        output = json.dumps(dict(result.outputs)) if self.step.output else None
        if result.status == StepStatus.SUCCEEDED:
            return _StepResult(StepStatus.SUCCEEDED, output=output)
        return _StepResult(StepStatus.FAILED, output=output, error=_child_error(result))

    def _call_parallel(
        self, launcher: ChildLauncher, env: dict[str, str], stop: TryStop
    ) -> _StepResult:
        parallel = self.step.parallel
        if parallel is None or (parallel.items is None and parallel.variable is None):
            return _StepResult(StepStatus.FAILED, error="parallel step has no items or variable")
        items = _parallel_items(parallel, env)
        limit = max(1, min(parallel.max_concurrent, len(items) or 1))

        def call(index: int) -> ChildResult | None:
            if stop.event.is_set():
                return None  # cancelled or timed out before this child's turn
            params = _item_params(self.step.params, items[index], env)
            return self._launch_child(launcher, params, item_index=index, stop=stop)

        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix=self.step.name) as pool:
            results = list(pool.map(call, range(len(items))))
        outputs = [dict(r.outputs) if r else {} for r in results]
        output = json.dumps(outputs) if self.step.output else None
        failed = [r for r in results if r is None or r.status != StepStatus.SUCCEEDED]
        if not failed:
            return _StepResult(StepStatus.SUCCEEDED, output=output)
        first = failed[0]
        reason = _child_error(first) if first else "not started"
        error = f"{len(failed)} of {len(items)} sub DAG runs did not succeed; first: {reason}"
        return _StepResult(StepStatus.FAILED, output=output, error=error)

    def _launch_child(
        self,
        launcher: ChildLauncher,
        params: dict[str, str],
        *,
        item_index: int | None,
        stop: TryStop,
    ) -> ChildResult:
        request = ChildRequest(
            step=self.step.name,
            item_index=item_index,
            dag_name=self.call_target,
            params=params,
            worker_selector=self.step.worker_selector,
        )
        try:
            return launcher.run_child(request, cancel=stop.event)
        except Exception as exc:
            logger.exception(
                "launching sub DAG %s for step %s failed", request.dag_name, self.step.name
            )
            return ChildResult(
                run_id="", status=StepStatus.FAILED, error=f"cannot run sub DAG: {exc}"
            )


# --------------------------------------------------------------------------- helpers


class _SafeReporter:
    """Reporter failures are logged, never allowed to end the run."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def step_started(self, step: str, *, at: datetime, retry: int) -> None:
        try:
            self.inner.step_started(step, at=at, retry=retry)
        except Exception:
            logger.exception("reporter failed on step_started(%s)", step)

    def step_log(self, step: str, stream: str, data: bytes) -> None:
        try:
            self.inner.step_log(step, stream, data)
        except Exception:
            logger.exception("reporter failed on step_log(%s)", step)

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
        try:
            self.inner.step_finished(
                step, status=status, exit_code=exit_code, at=at, output=output, error=error
            )
        except Exception:
            logger.exception("reporter failed on step_finished(%s)", step)


def _unprotected(values: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if not is_protected_env_name(k)}


def _parallel_items(parallel: Parallel, env: Mapping[str, str]) -> list[object]:
    """`items`, or `variable` expanded and read as a JSON list, else as words."""
    if parallel.items is not None:
        return list(parallel.items)
    text = expand_vars(parallel.variable or "", env).strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        return parsed
    return [word for word in re.split(r"[\s,]+", text) if word]


def _item_params(params: Mapping[str, str], item: object, env: Mapping[str, str]) -> dict[str, str]:
    """Child params for one item: ITEM (and a mapping item's keys) are usable in `params`."""
    extra: dict[str, str] = {}
    if isinstance(item, Mapping):
        extra = {str(k): _as_param(v) for k, v in item.items()}
    extra["ITEM"] = _as_param(item)
    scope = {**env, **extra}
    return {**{k: expand_vars(v, scope) for k, v in params.items()}, **extra}


def _as_param(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _child_error(result: ChildResult) -> str:
    error = f"sub DAG run {result.run_id} finished {result.status}"
    return f"{error}: {result.error}" if result.error else error


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
