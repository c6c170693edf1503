"""The dispatch step: claim queued distributed runs for workers, or record why they wait.

`dispatch_once` is the one place that claims queued runs for workers; the rules it applies
(which worker, which waiting reason) are the pure functions of `controlplane.core.routing`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import Count, Q, QuerySet

from controlplane.core.labels import matches
from controlplane.core.routing import (
    WorkerView,
    can_take_a_run,
    choose_worker,
    waiting_reason,
)
from controlplane.models import DecisionEvent, DispatchDecision
from dags.models import Attempt, DagRun, ExecutionMode, RunStatus
from dags.runs import decision_row, record_decision, start_attempt

logger = logging.getLogger(__name__)

# Rows per UPDATE ... IN (...) and per INSERT when a whole backlog changes its reason.
WRITE_BATCH = 500


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
    *, now: datetime, workers: list[WorkerView], deliver: Callable[[Attempt], None]
) -> int:
    """Assign queued distributed runs, oldest first, to matching workers with free slots.

    Works per selector group: each group that has a worker with free slots offers its oldest
    runs (as many as those slots), all offers are assigned oldest first, and every group left
    waiting gets its reason, written only to runs whose reason changes. So a run no worker
    matches never holds up one that a worker does, whatever the backlog.

    Each claim is a compare-and-set on the run row, so two dispatchers can never hand the
    same attempt to two workers. Returns how many runs were assigned.
    """

    views = {w.id: w for w in workers}
    claimed: list[Attempt] = []
    # One transaction for the whole pass: with SQLite's single write lock, the number of
    # write transactions per run is what bounds throughput. Mailboxes are filled only after
    # the commit, so no worker can see an attempt that might still roll back.
    with transaction.atomic():
        groups = _queued_groups()
        offers: list[DagRun] = []
        for group in groups:
            slots = sum(w.free_slots for w in _takers(group.selector, views.values()))
            if slots:
                offers.extend(_oldest_runs(group, limit=slots))
        offers.sort(key=lambda run: (run.queued_at, run.id))
        for run in offers:
            pool = list(views.values())
            worker, matched = choose_worker(run.worker_selector, pool)
            if worker is None:
                continue  # its group's reason is recorded below
            attempt = _assign(run, worker, now=now, considered=len(pool), matched=matched)
            if attempt is None:
                continue
            views[worker.id] = dataclasses.replace(worker, free_slots=worker.free_slots - 1)
            claimed.append(attempt)
        pool = list(views.values())
        for group in groups:
            worker, matched = choose_worker(group.selector, pool)
            if worker is not None:
                continue  # a claim was lost to a race; the next pass retries
            reason = waiting_reason(group.selector, pool)
            if any(r != reason for r in group.reasons):
                _record_waiting(group, reason, now=now, considered=len(pool), matched=matched)
    for attempt in claimed:
        deliver(attempt)
    return len(claimed)


def _takers(selector: Mapping[str, str], workers: Iterable[WorkerView]) -> list[WorkerView]:
    """Workers that could take a run with this selector right now."""
    return [w for w in workers if can_take_a_run(w) and matches(w.labels, selector)]


def _queued() -> QuerySet[DagRun]:

    return DagRun.objects.filter(
        status=RunStatus.QUEUED,
        execution_mode=ExecutionMode.DISTRIBUTED,
        cancel_requested=False,
    )


def _queued_groups() -> list[SelectorGroup]:

    groups: dict[tuple[tuple[str, str], ...], SelectorGroup] = {}
    rows = (
        _queued()
        .order_by()
        .values("worker_selector", "waiting_reason")
        .annotate(n=Count("id"))
        .values_list("worker_selector", "waiting_reason", "n")
    )
    for selector, reason, n in rows:
        selector = dict(selector or {})
        group = groups.setdefault(tuple(sorted(selector.items())), SelectorGroup(selector=selector))
        if all(list(f.items()) != list(selector.items()) for f in group.forms):
            group.forms.append(selector)
        group.reasons[reason] = group.reasons.get(reason, 0) + n
    return list(groups.values())


def _in_group(group: SelectorGroup) -> QuerySet[DagRun]:

    match = Q()
    for form in group.forms:
        match |= Q(worker_selector=form)
    return _queued().filter(match)


def _oldest_runs(group: SelectorGroup, *, limit: int) -> list[DagRun]:
    return list(_in_group(group).defer("spec").order_by("queued_at", "id")[:limit])


def _assign(
    run: DagRun, worker: WorkerView, *, now: datetime, considered: int, matched: int
) -> Attempt | None:

    attempt = start_attempt(run, now=now, mode=ExecutionMode.DISTRIBUTED, worker_id=worker.id)
    if attempt is None:
        return None  # another dispatcher, or a cancel, got there first
    record_decision(
        run,
        event=DecisionEvent.ASSIGNED,
        now=now,
        chosen_worker=worker.id,
        workers_considered=considered,
        workers_matched=matched,
        detail=f"attempt {attempt.number} assigned to {worker.id} "
        f"({matched} of {considered} workers matched)",
    )
    logger.info("run %s attempt %d assigned to %s", run.id, attempt.number, worker.id)
    return attempt


def _record_waiting(
    group: SelectorGroup, reason: str, *, now: datetime, considered: int, matched: int
) -> None:
    """Give every run of the group `reason`; a decision row only where the reason changes."""

    changing = list(
        _in_group(group)
        .exclude(waiting_reason=reason)
        .only("id", "attempt", "execution_mode", "mode_reason", "worker_selector")
    )
    for start in range(0, len(changing), WRITE_BATCH):
        batch = [run.pk for run in changing[start : start + WRITE_BATCH]]
        _queued().filter(pk__in=batch).update(waiting_reason=reason)
    DispatchDecision.objects.bulk_create(
        (
            decision_row(
                run,
                event=DecisionEvent.WAITING,
                now=now,
                waiting_reason=reason,
                workers_considered=considered,
                workers_matched=matched,
                detail=f"waiting: {reason.replace('_', ' ')}",
            )
            for run in changing
        ),
        batch_size=WRITE_BATCH,
    )
