"""Run lifecycle: create, claim, cancel, retry, and the run's JSON shape.

Every state change of a run goes through this module or `dags.reports`, never through
signals or `save()` overrides, so the flow can be read top to bottom.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import (
    BigIntegerField,
    BooleanField,
    CharField,
    F,
    Field,
    ForeignKey,
    IntegerField,
    Model,
    PositiveIntegerField,
    SmallIntegerField,
    TextField,
)

from controlplane.core.config import Config
from controlplane.core.routing import ModeDecision, decide_execution_mode
from controlplane.core.spec import (
    DagFile,
    dag_name_problem,
    find_in_dags_dir,
    load_dag_file,
    parse_stored_dag_file,
    resolve_params,
)
from controlplane.models import DecisionEvent, DispatchDecision
from dags import sql, wakeups
from dags.models import (
    TERMINAL_RUN_STATUSES,
    Attempt,
    AttemptStatus,
    DagRun,
    RunStatus,
    StepRun,
    StepStatus,
)

logger = logging.getLogger(__name__)


class RunError(Exception):
    """A run operation that cannot be done (unknown run, wrong state)."""


def new_run_id(now: datetime) -> str:
    # Sortable by creation time and unique without coordination.
    return f"{now:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


def new_attempt_token() -> str:
    return secrets.token_hex(16)


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z suffix, as every JSON output uses."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@transaction.atomic
def create_run(
    dag_file: DagFile,
    *,
    now: datetime,
    default_mode: str,
    dag_name: str | None = None,
    params: Mapping[str, str] | None = None,
    source: str = "",
    parent: DagRun | None = None,
    parent_step: str = "",
    parent_item: int | None = None,
    step_selector: Mapping[str, str] | None = None,
    by: str = "",
) -> DagRun:
    """Create a queued run of `dag_name` (default: the file's main DAG) and record its mode.

    `by` is the user who started it (empty for the scheduler, a parent run or the CLI)."""
    dag = dag_file.get(dag_name) if dag_name else dag_file.main
    if dag is None:
        raise RunError(f'DAG "{dag_name}" is not defined in {dag_file.source}')
    try:
        resolved = resolve_params(dag, params or {})
    except ValueError as exc:
        raise RunError(f"params: {exc}") from None
    decision = decide_execution_mode(
        dag, step_selector=step_selector or {}, default_mode=default_mode
    )
    run = DagRun(
        id=new_run_id(now),
        dag_name=dag.name,
        spec=dag_file.text,
        source=source or dag_file.source,
        params=resolved,
        status=RunStatus.QUEUED,
        execution_mode=decision.mode,
        mode_reason=decision.why,
        worker_selector=dict(decision.selector),
        root=(parent.root or parent) if parent else None,
        parent=parent,
        parent_step=parent_step,
        parent_item=parent_item,
        parent_retry=parent.retry_count if parent else 0,
        on_worker_lost=dag.on_worker_lost,
        max_redispatch=dag.max_redispatch,
        queued_at=now,
        started_by=by,
    )
    created = decision_row(
        run,
        decision=decision,
        event=DecisionEvent.CREATED,
        now=now,
        detail=_created_detail(decision),
    )
    # Three INSERTs, one per table: the run, all its steps, its first decision.
    with one_round_trip(DagRun):
        insert_rows([run])
        insert_rows(
            [StepRun(run=run, name=step.name, position=i) for i, step in enumerate(dag.steps)]
        )
        insert_rows([created])
    logger.info("run %s of %s queued (%s: %s)", run.id, dag.name, decision.mode, decision.why)
    wakeups.runs_queued()  # every coordinator looks at the queue once this commits
    return run


@contextmanager
def one_round_trip(model: type[Model]) -> Iterator[None]:
    """On PostgreSQL, send the statements executed inside in one round trip (psycopg's
    pipeline mode); errors surface, as Django's, when the block ends. Elsewhere a no-op.

    Creating a run is three INSERTs and a commit: over a socket, waiting for each INSERT's
    answer took longer than the database took to run it.
    """
    conn = connections[router.db_for_write(model)]
    if conn.vendor != "postgresql":
        yield
        return
    conn.ensure_connection()
    with conn.wrap_database_errors, conn.connection.pipeline():
        yield


def insert_rows(rows: Sequence[Model]) -> None:
    """INSERT `rows` (instances of one model) as `bulk_create` would, one statement a batch.

    Run creation is on every run's path (the API, `manage.py start`, the scheduler, sub-DAG
    steps), and compiling its three INSERTs through the ORM cost more than the database took
    to run them; the statement text is built once per model, batch size and database. Values
    go through each field's own `pre_save` and `get_db_prep_save`, as the ORM's compiler does.
    Database-generated keys are not read back; the rows count as saved afterwards.
    """
    if not rows:
        return
    model = type(rows[0])
    alias = router.db_for_write(model)
    conn = connections[alias]
    fields, preps = _preparers(model)
    batch = max(1, conn.ops.bulk_batch_size(fields, rows)) if len(rows) > 1 else 1
    with conn.cursor() as cursor:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            params = [prep(row, conn) for row in chunk for prep in preps]
            cursor.execute(_insert_sql(model, fields, alias, len(chunk)), params)
    for row in rows:
        row._state.adding, row._state.db = False, alias


_Prep = Callable[[Model, BaseDatabaseWrapper], object]


def _preparers(model: type[Model]) -> tuple[list[Field[Any, Any]], list[_Prep]]:
    """The fields an INSERT of `model` writes, and for each a function giving a row's value
    as the ORM's compiler would (`pre_save`, then `get_db_prep_save`).

    For text, integer and boolean fields holding a value of their own type that chain is
    the value itself, and running it was a quarter of creating a run; those take the value
    as it is. Anything else (dates, JSON, a value of another type, a subclass of those
    fields) goes the ORM's way."""
    cached = _PREPARERS.get(model)
    if cached is None:
        fields = [f for f in model._meta.concrete_fields if not (f.primary_key and f.db_returning)]
        cached = _PREPARERS[model] = (fields, [_preparer(f) for f in fields])
    return cached


