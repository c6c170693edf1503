"""The coordinator's per-run hot paths in bulk: a dispatch pass claims in a few statements,
a poll hands out tasks built at claim time (never one cancelled or superseded meanwhile),
and a report batch is applied in a fixed handful of statements whatever it holds.

Statement counts are deterministic (unlike timings), so they are what these tests bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from controlplane import dispatch
from controlplane.coordinator import Coordinator
from controlplane.core.config import resolve
from controlplane.core.events import (
    ATTEMPT_STARTED,
    RUN_FINISHED,
    STEP_FINISHED,
    STEP_LOG,
    STEP_STARTED,
    Event,
)
from controlplane.core.routing import WorkerView
from controlplane.core.spec import parse_dag_file
from controlplane.dispatch import dispatch_once
from controlplane.failover import supersede_attempt
from controlplane.models import DispatchDecision
from dags.models import Attempt, DagRun
from dags.reports import GroupCommit, Report, apply_batches, apply_events
from dags.runs import TaskPayload, create_run, request_cancel, retry_run, start_attempt
from workers.models import Worker
from workers.presence import Identity

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ONE_STEP = """
worker_selector:
  pool: "a"
steps:
  - name: only
    command: "true"
"""
TWO_STEPS = """
worker_selector:
  pool: "a"
steps:
  - name: one
    command: "true"
  - name: two
    command: "true"
