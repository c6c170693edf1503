"""The step execution engine, with real processes and a recording reporter (no DB)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from controlplane.core.execution import (
    ChildRequest,
    ChildResult,
    RunContext,
    RunOutcome,
    StepOutcome,
    execute_run,
    expand_vars,
)
from controlplane.core.spec import KIND_DAG, KIND_PARALLEL, Dag, Parallel, RetryPolicy, Step

WAIT = 10.0  # upper bound for anything a test waits on; never reached when things work


class RecordingReporter:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.events: list[tuple[str, str, dict]] = []
        self.logs: dict[tuple[str, str], bytearray] = {}

    def step_started(self, step: str, *, at: datetime, retry: int) -> None:
        assert at.tzinfo is not None
        with self.lock:
            self.events.append(("started", step, {"retry": retry}))
            self.lock.notify_all()

    def step_log(self, step: str, stream: str, data: bytes) -> None:
        with self.lock:
            self.logs.setdefault((step, stream), bytearray()).extend(data)
            self.lock.notify_all()

    def step_finished(self, step, *, status, exit_code, at, output, error) -> None:
        assert at.tzinfo is not None
        with self.lock:
            self.events.append(
                (
                    "finished",
                    step,
                    {"status": status, "exit_code": exit_code, "output": output, "error": error},
                )
            )
            self.lock.notify_all()

    def finished(self, step: str) -> dict:
        found = [info for kind, name, info in self.events if kind == "finished" and name == step]
        assert len(found) == 1, f"{step} finished {len(found)} times"
        return found[0]

    def retries(self, step: str) -> list[int]:
        return [
            info["retry"] for kind, name, info in self.events if kind == "started" and name == step
        ]

    def log(self, step: str, stream: str = "stdout") -> str:
        with self.lock:
            return bytes(self.logs.get((step, stream), b"")).decode()

    def wait_for_log(self, step: str, text: str) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: text in self.log(step), timeout=WAIT)


class FakeLauncher:
    """Answers every child with `decide(request)`, tracking how many run at once."""

    def __init__(self, decide: Callable[[ChildRequest], ChildResult] | None = None) -> None:
        self.decide = decide or (
            lambda req: ChildResult(run_id=f"c-{req.item_index}", status="succeeded")
        )
        self.lock = threading.Condition()
        self.requests: list[ChildRequest] = []
        self.current = 0
        self.max_current = 0

    def run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
        with self.lock:
            self.requests.append(request)
            self.current += 1
            self.max_current = max(self.max_current, self.current)
        try:
            return self.decide(request)
        finally:
            with self.lock:
                self.current -= 1


def context(**params: str) -> RunContext:
    return RunContext(
        dag_run_id="run-1",
        root_dag_run_id="root-1",
        parent_dag_run_id="parent-1",
        worker_id="w-1",
        params=params,
    )


def sh(name: str, command: str, **kwargs) -> Step:
    return Step(name=name, command=command, **kwargs)


def run(dag: Dag, reporter: RecordingReporter | None = None, **kwargs) -> RunOutcome:
    kwargs.setdefault("launcher", None)
    kwargs.setdefault("cancel", threading.Event())
    return execute_run(
        dag,
        context=kwargs.pop("context", context()),
        reporter=reporter or RecordingReporter(),
        **kwargs,
    )


def run_in_thread(dag: Dag, reporter: RecordingReporter, **kwargs) -> tuple[threading.Thread, list]:
    box: list[RunOutcome] = []
    thread = threading.Thread(target=lambda: box.append(run(dag, reporter, **kwargs)))
    thread.start()
    return thread, box


def wait_for_file(path: Path) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def process_gone(pid: int) -> bool:
    """Gone or a zombie (nothing reaps orphans in some containers), within a bounded wait."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def wait_loop(path: Path) -> str:
    """Shell that waits (bounded) for `path` to exist, failing if it never does."""
    return (
        f'i=0; while [ ! -e "{path}" ]; do i=$((i+1)); [ $i -gt 400 ] && exit 9; sleep 0.02; done'
    )


# --------------------------------------------------------------------------- ordering