def _preparer(field: Field[Any, Any]) -> _Prep:
    def orm(row: Model, conn: BaseDatabaseWrapper) -> object:
        return field.get_db_prep_save(field.pre_save(row, True), connection=conn)

    attname = field.attname
    key = isinstance(field, ForeignKey)
    kind = _AS_IS.get(type(field.target_field if key else field))
    if kind is None:
        return orm
    if kind is str:
        # CharField.to_python keeps any str as it is; a foreign key's "" may mean NULL.
        def text(row: Model, conn: BaseDatabaseWrapper) -> object:
            value = getattr(row, attname)
            return value if isinstance(value, str) and (value or not key) else orm(row, conn)

        return text

    def exact(row: Model, conn: BaseDatabaseWrapper) -> object:
        value = getattr(row, attname)
        return value if type(value) is kind else orm(row, conn)

    return exact


# Field classes whose `get_db_prep_save` returns a value of this type unchanged.
_AS_IS: dict[type, type] = {
    CharField: str,
    TextField: str,
    IntegerField: int,
    PositiveIntegerField: int,
    BigIntegerField: int,
    SmallIntegerField: int,
    BooleanField: bool,
}
_PREPARERS: dict[type[Model], tuple[list[Field[Any, Any]], list[_Prep]]] = {}


def _insert_sql(model: type[Model], fields: list[Field[Any, Any]], alias: str, count: int) -> str:
    key = (model, alias, count)
    sql = _INSERTS.get(key)
    if sql is None:
        ops = connections[alias].ops
        columns = ", ".join(ops.quote_name(f.column) for f in fields)
        one = "(" + ", ".join(["%s"] * len(fields)) + ")"
        sql = f"INSERT INTO {ops.quote_name(model._meta.db_table)} ({columns}) VALUES "
        sql += ", ".join([one] * count)
        if len(_INSERTS) >= _INSERTS_MAX:
            _INSERTS.clear()  # DAGs of many different sizes: start over rather than grow
        _INSERTS[key] = sql
    return sql


# (model, database alias, rows) -> the INSERT statement; one per DAG size in use.
_INSERTS: dict[tuple[type[Model], str, int], str] = {}
_INSERTS_MAX = 512


def _created_detail(decision: ModeDecision) -> str:
    if decision.why == "forced_local":
        return "worker_selector is local: runs on the main instance"
    if decision.why == "selector":
        pairs = ",".join(f"{k}={v}" for k, v in sorted(decision.selector.items()))
        return f"worker_selector {pairs}: dispatched to a matching worker"
    return f"no worker_selector: default_execution_mode is {decision.mode}"