"""


def queued(n: int, text: str = ONE_STEP) -> list[DagRun]:
    dag_file = parse_dag_file(text, source="d.yaml", default_name="d")
    return [
        create_run(dag_file, now=T0 + timedelta(milliseconds=i), default_mode="local")
        for i in range(n)
    ]


def worker(wid: str = "w1", *, free: int = 10) -> WorkerView:
    return WorkerView(wid, {"pool": "a"}, "HEALTHY", False, free)


def fast_run(task: TaskPayload, *, status: str = "succeeded", first_seq: int = 1) -> list[Event]:
    """The four events of a fast single-step run, as a worker folds them into one report."""
    e = {"dag_run_id": task.dag_run_id, "attempt_token": task.attempt_token, "at": T0}
    return [
        Event(seq=first_seq, kind=ATTEMPT_STARTED, **e),
        Event(seq=first_seq + 1, kind=STEP_STARTED, step="only", **e),
        Event(seq=first_seq + 2, kind=STEP_FINISHED, step="only", status=status, exit_code=0, **e),
        Event(seq=first_seq + 3, kind=RUN_FINISHED, status=status, outputs={"X": "1"}, **e),
    ]


# -- dispatch: the bulk claim ------------------------------------------------------------


def fail_after_step_one(run_id: str, token: str, *, log_dir: Path) -> None:
    """The attempt reports: started, step "one" succeeded, then the run failed."""
    e = {"dag_run_id": run_id, "attempt_token": token, "at": T0}
    apply_events(
        [
            Event(seq=1, kind=ATTEMPT_STARTED, **e),
            Event(seq=2, kind=STEP_STARTED, step="one", **e),
            Event(seq=3, kind=STEP_FINISHED, step="one", status="succeeded", exit_code=0, **e),
            Event(seq=4, kind=RUN_FINISHED, status="failed", error="boom", **e),
        ],
        log_dir=log_dir,
    )


@pytest.mark.django_db
def test_a_dispatch_pass_claims_every_run_in_a_fixed_number_of_statements():
    runs = queued(12)
    delivered: list[TaskPayload] = []
    with CaptureQueriesContext(connection) as few:
        assert dispatch_once(now=T0, workers=[worker(free=2)], deliver=delivered.append) == 2
    with CaptureQueriesContext(connection) as many:
        assert dispatch_once(now=T0, workers=[worker("w2")], deliver=delivered.append) == 10
    # groups, the offered runs, the claim, the attempts, the decisions (+ savepoints in tests);
    # the waiting reasons of the runs left over in the first pass only
    assert len(many) <= 7
    assert len(many) <= len(few)
    assert [t.dag_run_id for t in delivered] == [r.id for r in runs[:12]]
    assert [t.worker_id for t in delivered] == ["w1"] * 2 + ["w2"] * 10
    attempts = {a.run_id: a for a in Attempt.objects.all()}
    for task in delivered:
        attempt = attempts[task.dag_run_id]
        assert (attempt.number, attempt.token, attempt.status) == (
            1,
            task.attempt_token,
            "assigned",
        )
        assert (task.attempt, task.completed, task.definition) == (1, [], runs[0].spec)
        assert (task.root_dag_run_id, task.parent_dag_run_id) == (task.dag_run_id, "")
    decisions = DispatchDecision.objects.filter(event="assigned").order_by("id")
    assert [(d.run_id, d.attempt, d.chosen_worker) for d in decisions] == [
        (t.dag_run_id, 1, t.worker_id) for t in delivered
    ]
    assert decisions[0].detail == "attempt 1 assigned to w1 (1 of 1 workers matched)"
    assert set(DagRun.objects.values_list("status", "attempt", "waiting_reason")) == {
        ("running", 1, "")
    }


@pytest.mark.django_db
def test_a_large_pass_claims_in_chunks(monkeypatch, tmp_path: Path):
    from dags import runs as runs_module

    monkeypatch.setattr(runs_module, "CLAIM_CHUNK", 2)
    (first, *rest) = queued(5, TWO_STEPS)
    delivered: list[TaskPayload] = []
    dispatch_once(now=T0, workers=[worker(free=1)], deliver=delivered.append)
    task = delivered[0]
    fail_after_step_one(first.id, task.attempt_token, log_dir=tmp_path)
    retry_run(first.id, now=T0)  # attempt 2 of it: its completed steps are read, in chunks too
    assert dispatch_once(now=T0, workers=[worker(free=5)], deliver=delivered.append) == 5
    assert sorted(t.dag_run_id for t in delivered[1:]) == sorted(r.id for r in [first, *rest])
    again = {t.dag_run_id: t for t in delivered[1:]}[first.id]
    assert (again.attempt, again.completed) == (2, [("one", "succeeded", 0, None)])


@pytest.mark.django_db
def test_a_claim_skips_runs_claimed_or_cancelled_since_they_were_read(monkeypatch):
    runs = queued(3)
    real = dispatch._oldest_runs

    def racing(group, *, limit):
        offered = real(group, limit=limit)
        # Between the read and the claim: another dispatcher wins one, an operator cancels one.
        start_attempt(DagRun.objects.get(pk=runs[0].id), now=T0, mode="distributed", worker_id="x")
        request_cancel(runs[1].id, now=T0)
        return offered

    monkeypatch.setattr(dispatch, "_oldest_runs", racing)
    delivered: list[TaskPayload] = []
    assert dispatch_once(now=T0, workers=[worker()], deliver=delivered.append) == 1
    assert [t.dag_run_id for t in delivered] == [runs[2].id]
    assert Attempt.objects.filter(run_id=runs[0].id).get().worker_id == "x"
    assert not Attempt.objects.filter(run_id=runs[1].id).exists()
    assert DispatchDecision.objects.filter(event="assigned").count() == 1


@pytest.mark.django_db
def test_a_retried_run_gets_its_completed_steps_in_the_task(tmp_path: Path):
    (run,) = queued(1, TWO_STEPS)
    delivered: list[TaskPayload] = []
    dispatch_once(now=T0, workers=[worker()], deliver=delivered.append)
    first = delivered[0]
    fail_after_step_one(run.id, first.attempt_token, log_dir=tmp_path)
    retry_run(run.id, now=T0)
    dispatch_once(now=T0, workers=[worker()], deliver=delivered.append)
    again = delivered[1]
    assert again.attempt == 2
    assert again.completed == [("one", "succeeded", 0, None)]


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_dispatch_passes_never_claim_one_run_twice():
    runs = queued(40)
    delivered: list[TaskPayload] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def deliver(task: TaskPayload) -> None:
        with lock:
            delivered.append(task)

    def one_pass(wid: str) -> None:
        try:
            start.wait(timeout=10)
            # Each believes it alone has room for every run.
            for _ in range(5):
                dispatch_once(now=T0, workers=[worker(wid, free=40)], deliver=deliver)
        finally:
            connection.close()

    threads = [threading.Thread(target=one_pass, args=(w,)) for w in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ids = [t.dag_run_id for t in delivered]
    assert sorted(ids) == sorted(r.id for r in runs)  # each exactly once
    assert Attempt.objects.count() == 40
    assert set(DagRun.objects.values_list("attempt", flat=True)) == {1}
    assert DispatchDecision.objects.filter(event="assigned").count() == 40


@pytest.mark.django_db
def test_a_pass_starts_from_one_statement_naming_queued_groups_held_slots_and_drains():
    from controlplane.dispatch import dispatch_view

    Worker.objects.create(id="w9", registered_at=T0, draining=True)
    Worker.objects.create(id="w1", registered_at=T0)
    with CaptureQueriesContext(connection) as idle:
        view = dispatch_view()
    assert (view.groups, view.held, view.draining, len(idle)) == ([], {}, {"w9"}, 1)
    queued(3)
    dispatch_once(now=T0, workers=[worker(free=2)], deliver=lambda task: None)
    view = dispatch_view()
    assert (view.held, view.draining) == ({"w1": 2}, {"w9"})
    [group] = view.groups
    assert (group.selector, group.reasons) == ({"pool": "a"}, {"matching_workers_busy": 1})


# -- poll: tasks built at claim time --------------------------------------------------------


def handed_out(core: Coordinator, who: Identity) -> list[TaskPayload]:
    """What a poll returns, minus its wait and its `close_old_connections` (which would end
    the test's transaction on PostgreSQL)."""
    items = asyncio.run(core.fleet.wait_for_mail(who.id, max_items=10, timeout=0))
    return core._task_for(items)


@pytest.mark.django_db
def test_poll_hands_out_the_claimed_tasks_but_none_cancelled_or_superseded_meanwhile(tmp_path):
    config = resolve(env={"DAGU_HOME": str(tmp_path)})
    core = Coordinator(config)
    who = Identity("w1", "h", 1, {"pool": "a"}, 10)
    core.fleet.record_heartbeat(who, running=[], stopping=False, now=datetime.now(UTC))
    runs = queued(3)
    assert core.dispatch_step() == 3
    assert {t.attempt_token for t in core.fleet.pending_mail()} == set(
        Attempt.objects.values_list("token", flat=True)
    )
    assert core._mailbox_tokens() == set(Attempt.objects.values_list("token", flat=True))
    # While the tasks wait in the mailbox: one run's cancel is requested, one attempt is
    # superseded (its worker was lost), the third is untouched.
    request_cancel(runs[0].id, now=T0)
    supersede_attempt(
        Attempt.objects.select_related("run").get(run_id=runs[1].id), reason="lost", now=T0
    )
    with CaptureQueriesContext(connection) as queries:
        tasks = handed_out(core, who)
    assert [t.dag_run_id for t in tasks] == [runs[2].id]
    assert tasks[0].attempt_token == Attempt.objects.get(run_id=runs[2].id).token
    # the one check of all three, then the cancel of the flagged run (rare: ORM statements)
    assert queries[0]["sql"].startswith("SELECT id, attempt, status, cancel_requested")
    cancelled = DagRun.objects.get(pk=runs[0].id)
    assert (cancelled.status, cancelled.error) == ("cancelled", "cancelled before it started")
    assert Attempt.objects.get(run_id=runs[0].id).status == "cancelled"
    assert set(cancelled.steps.values_list("status", flat=True)) == {"cancelled"}
    assert DagRun.objects.get(pk=runs[1].id).status == "queued"


@pytest.mark.django_db
def test_a_poll_of_tasks_still_current_costs_one_statement(tmp_path):
    core = Coordinator(resolve(env={"DAGU_HOME": str(tmp_path)}))
    who = Identity("w1", "h", 1, {"pool": "a"}, 10)
    core.fleet.record_heartbeat(who, running=[], stopping=False, now=datetime.now(UTC))
    queued(5)
    core.dispatch_step()
    with CaptureQueriesContext(connection) as queries:
        assert len(handed_out(core, who)) == 5
    assert len(queries) == 1


@pytest.mark.django_db
def test_a_report_that_frees_slots_brings_back_their_next_tasks_and_never_more(tmp_path):
    """Claim on report: the runs a report ends are replaced in its reply, counted from the
    slots stored for the worker, so a mailbox's tasks and the reply's never exceed them."""
    core = Coordinator(resolve(env={"DAGU_HOME": str(tmp_path)}))
    who = Identity("w1", "h", 1, {"pool": "a"}, 2)
    core.fleet.record_heartbeat(who, running=[], stopping=False, now=datetime.now(UTC))
    runs = queued(6)
    assert core.dispatch_step() == 2  # both slots, into the mailbox
    first = handed_out(core, who)
    # A report of one run's end, asking for 5: one slot is free, so one task comes back.
    core.wake_event.clear()
    result, refill = core.report_and_claim(fast_run(first[0]), worker_id="w1", want=5)
    assert result.finished_runs == [runs[0].id]
    assert [t.dag_run_id for t in refill] == [runs[2].id]
    assert refill[0].attempt_token == Attempt.objects.get(run_id=runs[2].id).token
    assert not core.fleet.pending_mail()  # in the reply, not in the mailbox
    assert not core.wake_event.is_set()  # its slot is refilled: no pass needed
    assert core.dispatch_step() == 0  # and a full pass finds the worker full
    # Without want_tasks (an older worker) the slot is left to the dispatcher and the poll.
    result, tasks = core.report_and_claim(fast_run(first[1]), worker_id="w1", want=0)
    assert tasks == [] and core.wake_event.is_set()
    assert core.dispatch_step() == 1
    assert [t.dag_run_id for t in handed_out(core, who)] == [runs[3].id]
    # A report that ends no run claims nothing, whatever it asks for.
    started = fast_run(refill[0])[:1]
    assert core.report_and_claim(started, worker_id="w1", want=3)[1] == []
    assert Attempt.objects.filter(status__in=["assigned", "running"]).count() == 2


@pytest.mark.django_db
def test_reports_written_together_refill_each_workers_slots_in_the_same_transaction(
    tmp_path, monkeypatch
):
    """Claim on report inside the reports' group commit: each worker gets back runs for the
    slots its own report freed, and a claim that fails takes the reports with it (nothing
    half done; the workers send them again and replays are idempotent)."""
    core = Coordinator(resolve(env={"DAGU_HOME": str(tmp_path)}))
    now = datetime.now(UTC)
    workers = [Identity(w, "h", 1, {"pool": "a"}, 1) for w in ("w1", "w2")]
    for who in workers:
        core.fleet.record_heartbeat(who, running=[], stopping=False, now=now)
    runs = queued(6)
    assert core.dispatch_step() == 2
    first = {who.id: handed_out(core, who)[0] for who in workers}
    reports = [Report(fast_run(first[w]), w, want=1) for w in ("w1", "w2")]

    def claim_fails(**kwargs: object) -> int:
        raise RuntimeError("disk full")

    monkeypatch.setattr("controlplane.coordinator.dispatch_once", claim_fails)
    # As the group commit calls it: inside its transaction.
    with pytest.raises(RuntimeError), transaction.atomic():
        core._apply_reports(reports)
    assert set(DagRun.objects.filter(pk__in=[r.id for r in runs[:2]]).values_list(
        "status", flat=True)) == {"running"}  # fmt: skip
    monkeypatch.undo()

    with transaction.atomic():
        results = core._apply_reports(reports)
    assert [r.finished_runs for r in results] == [[runs[0].id], [runs[1].id]]
    assert [[t.worker_id for t in r.tasks] for r in results] == [["w1"], ["w2"]]
    assert {t.dag_run_id for r in results for t in r.tasks} == {runs[2].id, runs[3].id}
    assert not core.fleet.pending_mail()  # in the replies, not in the mailboxes


@pytest.mark.django_db
def test_claim_on_report_reads_the_reporting_workers_drain_flag_not_the_last_pass(tmp_path):
    """Claim on report uses the queue's selector groups from the dispatcher's last pass,
    but reads the reporting workers' slots and drain flags itself: a drain an operator set
    after that pass wins."""
    core = Coordinator(resolve(env={"DAGU_HOME": str(tmp_path)}))
    who = Identity("w1", "h", 1, {"pool": "a"}, 1)
    core.fleet.record_heartbeat(who, running=[], stopping=False, now=datetime.now(UTC))
    queued(3)
    assert core.dispatch_step() == 1
    first = handed_out(core, who)[0]
    Worker.objects.create(id="w1", registered_at=T0, draining=True)
    result, tasks = core.report_and_claim(fast_run(first), worker_id="w1", want=1)
    assert result.finished_runs == [first.dag_run_id] and tasks == []
    assert Attempt.objects.filter(status__in=["assigned", "running"]).count() == 0


# -- reports: a batch in a fixed handful of statements --------------------------------------


@pytest.mark.django_db
def test_a_fast_runs_four_events_cost_a_few_statements_and_so_do_ten_runs(tmp_path: Path):
    runs = queued(11)
    delivered: list[TaskPayload] = []
    dispatch_once(now=T0, workers=[worker(free=11)], deliver=delivered.append)
    with CaptureQueriesContext(connection) as one:
        result = apply_events(fast_run(delivered[0]), log_dir=tmp_path)
    assert (result.applied, result.rejected_tokens, result.finished_runs) == (
        4,
        set(),
        [runs[0].id],
    )
    # SAVEPOINT, SELECT attempts, UPDATE steps, UPDATE runs, UPDATE attempts, RELEASE
    assert len(one) <= 6, [q["sql"] for q in one]
    with CaptureQueriesContext(connection) as ten:
        result = apply_events(
            [e for task in delivered[1:] for e in fast_run(task)], log_dir=tmp_path
        )
    assert result.applied == 40 and len(result.finished_runs) == 10
    assert len(ten) == len(one)
    for run in DagRun.objects.all():
        assert (run.status, run.outputs, run.started_at, run.finished_at) == (
            "succeeded",
            {"X": "1"},
            T0,
            T0,
        )
        step = run.steps.get()
        assert (step.status, step.exit_code, step.attempt, step.started_at) == (
            "succeeded",
            0,
            1,
            T0,
        )
        assert step.log_path == f"{run.id}/1/only.log"
    assert set(Attempt.objects.values_list("status", "last_event_seq")) == {("succeeded", 4)}
    # a replay of all of it: acked, nothing written
    with CaptureQueriesContext(connection) as replay:
        again = apply_events([e for task in delivered for e in fast_run(task)], log_dir=tmp_path)
    assert (again.applied, again.rejected_tokens, again.finished_runs) == (44, set(), [])
    assert not [q for q in replay if q["sql"].startswith("UPDATE")]


@pytest.mark.django_db
def test_events_split_over_reports_and_a_run_ending_with_steps_left(tmp_path: Path):
    (run,) = queued(1, TWO_STEPS)
    delivered: list[TaskPayload] = []
    dispatch_once(now=T0, workers=[worker()], deliver=delivered.append)
    task = delivered[0]
    e = {"dag_run_id": run.id, "attempt_token": task.attempt_token}
    later = T0 + timedelta(seconds=5)
    apply_events(
        [
            Event(seq=1, kind=ATTEMPT_STARTED, at=T0, **e),
            Event(seq=2, kind=STEP_STARTED, step="one", at=T0, **e),
        ],
        log_dir=tmp_path,
    )
    run.refresh_from_db()
    assert (run.status, run.started_at) == ("running", T0)
    assert run.steps.get(name="one").status == "running"
    with CaptureQueriesContext(connection) as queries:
        result = apply_events(
            [
                Event(
                    seq=3,
                    kind=STEP_FINISHED,
                    step="one",
                    status="failed",
                    exit_code=3,
                    at=later,
                    **e,
                ),
                Event(seq=4, kind=RUN_FINISHED, status="failed", error="one failed", at=later, **e),
            ],
            log_dir=tmp_path,
        )
    assert result.finished_runs == [run.id]
    leftover = [q for q in queries if "EXISTS" in q["sql"]]
    assert len(leftover) == 1  # step two never started: one statement for what is left
    run.refresh_from_db()
    assert (run.status, run.error, run.started_at, run.finished_at) == (
        "failed",
        "one failed",
        T0,
        later,
    )
    one, two = run.steps.get(name="one"), run.steps.get(name="two")
    assert (one.status, one.exit_code, one.started_at, one.finished_at) == ("failed", 3, T0, later)
    assert (two.status, two.error) == ("skipped", "one failed")
    assert Attempt.objects.get().status == "failed"


@pytest.mark.django_db
def test_reports_applied_together_each_get_their_own_result(tmp_path: Path):
    queued(3)
    delivered: list[TaskPayload] = []
    dispatch_once(now=T0, workers=[worker()], deliver=delivered.append)
    a, b, c = delivered
    supersede_attempt(
        Attempt.objects.select_related("run").get(token=c.attempt_token), reason="x", now=T0
    )
    first = fast_run(a)
    results = apply_batches(
        [
            Report(first[:2], "w1"),
            Report([*first[1:], *fast_run(b)], "w1"),  # overlaps the first (a worker's resend)
            Report(fast_run(c), "w1"),  # superseded
            Report([Event(seq=1, dag_run_id="n", attempt_token="unknown", kind=ATTEMPT_STARTED)]),
        ],
        log_dir=tmp_path,
    )
    assert [(r.applied, r.rejected_tokens, r.finished_runs) for r in results] == [
        (2, set(), []),
        (7, set(), [a.dag_run_id, b.dag_run_id]),
        (0, {c.attempt_token}, []),
        (0, {"unknown"}, []),
    ]
    assert DagRun.objects.get(pk=a.dag_run_id).status == "succeeded"
    assert Attempt.objects.get(token=a.attempt_token).last_event_seq == 4


@pytest.mark.django_db
def test_a_report_naming_another_workers_attempt_is_refused_whole(tmp_path: Path):
    queued(2)
    delivered: list[TaskPayload] = []
    dispatch_once(now=T0, workers=[worker("w1", free=1)], deliver=delivered.append)
    dispatch_once(now=T0, workers=[worker("w2", free=1)], deliver=delivered.append)
    mine, theirs = delivered
    results = apply_batches(
        [Report([*fast_run(mine), *fast_run(theirs)], "w1"), Report(fast_run(mine), "w1")],
        log_dir=tmp_path,
    )
    assert results[0].foreign_run == theirs.dag_run_id and results[0].applied == 0
    assert results[1].finished_runs == [mine.dag_run_id]  # the other report still applied
    assert DagRun.objects.get(pk=theirs.dag_run_id).status == "running"
    assert Attempt.objects.get(token=theirs.attempt_token).last_event_seq == 0


def test_group_commit_applies_concurrent_reports_together_and_each_gets_its_result():
    groups: list[int] = []
    gate = threading.Event()

    def apply(reports: list[Report]) -> list:
        groups.append(len(reports))
        if len(groups) == 1:
            gate.wait(timeout=10)  # hold the first writer until the others queued up
        if any(e.seq < 0 for report in reports for e in report.events):
            raise RuntimeError("bad batch")
        return [len(report.events) for report in reports]

    commit = GroupCommit(apply, timeout=30)
    results: dict[int, object] = {}

    def submit(i: int) -> None:
        events = [
            Event(seq=s, dag_run_id="r", attempt_token=f"t{i}", kind="x") for s in range(1, i + 2)
        ]
        try:
            results[i] = commit.submit(Report(events))
        except RuntimeError as exc:
            results[i] = str(exc)

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    while not groups:
        threading.Event().wait(0.01)
    others = [threading.Thread(target=submit, args=(i,)) for i in range(1, 6)]
    for t in others:
        t.start()
    while len(commit._queue) < 5:
        threading.Event().wait(0.01)
    gate.set()
    for t in [first, *others]:
        t.join(timeout=30)
    assert results == {i: i + 1 for i in range(6)}
    assert groups == [1, 5]  # the five that waited were written as one group
    # an error reaches every caller of its group, and the next group is unaffected
    bad = [Event(seq=-1, dag_run_id="r", attempt_token="t", kind="x")]
    with pytest.raises(RuntimeError, match="bad batch"):
        commit.submit(Report(bad))
    assert commit.submit(Report([Event(seq=1, dag_run_id="r", attempt_token="t", kind="x")])) == 1


def test_group_commit_takes_in_what_arrives_while_it_waits_for_the_write_lock():
    """Reports that queue while the writer waits for the lock join its group, except those
    with log chunks: their files are written before a transaction, never inside one."""
    groups: list[list[str]] = []
    prepared: list[list[str]] = []
    waiting, lock_free = threading.Event(), threading.Event()

    @contextmanager
    def hold() -> Iterator[None]:
        waiting.set()
        lock_free.wait(timeout=10)  # the write lock is someone else's meanwhile
        yield

    def tokens(reports: list[Report]) -> list[str]:
        return [r.events[0].attempt_token for r in reports]

    def apply(reports: list[Report]) -> list:
        groups.append(tokens(reports))
        return [0] * len(reports)

    commit = GroupCommit(apply, prepare=lambda r: prepared.append(tokens(r)), hold=hold)

    def submit(token: str, kind: str = "x") -> None:
        commit.submit(Report([Event(seq=1, dag_run_id="r", attempt_token=token, kind=kind)]))

    threads = [threading.Thread(target=submit, args=("first",))]
    threads[0].start()
    assert waiting.wait(timeout=10)
    later = [("a", "x"), ("logs", STEP_LOG), ("b", "x")]
    for n, item in enumerate(later, start=1):
        threads.append(threading.Thread(target=submit, args=item))
        threads[-1].start()
        while len(commit._queue) < n:  # queued in this order
            threading.Event().wait(0.01)
    lock_free.set()
    for t in threads:
        t.join(timeout=30)
    assert groups == [["first", "a", "b"], ["logs"]]
    assert prepared == [["first"], ["logs"]]


def test_group_commit_lingers_under_load_for_reports_to_join_and_not_after_a_quiet_spell():
    clock = [100.0]
    slept: list[float] = []
    groups: list[list[str]] = []
    late: list[threading.Thread] = []

    def apply(reports: list[Report]) -> list:
        groups.append([r.events[0].attempt_token for r in reports])
        return [0] * len(reports)

    def sleep(seconds: float) -> None:
        # While the writer lingers, another report arrives and queues behind it.
        slept.append(seconds)
        late.append(threading.Thread(target=submit, args=("late",)))
        late[-1].start()
        while not commit._queue:
            threading.Event().wait(0.01)
        clock[0] += seconds

    commit = GroupCommit(apply, linger=0.003, busy_within=0.05, clock=lambda: clock[0], sleep=sleep)

    def submit(token: str) -> None:
        commit.submit(Report([Event(seq=1, dag_run_id="r", attempt_token=token, kind="x")]))

    submit("first")  # nothing before it: written at once
    assert (slept, groups) == ([], [["first"]])
    clock[0] += 0.01  # the next one comes while the fleet is busy
    submit("busy")
    late[0].join(timeout=30)
    assert slept == [0.003]
    assert groups == [["first"], ["busy", "late"]]  # the late one joined the lingering group
    clock[0] += 1.0  # a quiet spell
    submit("after")
    assert slept == [0.003] and groups[-1] == ["after"]