def test_sequence_runs_steps_in_file_order(tmp_path):
    out = tmp_path / "order"
    dag = Dag(name="seq", steps=tuple(sh(n, f"echo {n} >> {out}") for n in ("a", "b", "c")))
    reporter = RecordingReporter()
    outcome = run(dag, reporter)
    assert outcome.status == "succeeded"
    assert out.read_text().split() == ["a", "b", "c"]
    assert [(kind, name) for kind, name, _ in reporter.events] == [
        ("started", "a"),
        ("finished", "a"),
        ("started", "b"),
        ("finished", "b"),
        ("started", "c"),
        ("finished", "c"),
    ]
    assert reporter.finished("b")["exit_code"] == 0


def test_graph_runs_independent_steps_concurrently(tmp_path):
    mark = tmp_path / "b-ran"
    dag = Dag(
        name="graph",
        uses_graph=True,
        steps=(
            sh("a", wait_loop(mark)),  # only finishes if b runs while a is waiting
            sh("b", f"touch {mark}"),
            sh("c", "true", depends=("a", "b")),
        ),
    )
    reporter = RecordingReporter()
    assert run(dag, reporter).status == "succeeded"
    assert reporter.finished("c")["status"] == "succeeded"


def test_failed_dependency_skips_downstream_in_graph(tmp_path):
    dag = Dag(
        name="graph",
        uses_graph=True,
        steps=(
            sh("a", "exit 3"),
            sh("b", "true", depends=("a",)),
            sh("c", "true", depends=("b",)),
            sh("d", "true"),
        ),
    )
    reporter = RecordingReporter()
    outcome = run(dag, reporter)
    assert outcome.status == "failed"
    assert outcome.error.startswith('step "a" failed: exit status 3')
    assert reporter.finished("a")["exit_code"] == 3
    assert reporter.finished("b")["status"] == "skipped"
    assert reporter.finished("c")["status"] == "skipped"
    assert reporter.finished("d")["status"] == "succeeded"
    assert reporter.retries("b") == [] and reporter.retries("c") == []


def test_sequence_skips_steps_after_a_failure():
    dag = Dag(name="seq", steps=(sh("a", "true"), sh("b", "false"), sh("c", "true")))
    reporter = RecordingReporter()
    outcome = run(dag, reporter)
    assert outcome.status == "failed"
    assert 'step "b" failed' in outcome.error
    assert reporter.finished("c")["status"] == "skipped"
    assert reporter.retries("c") == []


def test_continue_on_failure_lets_the_run_go_on_and_succeed(tmp_path):
    dag = Dag(
        name="seq",
        steps=(sh("a", "exit 1", continue_on_failure=True), sh("b", f"touch {tmp_path}/b")),
    )
    reporter = RecordingReporter()
    assert run(dag, reporter).status == "succeeded"
    assert reporter.finished("a")["status"] == "failed"
    assert (tmp_path / "b").exists()


# --------------------------------------------------------------------------- retries


def test_retry_policy_retries_until_success(tmp_path):
    counter = tmp_path / "count"
    command = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 3 ]"
    )
    dag = Dag(name="r", steps=(sh("a", command, retry_policy=RetryPolicy(limit=5)),))
    reporter = RecordingReporter()
    assert run(dag, reporter).status == "succeeded"
    assert counter.read_text().strip() == "3"
    assert reporter.retries("a") == [0, 1, 2]
    assert reporter.finished("a")["status"] == "succeeded"


def test_retry_policy_gives_up_after_the_limit(tmp_path):
    counter = tmp_path / "count"
    dag = Dag(
        name="r",
        steps=(sh("a", f"echo x >> {counter}; exit 1", retry_policy=RetryPolicy(limit=2)),),
    )
    reporter = RecordingReporter()
    assert run(dag, reporter).status == "failed"
    assert len(counter.read_text().split()) == 3
    assert reporter.retries("a") == [0, 1, 2]


# --------------------------------------------------------------------------- kill


def test_step_timeout_kills_the_process_tree(tmp_path):
    pidfile = tmp_path / "pid"
    dag = Dag(
        name="t",
        steps=(sh("a", f"sleep 300 & echo $! > {pidfile}; wait", timeout_sec=0.5),),
    )
    reporter = RecordingReporter()
    outcome = run(dag, reporter)
    assert outcome.status == "failed"
    finished = reporter.finished("a")
    assert finished["status"] == "failed"
    assert finished["error"] == "timed out after 0.5 s"
    assert finished["exit_code"] is None
    assert process_gone(int(pidfile.read_text()))


