"""The dispatch step: claim queued distributed runs for workers, or record why they wait.

`dispatch_once` is the one place that claims queued runs for workers; the rules it applies
(which worker, which waiting reason) are the pure functions of `controlplane.core.routing`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction

from controlplane.core.labels import matches
from controlplane.core.routing import (
    WorkerView,
    can_take_a_run,
    choose_worker,
    waiting_reason,
)
from controlplane.core.states import ACTIVE_ATTEMPT_STATUSES
from controlplane.models import DecisionEvent, DispatchDecision
from dags import sql
from dags.models import Attempt, DagRun, ExecutionMode, RunStatus
from dags.runs import (
    QueuedRun,
    TaskPayload,
    claim_runs,
    insert_assigned_decisions,
)
from workers.models import Worker

logger = logging.getLogger(__name__)


@dataclass
class SelectorGroup:
    """The queued distributed runs that share one selector: dispatch decides per group.

    Distinct selectors are few even when queued runs are many, so a pass costs one grouped
    query plus work per group, never a scan of every row in Python.
    """

    selector: dict[str, str]
    # The stored JSON values meaning this selector (key order may differ between rows).
    forms: list[dict[str, str]] = field(default_factory=list)
    # How many of its runs carry each waiting reason now ("" for none yet).
    reasons: dict[str, int] = field(default_factory=dict)


def dispatch_once(
    *,
    now: datetime,
    workers: list[WorkerView],
    deliver: Callable[[TaskPayload], None],
    groups: list[SelectorGroup] | None = None,
    record_waiting: bool = True,
) -> int:
    """Assign queued distributed runs, oldest first, to matching workers with free slots.

    Works per selector group: each group that has a worker with free slots offers its oldest
    runs (as many as those slots), all offers are assigned oldest first, and every group left
    waiting gets its reason, written only to runs whose reason changes. So a run no worker
    matches never holds up one that a worker does, whatever the backlog.

    The whole pass claims in a handful of statements: one compare-and-set UPDATE for every
    run it assigns (so two dispatchers can never hand the same attempt to two workers),
    one INSERT of their attempts and one of their decision rows. On PostgreSQL the offered
    runs are read FOR UPDATE SKIP LOCKED, so two coordinators' passes never wait on each
    other's rows; the compare-and-set keeps them correct without the lock. Each claimed
    attempt is delivered as the task its worker gets, built from what the pass read.
    `groups` is `queued_groups()` if the caller read it already. `record_waiting=False`
    leaves waiting reasons alone: for a pass over part of the fleet (claim on report), whose
    view of who could take a run is partial. Returns how many runs were assigned.
    """

    views = {w.id: w for w in workers}
    claimed: list[TaskPayload] = []
    if groups is not None and not _anything_to_write(groups, list(views.values()), record_waiting):
        # No free slot any group could use and every reason already recorded: no write
        # transaction, which on SQLite would take the one write lock from run creation
        # and reports for nothing (a busy fleet's passes are mostly like this).
        return 0
    # One transaction for the whole pass: with SQLite's single write lock, the number of
    # write transactions per run is what bounds throughput. Mailboxes are filled only after
    # the commit, so no worker can see an attempt that might still roll back. Inside a
    # caller's transaction (claim on report, in the reports' group commit) no savepoint:
    # nothing here is caught and retried, so a failure fails the caller's transaction too,
    # and `deliver` must then keep the tasks until that one commits.
    with transaction.atomic(savepoint=False):
        if groups is None:
            groups = queued_groups()
        offers: list[QueuedRun] = []
        for group in groups:
            slots = sum(w.free_slots for w in _takers(group.selector, views.values()))
            if slots:
                offers.extend(_oldest_runs(group, limit=slots))
        offers.sort(key=lambda run: (run.queued_at, run.id))
        picks: list[tuple[QueuedRun, WorkerView, int, int]] = []
        for run in offers:
            pool = list(views.values())
            worker, matched = choose_worker(run.worker_selector, pool)
            if worker is None:
                continue  # its group's reason is recorded below
            picks.append((run, worker, len(pool), matched))
            views[worker.id] = dataclasses.replace(worker, free_slots=worker.free_slots - 1)
        if picks:
            claimed = _assign(picks, now=now)
        pool = list(views.values())
        for group in groups if record_waiting else ():
            worker, matched = choose_worker(group.selector, pool)
            if worker is not None:
                continue  # a claim was lost to a race; the next pass retries
            reason = waiting_reason(group.selector, pool)
            if any(r != reason for r in group.reasons):
                _record_waiting(group, reason, now=now, considered=len(pool), matched=matched)
    for task in claimed:
        deliver(task)
    return len(claimed)


def _anything_to_write(
    groups: list[SelectorGroup], workers: list[WorkerView], record_waiting: bool
) -> bool:
    """Whether a pass over these groups could claim a run or change a waiting reason."""
    for group in groups:
        if any(w.free_slots for w in _takers(group.selector, workers)):
            return True
        if record_waiting and choose_worker(group.selector, workers)[0] is None:
            reason = waiting_reason(group.selector, workers)
            if any(r != reason for r in group.reasons):
                return True
    return False


def _assign(
    picks: list[tuple[QueuedRun, WorkerView, int, int]], *, now: datetime
) -> list[TaskPayload]:
    """Claim the picked runs for their workers and record an `assigned` decision for each."""
    tasks = claim_runs(
        [(run, worker.id) for run, worker, _, _ in picks], now=now, mode=ExecutionMode.DISTRIBUTED
    )
    won = {task.dag_run_id: task for task in tasks}
    decisions = []
    for run, worker, considered, matched in picks:
        task = won.get(run.id)
        if task is None:
            continue  # another dispatcher, or a cancel, got there first
        detail = (
            f"attempt {task.attempt} assigned to {worker.id} "
            f"({matched} of {considered} workers matched)"
        )
        decisions.append((run, task, considered, matched, detail))
        logger.info("run %s attempt %d assigned to %s", run.id, task.attempt, worker.id)
    insert_assigned_decisions(decisions, now=now)
    return tasks


def _takers(selector: Mapping[str, str], workers: Iterable[WorkerView]) -> list[WorkerView]:
    """Workers that could take a run with this selector right now."""
    return [w for w in workers if can_take_a_run(w) and matches(w.labels, selector)]


@dataclass
class DispatchView:
    """What a pass starts from, read in one statement: the queued runs by selector, the
    active attempts each worker holds (as `workers.load.held_attempts`) and the workers an
    operator drains. One snapshot, so a run queued after a drain is never seen without it."""

    groups: list[SelectorGroup]
    held: dict[str, int]
    draining: set[str]


def dispatch_view() -> DispatchView:
    """One statement; its `groups` are empty when no distributed run waits."""
    # Plain SQL: this runs on every wake-up of the dispatcher, and the ORM's building of a
    # grouped query cost more than the query (docs/benchmarks.md).
    selector = "worker_selector::text" if connection.vendor == "postgresql" else "worker_selector"
    rows = sql.fetch(
        f"SELECT 0, {selector}, waiting_reason, COUNT(*) FROM {sql.table(DagRun)} "
        "WHERE status = %s AND execution_mode = %s AND cancel_requested = %s "
        "GROUP BY worker_selector, waiting_reason "
        f"UNION ALL SELECT 1, worker_id, '', COUNT(*) FROM {sql.table(Attempt)} "
        f"WHERE status IN ({sql.marks(len(ACTIVE_ATTEMPT_STATUSES))}) AND mode = %s "
        "GROUP BY worker_id "
        f"UNION ALL SELECT 2, id, '', 0 FROM {sql.table(Worker)} WHERE draining = %s",
        [
            RunStatus.QUEUED,
            ExecutionMode.DISTRIBUTED,
            False,
            *ACTIVE_ATTEMPT_STATUSES,
            ExecutionMode.DISTRIBUTED,
            True,
        ],
    )
    view = DispatchView(groups=[], held={}, draining=set())
    groups: dict[tuple[tuple[str, str], ...], SelectorGroup] = {}
    for kind, key, reason, n in rows:
        if kind == 1:
            view.held[key] = n
        elif kind == 2:
            view.draining.add(key)
        else:
            _add_to_group(groups, key, reason, n)
    view.groups = list(groups.values())
    return view


def slots_view(worker_ids: Sequence[str]) -> tuple[dict[str, int], set[str]]:
    """For these workers only, in one statement: the active attempts each holds (as
    `DispatchView.held`) and which of them an operator drains (claim on report)."""
    rows = sql.fetch(
        f"SELECT 1, worker_id, COUNT(*) FROM {sql.table(Attempt)} "
        f"WHERE status IN ({sql.marks(len(ACTIVE_ATTEMPT_STATUSES))}) AND mode = %s "
        f"AND worker_id IN ({sql.marks(len(worker_ids))}) GROUP BY worker_id "
        f"UNION ALL SELECT 2, id, 0 FROM {sql.table(Worker)} "
        f"WHERE draining = %s AND id IN ({sql.marks(len(worker_ids))})",
        [*ACTIVE_ATTEMPT_STATUSES, ExecutionMode.DISTRIBUTED, *worker_ids, True, *worker_ids],
    )
    held = {key: n for kind, key, n in rows if kind == 1}
    return held, {key for kind, key, _ in rows if kind == 2}


def queued_groups() -> list[SelectorGroup]:
    """The queued distributed runs by selector (empty when none wait)."""
    return dispatch_view().groups


def _add_to_group(
    groups: dict[tuple[tuple[str, str], ...], SelectorGroup], stored: object, reason: str, n: int
) -> None:
    # The JSON as stored: text (on PostgreSQL cast to text, whose key order is jsonb's own).
    selector = dict((json.loads(stored) if isinstance(stored, str) else stored) or {})
    group = groups.setdefault(tuple(sorted(selector.items())), SelectorGroup(selector=selector))
    if all(list(f.items()) != list(selector.items()) for f in group.forms):
        group.forms.append(selector)
    group.reasons[reason] = group.reasons.get(reason, 0) + n


def _oldest_runs(group: SelectorGroup, *, limit: int) -> list[QueuedRun]:
    """The group's oldest queued runs, at most `limit`, as `QueuedRun`s.

    Plain SQL (the ORM's `values_list` of these fields, with its two joins, cost more to
    build than to run, and claim on report runs a pass per report, inside the write lock).
    SKIP LOCKED: rows another coordinator's pass is claiming are left to it (PostgreSQL;
    SQLite has one writer at a time and has no FOR UPDATE). `OF` spares the root and parent.
    """
    runs = sql.table(DagRun)
    params: list[object] = [RunStatus.QUEUED, ExecutionMode.DISTRIBUTED, False]
    # Stored JSON compared as the ORM compares it: the value adapted by the field itself.
    params += [sql.as_json(DagRun, "worker_selector", form) for form in group.forms]
    forms = " OR ".join(["r.worker_selector = %s"] * len(group.forms))
    lock = " FOR UPDATE OF r SKIP LOCKED" if connection.vendor == "postgresql" else ""
    rows = sql.fetch(
        "SELECT r.id, r.queued_at, r.worker_selector, r.execution_mode, r.mode_reason, "
        "r.dag_name, r.spec, r.params, r.source, r.root_id, root.dag_name, r.parent_id, "
        f"parent.dag_name FROM {runs} r LEFT JOIN {runs} root ON root.id = r.root_id "
        f"LEFT JOIN {runs} parent ON parent.id = r.parent_id "
        f"WHERE r.status = %s AND r.execution_mode = %s AND r.cancel_requested = %s "
        f"AND ({forms}) ORDER BY r.queued_at, r.id LIMIT {int(limit)}{lock}",
        params,
    )
    return [
        QueuedRun(
            row[0],
            sql.read_datetime(row[1]),
            _json(row[2]),
            *row[3:7],
            _json(row[7]),
            *row[8:],
        )
        for row in rows
    ]


def _json(value: object) -> dict[str, str]:
    # Text from both backends as Django's connections set them up; a dict should a driver
    # decode JSON itself.
    return dict(json.loads(value) if isinstance(value, str | bytes) else value or {})


def _record_waiting(
    group: SelectorGroup, reason: str, *, now: datetime, considered: int, matched: int
) -> None:
    """Give every run of the group `reason`; a decision row only where the reason changes.

    In the database, with no run passing through Python: while creation outruns the workers,
    every pass gives the runs queued since the last one this reason, and building their
    decision rows in Python held SQLite's write lock for most of the pass.
    """
    forms = " OR ".join(["worker_selector = %s"] * len(group.forms))
    where = (
        f"status = %s AND execution_mode = %s AND cancel_requested = %s AND ({forms}) "
        "AND waiting_reason <> %s"
    )
    where_params = [
        RunStatus.QUEUED,
        ExecutionMode.DISTRIBUTED,
        False,
        *(sql.as_json(DagRun, "worker_selector", form) for form in group.forms),
        reason,
    ]
    insert = (
        f"INSERT INTO {sql.table(DispatchDecision)} ({_DECISION_COLUMNS}) "
        "SELECT id, attempt, %s, execution_mode, mode_reason, worker_selector, %s, %s, '', %s, "
        "%s, %s FROM"
    )
    values = [
        DecisionEvent.WAITING,
        considered,
        matched,
        reason,
        f"waiting: {reason.replace('_', ' ')}",
        sql.when_datetime(now),
    ]
    runs = sql.table(DagRun)
    if connection.vendor == "postgresql":
        # One statement, so the runs given the reason are exactly the runs recorded even
        # while another coordinator claims some of them.
        sql.execute(
            f"WITH changed AS (UPDATE {runs} SET waiting_reason = %s WHERE {where} "
            "RETURNING id, attempt, execution_mode, mode_reason, worker_selector) "
            f"{insert} changed",
            [reason, *where_params, *values],
        )
        return
    # SQLite has no UPDATE inside WITH; this transaction holds its one write lock, so both
    # statements see the same runs.
    sql.execute(f"{insert} {runs} WHERE {where}", [*values, *where_params])
    sql.execute(f"UPDATE {runs} SET waiting_reason = %s WHERE {where}", [reason, *where_params])


_DECISION_COLUMNS = (
    "run_id, attempt, event, mode, why, selector, workers_considered, workers_matched, "
    "chosen_worker, waiting_reason, detail, decided_at"
)