def record_decision(run: DagRun, **fields: Any) -> DispatchDecision:
    """Store a decision about `run`; `fields` as for `decision_row`."""
    row = decision_row(run, **fields)
    row.save(force_insert=True)
    return row


def decision_row(
    run: DagRun,
    *,
    decision: ModeDecision | None = None,
    event: str,
    now: datetime,
    detail: str = "",
    workers_considered: int = 0,
    workers_matched: int = 0,
    chosen_worker: str = "",
    waiting_reason: str = "",
) -> DispatchDecision:
    """An unsaved decision about `run`, for `record_decision` or a bulk insert."""
    return DispatchDecision(
        run=run,
        attempt=run.attempt,
        event=event,
        mode=decision.mode if decision else run.execution_mode,
        why=decision.why if decision else run.mode_reason,
        selector=dict(decision.selector) if decision else run.worker_selector,
        workers_considered=workers_considered,
        workers_matched=workers_matched,
        chosen_worker=chosen_worker,
        waiting_reason=waiting_reason,
        detail=detail,
        decided_at=now,
    )


def start_attempt(run: DagRun, *, now: datetime, mode: str, worker_id: str = "") -> Attempt | None:
    """Claim the queued run for a new attempt. Compare-and-set: None if someone else won."""
    # No savepoint: a lost race raises nothing, and the dispatcher calls this inside its
    # pass-wide transaction.
    with transaction.atomic(savepoint=False):
        won = DagRun.objects.filter(
            pk=run.pk, status=RunStatus.QUEUED, attempt=run.attempt, cancel_requested=False
        ).update(
            status=RunStatus.RUNNING,
            attempt=F("attempt") + 1,
            worker_id=worker_id,
            waiting_reason="",
        )
        if not won:
            return None
        # The compare-and-set fixed these values; no need to read them back.
        run.status, run.attempt = RunStatus.RUNNING, run.attempt + 1
        run.worker_id, run.waiting_reason = worker_id, ""
        return Attempt.objects.create(
            run=run,
            number=run.attempt,
            token=new_attempt_token(),
            mode=mode,
            worker_id=worker_id,
            status=AttemptStatus.ASSIGNED,
            created_at=now,
        )


@dataclass(frozen=True)
class TaskPayload:
    """A claimed attempt as handed to a worker (converted to a proto `Task` by the RPC edge).

    Built at claim time from what the claim reads anyway, so a poll hands it out without
    reading the run again; `worker_id` is the worker it was claimed for.
    """

    dag_run_id: str
    dag_name: str
    attempt: int
    attempt_token: str
    definition: str
    params: Mapping[str, str]
    root_dag_run_id: str
    root_dag_name: str
    parent_dag_run_id: str
    parent_dag_name: str
    completed: list[tuple[str, str, int | None, str | None]]  # name, status, exit, output
    source: str
    worker_id: str = ""


@dataclass(frozen=True)
class QueuedRun:
    """A queued run as dispatch reads it: enough to pick a worker, claim it, build its task."""

    id: str
    queued_at: datetime
    worker_selector: dict[str, str]
    execution_mode: str
    mode_reason: str
    dag_name: str
    spec: str
    params: dict[str, str]
    source: str
    root_id: str | None
    root_dag_name: str | None
    parent_id: str | None
    parent_dag_name: str | None


_COMPLETED_STEP_STATES = (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED)
# Runs per claiming UPDATE (three parameters each).
CLAIM_CHUNK = 2000