def test_cancel_kills_the_tree_and_leaves_unstarted_steps_to_the_outcome(tmp_path):
    pidfile = tmp_path / "pid"
    dag = Dag(
        name="c",
        steps=(sh("a", f"sleep 300 & echo $! > {pidfile}; wait"), sh("b", "true")),
    )
    reporter = RecordingReporter()
    cancel = threading.Event()
    thread, box = run_in_thread(dag, reporter, cancel=cancel)
    try:
        pid = int(wait_for_file(pidfile))
    finally:
        cancel.set()
        thread.join(WAIT)
    assert box[0].status == "cancelled"
    assert box[0].unstarted_status == "cancelled"
    assert reporter.finished("a")["status"] == "cancelled"
    # Not reported one by one: the outcome covers it (one UPDATE for 30,000 of them).
    assert [e for e in reporter.events if e[1] == "b"] == []
    assert process_gone(pid)


def test_a_lone_step_runs_on_the_schedulers_thread_and_concurrent_or_retried_ones_do_not():
    threads: dict[str, int] = {}

    class Threads(RecordingReporter):
        def step_started(self, step: str, *, at: datetime, retry: int) -> None:
            threads[step] = threading.get_ident()
            super().step_started(step, at=at, retry=retry)

    retried = sh("retried", "true", retry_policy=RetryPolicy(limit=1, interval_sec=0))
    graph = Dag(name="g", steps=(sh("x", "true"), sh("y", "true")), uses_graph=True)
    for dag in (Dag(name="s", steps=(sh("a", "true"), sh("b", "true"))), graph):
        assert run(dag, Threads()).status == "succeeded"
    assert run(Dag(name="r", steps=(retried,)), Threads()).status == "succeeded"
    me = threading.get_ident()
    # In sequence each step runs alone: no thread hand-over. Steps that may run at the
    # same time, or a step whose retries sleep, get threads of their own.
    assert (threads["a"], threads["b"]) == (me, me)
    assert me not in (threads["x"], threads["y"], threads["retried"])


def test_dag_timeout_fails_the_run_and_stops_everything(tmp_path):
    dag = Dag(name="t", timeout_sec=0.5, steps=(sh("a", "sleep 300"), sh("b", "true")))
    reporter = RecordingReporter()
    outcome = run(dag, reporter)
    assert outcome.status == "failed"
    assert outcome.error == "DAG timed out after 0.5 s"
    assert outcome.unstarted_status == "cancelled"
    assert reporter.finished("a")["status"] == "cancelled"
    assert [e for e in reporter.events if e[1] == "b"] == []


def test_cancel_interrupts_the_sleep_between_retries(tmp_path):
    counter = tmp_path / "count"
    step = sh(
        "a", f"echo x >> {counter}; exit 1", retry_policy=RetryPolicy(limit=3, interval_sec=300)
    )
    reporter = RecordingReporter()
    cancel = threading.Event()
    thread, box = run_in_thread(Dag(name="r", steps=(step,)), reporter, cancel=cancel)
    wait_for_file(counter)
    cancel.set()
    thread.join(WAIT)
    assert box[0].status == "cancelled"
    assert reporter.retries("a") == [0]
    assert reporter.finished("a")["status"] == "cancelled"


# --------------------------------------------------------------------------- logs and outputs


def test_logs_reach_the_reporter_while_the_step_runs(tmp_path):
    go = tmp_path / "go"
    dag = Dag(name="l", steps=(sh("a", f"echo hello; echo oops >&2; {wait_loop(go)}"),))
    reporter = RecordingReporter()
    thread, box = run_in_thread(dag, reporter)
    try:
        assert reporter.wait_for_log("a", "hello")
    finally:
        go.touch()
        thread.join(WAIT)
    assert box[0].status == "succeeded"
    assert reporter.log("a", "stderr") == "oops\n"


def test_a_background_process_holding_stdout_does_not_hang_the_step(tmp_path):
    pidfile = tmp_path / "pid"
    dag = Dag(name="bg", steps=(sh("a", f"sleep 300 & echo $! > {pidfile}; echo done"),))
    reporter = RecordingReporter()
    try:
        assert run(dag, reporter).status == "succeeded"
        assert reporter.log("a") == "done\n"
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_output_variable_passes_to_later_steps():
    dag = Dag(
        name="o",
        steps=(
            sh("a", "echo value-1", output="OUT"),
            sh("b", 'test "$OUT" = value-1 && echo "got $OUT"', output="B"),
        ),
    )
    reporter = RecordingReporter()
    outcome = run(dag, reporter)
    assert outcome.status == "succeeded"
    assert dict(outcome.outputs) == {"OUT": "value-1", "B": "got value-1"}
    assert reporter.finished("a")["output"] == "value-1"


def test_step_env_has_run_vars_dag_env_params_and_step_env():
    keys = [
        "DAG_NAME",
        "DAG_RUN_ID",
        "DAG_RUN_STEP_NAME",
        "ROOT_DAG_RUN_ID",
        "PARENT_DAG_RUN_ID",
        "WORKER_ID",
        "BASE",
        "D1",
        "D2",
        "P",
        "S",
    ]
    dag = Dag(
        name="envdag",
        env={"D1": "${BASE}-d1", "D2": "$D1-d2"},
        steps=(
            sh(
                "a",
                "printf '%s|' " + " ".join(f'"${k}"' for k in keys),
                output="V",
                env={"S": "${P}-s"},
            ),
        ),
    )
    base = {"PATH": os.environ["PATH"], "BASE": "b"}
    outcome = run(dag, base_env=base, context=context(P="p"))
    assert outcome.outputs["V"].split("|")[:-1] == [
        "envdag",
        "run-1",
        "a",
        "root-1",
        "parent-1",
        "w-1",
        "b",
        "b-d1",
        "b-d1-d2",
        "p",
        "p-s",
    ]


def test_output_is_capped_at_one_mebibyte():
    step = sh("big", "head -c 3000000 /dev/zero | tr '\\0' a", output="BIG")
    reporter = RecordingReporter()
    outcome = run(Dag(name="o", steps=(step,)), reporter)
    assert len(outcome.outputs["BIG"]) == 1 << 20
    assert len(reporter.log("big")) == 3000000


def test_a_missing_interpreter_fails_the_step_with_a_clear_error():
    step = Step(name="s", command="no-such-interpreter-xyz", script="print(1)")
    reporter = RecordingReporter()
    assert run(Dag(name="s", steps=(step,)), reporter).status == "failed"
    assert reporter.finished("s")["error"].startswith("cannot start no-such-interpreter-xyz")


def test_dir_sets_the_working_directory_and_a_missing_one_fails(tmp_path):
    (tmp_path / "sub").mkdir()
    dag = Dag(
        name="d",
        env={"WORK": str(tmp_path)},
        steps=(sh("a", "pwd", dir="${WORK}/sub", output="WD"), sh("b", "true", dir="$WORK/nope")),
    )
    reporter = RecordingReporter()
    outcome = run(dag, reporter)
    assert Path(outcome.outputs["WD"]).resolve() == (tmp_path / "sub").resolve()
    assert reporter.finished("b")["error"] == f'working directory "{tmp_path}/nope" does not exist'


def test_script_runs_with_shebang_with_interpreter_and_with_sh():
    dag = Dag(
        name="s",
        steps=(
            Step(name="shebang", script=f"#!{sys.executable}\nprint('py', 6 * 7)\n", output="A"),
            Step(name="interp", command=sys.executable, script="print('interp')", output="B"),
            Step(name="plain", script='x=plain\necho "$x"\n', output="C"),
        ),
    )
    outcome = run(dag)
    assert outcome.status == "succeeded", outcome.error
    assert dict(outcome.outputs) == {"A": "py 42", "B": "interp", "C": "plain"}


def test_reporter_failures_do_not_break_the_run(tmp_path):
    class Broken(RecordingReporter):
        def step_started(self, step, *, at, retry):
            raise RuntimeError("boom")

        def step_log(self, step, stream, data):
            raise RuntimeError("boom")

    dag = Dag(name="b", steps=(sh("a", "echo hi"), sh("b", f"touch {tmp_path}/b")))
    assert run(dag, Broken()).status == "succeeded"
    assert (tmp_path / "b").exists()


# --------------------------------------------------------------------------- resume