def claim_runs(
    picks: Sequence[tuple[QueuedRun, str]], *, now: datetime, mode: str
) -> list[TaskPayload]:
    """Claim queued runs, each for its worker, as new attempts; the tasks of those won.

    One compare-and-set for all of them (still queued, no cancel requested; RETURNING the
    new attempt numbers), one INSERT of their attempts, and for retried or redispatched
    runs only (attempt > 1) one query for the steps an earlier attempt completed. Runs
    someone else claimed or cancelled first are left out. Call it inside a transaction.
    """
    if not picks:
        return []
    won: dict[str, int] = {}
    # In chunks: SQLite takes at most 32,766 parameters per statement, and a large fleet's
    # free slots can ask for more runs than that in one pass.
    for start in range(0, len(picks), CLAIM_CHUNK):
        won.update(_compare_and_set(picks[start : start + CLAIM_CHUNK]))
    claimed = [(run, worker, won[run.id]) for run, worker in picks if run.id in won]
    if not claimed:
        return []
    created = sql.when_datetime(now)
    tokens = [new_attempt_token() for _ in claimed]
    sql.execute_many(
        f"INSERT INTO {sql.table(Attempt)} (run_id, number, token, mode, worker_id, status, "
        "created_at, last_event_seq, end_reason) VALUES (%s, %s, %s, %s, %s, %s, %s, 0, '')",
        [
            (run.id, number, token, mode, worker, AttemptStatus.ASSIGNED, created)
            for (run, worker, number), token in zip(claimed, tokens, strict=True)
        ],
    )
    completed = _completed_of([run.id for run, _, number in claimed if number > 1])
    return [
        TaskPayload(
            dag_run_id=run.id,
            dag_name=run.dag_name,
            attempt=number,
            attempt_token=token,
            definition=run.spec,
            params=run.params,
            root_dag_run_id=run.root_id or run.id,
            root_dag_name=run.root_dag_name if run.root_id else run.dag_name,
            parent_dag_run_id=run.parent_id or "",
            parent_dag_name=run.parent_dag_name or "",
            completed=completed.get(run.id, []),
            source=run.source,
            worker_id=worker,
        )
        for (run, worker, number), token in zip(claimed, tokens, strict=True)
    ]


def _compare_and_set(picks: Sequence[tuple[QueuedRun, str]]) -> dict[str, int]:
    """Claim still-queued, uncancelled runs for their workers: {run id: new attempt number}."""
    params: list[object] = [RunStatus.RUNNING]
    workers = sql.case("id", ((run.id, worker) for run, worker in picks), params)
    params += [run.id for run, _ in picks]
    params += [RunStatus.QUEUED, False]
    rows = sql.fetch(
        f"UPDATE {sql.table(DagRun)} SET status = %s, attempt = attempt + 1, "
        f"worker_id = {workers}, waiting_reason = '' "
        f"WHERE id IN ({sql.marks(len(picks))}) AND status = %s AND cancel_requested = %s "
        "RETURNING id, attempt",
        params,
    )
    return {run_id: int(attempt) for run_id, attempt in rows}


def _completed_of(run_ids: list[str]) -> dict[str, list[tuple[str, str, int | None, str | None]]]:
    """Steps an earlier attempt finished, per run, in position order (none asked: no query)."""
    out: dict[str, list[tuple[str, str, int | None, str | None]]] = {}
    for start in range(0, len(run_ids), CLAIM_CHUNK):
        chunk = run_ids[start : start + CLAIM_CHUNK]
        rows = sql.fetch(
            f"SELECT run_id, name, status, exit_code, output_value FROM {sql.table(StepRun)} "
            f"WHERE run_id IN ({sql.marks(len(chunk))}) "
            f"AND status IN ({sql.marks(len(_COMPLETED_STEP_STATES))}) ORDER BY run_id, position",
            [*chunk, *_COMPLETED_STEP_STATES],
        )
        for run_id, name, status, exit_code, output in rows:
            out.setdefault(run_id, []).append((name, status, exit_code, output or None))
    return out


def still_current(tasks: Sequence[TaskPayload], *, now: datetime) -> list[TaskPayload]:
    """The tasks whose attempt is still their run's current, running one (one query).

    A task waits in a worker's mailbox between claim and poll; a failover that superseded
    the attempt meanwhile keeps it from being handed out, and so does a cancel: a run whose
    cancel was requested before any worker started it is cancelled here, at once.
    """
    if not tasks:
        return []
    ids = list({t.dag_run_id for t in tasks})
    current = {
        run_id: (attempt, status, bool(cancel))
        for run_id, attempt, status, cancel in sql.fetch(
            f"SELECT id, attempt, status, cancel_requested FROM {sql.table(DagRun)} "
            f"WHERE id IN ({sql.marks(len(ids))})",
            ids,
        )
    }
    out = []
    for task in tasks:
        attempt, status, cancel = current.get(task.dag_run_id, (0, "", False))
        if (attempt, status) != (task.attempt, RunStatus.RUNNING):
            continue
        if cancel:
            cancel_unstarted(task.dag_run_id, task.attempt, now=now)
        else:
            out.append(task)
    return out