def test_resume_skips_completed_steps_and_restores_outputs(tmp_path):
    dag = Dag(
        name="r",
        steps=(
            sh("a", f"touch {tmp_path}/a-ran; echo new", output="OUT"),
            sh("b", f"echo $OUT > {tmp_path}/b"),
        ),
    )
    reporter = RecordingReporter()
    outcome = run(dag, reporter, completed={"a": StepOutcome("succeeded", 0, "old")})
    assert outcome.status == "succeeded"
    assert not (tmp_path / "a-ran").exists()
    assert (tmp_path / "b").read_text().strip() == "old"
    assert [name for _, name, _ in reporter.events] == ["b", "b"]
    assert outcome.outputs["OUT"] == "old"


# --------------------------------------------------------------------------- sub-DAGs


def test_resume_does_not_report_skipped_or_failed_steps_again():
    dag = Dag(
        name="r",
        steps=(sh("a", "exit 1", continue_on_failure=True), sh("b", "false"), sh("c", "true")),
    )
    reporter = RecordingReporter()
    completed = {
        "a": StepOutcome("failed", 1),
        "b": StepOutcome("failed", 1),
        "c": StepOutcome("skipped"),
    }
    outcome = run(dag, reporter, completed=completed)
    assert outcome.status == "failed"
    assert outcome.error.startswith('step "b" failed')
    assert reporter.events == []


def test_call_step_runs_a_child_with_expanded_params():
    def decide(req: ChildRequest) -> ChildResult:
        return ChildResult(run_id="child-1", status="succeeded", outputs={"R": req.params["X"]})

    launcher = FakeLauncher(decide)
    step = Step(
        name="call",
        kind=KIND_DAG,
        call="child",
        params={"X": "${P}-x"},
        output="O",
        worker_selector={"gpu": "true"},
    )
    reporter = RecordingReporter()
    outcome = run(Dag(name="p", steps=(step,)), reporter, launcher=launcher, context=context(P="p"))
    assert outcome.status == "succeeded"
    (req,) = launcher.requests
    assert (req.dag_name, req.item_index, dict(req.params)) == ("child", None, {"X": "p-x"})
    assert dict(req.worker_selector) == {"gpu": "true"}
    assert json.loads(outcome.outputs["O"]) == {"R": "p-x"}


def test_failed_child_fails_the_call_step():
    launcher = FakeLauncher(lambda req: ChildResult(run_id="child-9", status="failed"))
    step = Step(name="call", kind=KIND_DAG, call="child")
    reporter = RecordingReporter()
    assert run(Dag(name="p", steps=(step,)), reporter, launcher=launcher).status == "failed"
    assert reporter.finished("call")["error"] == "sub DAG run child-9 finished failed"


def test_sub_dag_step_without_launcher_fails():
    reporter = RecordingReporter()
    step = Step(name="call", kind=KIND_DAG, call="child")
    assert run(Dag(name="p", steps=(step,)), reporter).status == "failed"
    assert reporter.finished("call")["error"] == "sub-DAG steps need a coordinator"


def test_parallel_honours_max_concurrent_and_collects_outputs():
    items = ("a", "b", "c", "d", "e")
    launcher = FakeLauncher()

    def decide(req: ChildRequest) -> ChildResult:
        # Hold each call until a second one is in flight (or none are left to start),
        # so the test sees real overlap without timing.
        with launcher.lock:
            launcher.lock.notify_all()
            launcher.lock.wait_for(
                lambda: launcher.current >= 2 or len(launcher.requests) == len(items),
                timeout=WAIT,
            )
        return ChildResult(
            run_id=f"c{req.item_index}", status="succeeded", outputs={"item": req.params["ITEM"]}
        )

    launcher.decide = decide
    step = Step(
        name="fan",
        kind=KIND_PARALLEL,
        call="child",
        output="ALL",
        params={"FILE": "${ITEM}.txt"},
        parallel=Parallel(items=items, max_concurrent=2),
    )
    outcome = run(Dag(name="p", steps=(step,)), launcher=launcher)
    assert outcome.status == "succeeded"
    assert launcher.max_current == 2
    by_index = {r.item_index: dict(r.params) for r in launcher.requests}
    assert by_index[3] == {"FILE": "d.txt", "ITEM": "d"}
    assert json.loads(outcome.outputs["ALL"]) == [{"item": i} for i in items]