@transaction.atomic
def cancel_unstarted(run_id: str, number: int, *, now: datetime) -> bool:
    """Cancel a run whose attempt `number` no worker started. False if it moved on first."""
    error = "cancelled before it started"
    ended = DagRun.objects.filter(
        pk=run_id, attempt=number, status=RunStatus.RUNNING, cancel_requested=True
    ).update(status=RunStatus.CANCELLED, finished_at=now, error=error, waiting_reason="")
    if not ended:
        return False
    Attempt.objects.filter(run_id=run_id, number=number).update(
        status=AttemptStatus.CANCELLED, finished_at=now, end_reason=error
    )
    StepRun.objects.filter(
        run_id=run_id, status__in=[StepStatus.PENDING, StepStatus.RUNNING]
    ).update(status=StepStatus.CANCELLED, finished_at=now, error=error)
    logger.info("run %s cancelled before attempt %d started", run_id, number)
    return True


_DECISION_COLUMNS = (
    "run_id",
    "attempt",
    "event",
    "mode",
    "why",
    "selector",
    "workers_considered",
    "workers_matched",
    "chosen_worker",
    "waiting_reason",
    "detail",
    "decided_at",
)


def insert_assigned_decisions(
    claims: Sequence[tuple[QueuedRun, TaskPayload, int, int, str]], *, now: datetime
) -> None:
    """One INSERT of the `assigned` decision rows: (run, task, considered, matched, detail)."""
    decided = sql.when_datetime(now)
    sql.execute_many(
        f"INSERT INTO {sql.table(DispatchDecision)} ({', '.join(_DECISION_COLUMNS)}) "
        f"VALUES ({sql.marks(len(_DECISION_COLUMNS))})",
        [
            (
                run.id,
                task.attempt,
                DecisionEvent.ASSIGNED,
                run.execution_mode,
                run.mode_reason,
                sql.as_json(DispatchDecision, "selector", run.worker_selector),
                considered,
                matched,
                task.worker_id,
                "",
                detail,
                decided,
            )
            for run, task, considered, matched, detail in claims
        ],
    )


def completed_steps(run: DagRun) -> list[StepRun]:
    """Steps an earlier attempt finished; a new attempt resumes after them."""
    return list(
        run.steps.filter(
            status__in=[StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED]
        ).order_by("position")
    )


def get_run(run_id: str) -> DagRun:
    try:
        return DagRun.objects.get(pk=run_id)
    except DagRun.DoesNotExist:
        raise RunError(f'run "{run_id}" not found') from None