def test_parallel_items_from_a_variable_and_mapping_items():
    launcher = FakeLauncher()
    steps = (
        Step(name="json", kind=KIND_PARALLEL, call="c", parallel=Parallel(variable="${LIST}")),
        Step(name="words", kind=KIND_PARALLEL, call="c", parallel=Parallel(variable="x, y z")),
        Step(
            name="maps",
            kind=KIND_PARALLEL,
            call="c",
            parallel=Parallel(items=({"region": "eu", "n": 2},)),
        ),
    )
    dag = Dag(name="p", env={"LIST": '["a", 1]'}, steps=steps)
    assert run(dag, launcher=launcher).status == "succeeded"
    items = {(r.step, r.item_index): dict(r.params) for r in launcher.requests}
    assert items[("json", 0)] == {"ITEM": "a"} and items[("json", 1)] == {"ITEM": "1"}
    assert [items[("words", i)]["ITEM"] for i in range(3)] == ["x", "y", "z"]
    assert items[("maps", 0)] == {"region": "eu", "n": "2", "ITEM": '{"region": "eu", "n": 2}'}


def test_parallel_step_fails_when_one_child_fails():
    launcher = FakeLauncher(
        lambda req: ChildResult(
            run_id=f"c{req.item_index}", status="failed" if req.item_index == 1 else "succeeded"
        )
    )
    step = Step(name="fan", kind=KIND_PARALLEL, call="c", parallel=Parallel(items=("a", "b")))
    reporter = RecordingReporter()
    assert run(Dag(name="p", steps=(step,)), reporter, launcher=launcher).status == "failed"
    assert "sub DAG run c1 finished failed" in reporter.finished("fan")["error"]


def test_cancel_reaches_a_running_child(tmp_path):
    entered = threading.Event()

    def decide_with_cancel(req: ChildRequest, cancel: threading.Event) -> ChildResult:
        entered.set()
        assert cancel.wait(WAIT)
        return ChildResult(run_id="c", status="cancelled")

    class Launcher:
        def run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
            return decide_with_cancel(request, cancel)

    step = Step(name="call", kind=KIND_DAG, call="child")
    reporter = RecordingReporter()
    cancel = threading.Event()
    thread, box = run_in_thread(
        Dag(name="p", steps=(step,)), reporter, launcher=Launcher(), cancel=cancel
    )
    assert entered.wait(WAIT)
    cancel.set()
    thread.join(WAIT)
    assert box[0].status == "cancelled"
    assert reporter.finished("call")["status"] == "cancelled"


def test_step_timeout_cancels_a_child_and_fails_the_step():
    class Launcher:
        def run_child(self, request: ChildRequest, *, cancel: threading.Event) -> ChildResult:
            assert cancel.wait(WAIT)
            return ChildResult(run_id="c", status="cancelled")

    step = Step(name="call", kind=KIND_DAG, call="child", timeout_sec=0.2)
    reporter = RecordingReporter()
    outcome = run(Dag(name="p", steps=(step,)), reporter, launcher=Launcher())
    assert outcome.status == "failed"
    assert reporter.finished("call")["error"] == "timed out after 0.2 s"


# --------------------------------------------------------------------------- pure helpers


def test_expand_vars_handles_both_forms_and_unknown_names():
    env: Mapping[str, str] = {"A": "1", "B_2": "two"}
    assert expand_vars("$A-${B_2}-$MISSING-${A}x", env) == "1-two--1x"


def test_times_are_utc():
    seen: list[datetime] = []

    class Clock(RecordingReporter):
        def step_started(self, step, *, at, retry):
            seen.append(at)

    run(Dag(name="t", steps=(sh("a", "true"),)), Clock())
    assert seen[0].tzinfo == UTC


def test_protected_names_that_bypassed_the_parser_never_reach_the_step():
    # A Dag built without the parser (as a crafted or old stored task could be) and params a
    # worker was sent for a child: the step still sees the real PATH and run id.
    dag = Dag(
        name="envdag",
        env={"PATH": "/nowhere", "KEEP": "k"},
        steps=(
            sh("a", 'printf "%s|%s|%s|%s" "$PATH" "$DAG_RUN_ID" "$KEEP" "$LD_PRELOAD"',
               output="V", env={"LD_AUDIT": "x"}),
        ),
    )  # fmt: skip
    base = {"PATH": os.environ["PATH"]}
    outcome = run(dag, base_env=base, context=context(LD_PRELOAD="/tmp/x.so", DAG_RUN_ID="fake"))
    assert outcome.status == "succeeded", outcome.error
    assert outcome.outputs["V"] == f"{os.environ['PATH']}|run-1|k|"