def request_cancel(run_id: str, *, now: datetime, by: str = "") -> DagRun:
    """Cancel a run and its unfinished children.

    A queued run is cancelled at once; a running one is flagged, and whoever executes it
    (a worker via its heartbeat reply, or the local executor) stops it and reports.
    """
    run = get_run(run_id)
    if run.is_terminal:
        raise RunError(f'run "{run_id}" already finished ({run.status})')
    ids = [run.pk, *_descendant_ids(run)]
    with transaction.atomic():
        # Flag first, then cancel what is queued: a run that failover puts back in the queue
        # between the two statements is still caught, and failover never requeues a flagged run.
        DagRun.objects.filter(pk__in=ids, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(
            cancel_requested=True
        )
        DagRun.objects.filter(pk=run.pk).update(cancelled_by=by)
        DagRun.objects.filter(pk__in=ids, status=RunStatus.QUEUED, cancel_requested=True).update(
            status=RunStatus.CANCELLED,
            waiting_reason="",
            finished_at=now,
            error="cancelled before it started",
        )
        StepRun.objects.filter(
            run_id__in=ids, run__status=RunStatus.CANCELLED, status=StepStatus.PENDING
        ).update(status=StepStatus.CANCELLED)
    run.refresh_from_db()
    logger.info("cancel requested for run %s (%s)", run.id, run.status)
    return run


def _descendant_ids(run: DagRun) -> list[str]:
    ids: list[str] = []
    frontier = [run.pk]
    while frontier:
        children = list(DagRun.objects.filter(parent_id__in=frontier).values_list("pk", flat=True))
        ids.extend(children)
        frontier = children
    return ids


@transaction.atomic
def retry_run(run_id: str, *, now: datetime, by: str = "") -> DagRun:
    """Queue a finished run again; steps that succeeded are kept, the rest run anew."""
    run = get_run(run_id)
    if not run.is_terminal:
        raise RunError(f'run "{run_id}" is {run.status}; only a finished run can be retried')
    updated = DagRun.objects.filter(pk=run.pk, status__in=TERMINAL_RUN_STATUSES).update(
        status=RunStatus.QUEUED,
        cancel_requested=False,
        error="",
        worker_id="",
        waiting_reason="",
        started_at=None,
        finished_at=None,
        queued_at=now,
        redispatch_count=0,
        retry_count=F("retry_count") + 1,
        retried_by=by,
        cancelled_by="",
    )
    if not updated:
        raise RunError(f'run "{run_id}" changed while retrying; try again')
    run.steps.exclude(status=StepStatus.SUCCEEDED).update(
        status=StepStatus.PENDING, exit_code=None, error="", started_at=None, finished_at=None
    )
    run.refresh_from_db()
    detail = f"retried by {by or 'an operator'}"
    record_decision(run, event=DecisionEvent.RETRY, now=now, detail=detail)
    wakeups.runs_queued()
    return run


def start_child_run(
    parent: DagRun,
    *,
    step: str,
    item_index: int | None,
    dag_name: str,
    params: Mapping[str, str],
    selector: Mapping[str, str],
    config: Config,
    now: datetime,
) -> DagRun:
    """The child run of a parent's sub-DAG step (and parallel item), created exactly once.

    A replayed or concurrent request gets the same child, whichever attempt of the parent
    asks; the unique constraints decide a race and the loser reads the winner's row. After an
    operator retried the parent, a child that failed or was cancelled is run anew (a new
    child); one that succeeded keeps its results.
    """
    for _ in range(3):
        existing = (
            DagRun.objects.filter(parent=parent, parent_step=step, parent_item=item_index)
            .order_by("-parent_retry")
            .first()
        )
        if existing is not None and (
            existing.parent_retry == parent.retry_count or existing.status == RunStatus.SUCCEEDED
        ):
            return existing
        check_nesting(parent, dag_name, limit=config.limits.max_subdag_depth)
        dag_file = child_dag_file(parent, dag_name, dags_dir=Path(config.paths.dags_dir))
        try:
            with transaction.atomic():
                return create_run(
                    dag_file,
                    dag_name=dag_name,
                    params=params,
                    now=now,
                    default_mode=config.default_execution_mode,
                    parent=parent,
                    parent_step=step,
                    parent_item=item_index,
                    step_selector=selector,
                )
        except IntegrityError:
            continue  # a concurrent request created it first: read that one
    raise RunError(f'could not create the child of step "{step}" of run "{parent.id}"; try again')


def check_nesting(parent: DagRun, dag_name: str, *, limit: int) -> None:
    """Refuse a child nested deeper than `limit` sub-DAG levels below its root run."""
    depth, run = 1, parent
    while run.parent_id is not None and depth <= limit:
        depth += 1
        run = run.parent  # type: ignore[assignment]
    if depth > limit:
        raise RunError(
            f'sub-DAG "{dag_name}" not started: it would nest deeper than '
            f"limits.max_subdag_depth ({limit}) sub-DAG levels; does a DAG call itself?"
        )


def child_dag_file(parent: DagRun, dag_name: str, *, dags_dir: Path) -> DagFile:
    """A child comes from the parent's own file, else from `<dags_dir>/<name>.yaml`.

    The name comes from a worker (or a `call: ${VAR}` expanded at run time), so it gets
    the name rules of DAG files again before it can touch the filesystem."""
    own = parse_stored_dag_file(parent.spec, source=parent.source)
    if own.get(dag_name) is not None:
        return own
    problem = dag_name_problem(dag_name)
    if problem:
        raise RunError(f"sub-DAG not started: {problem}")
    path = find_in_dags_dir(dag_name, dags_dir)
    if path is not None:
        return load_dag_file(path)
    raise RunError(f'sub-DAG "{dag_name}" is neither in {parent.source} nor in {dags_dir}')
