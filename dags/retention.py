"""Retention: delete finished runs past their age, with everything they own.

A run owns its attempts, step runs and dispatch decisions (deleted by cascade) and its log
directory. Whole trees go together: a root run is pruned once it finished before the cutoff,
and its sub-DAG runs with it; a child is never pruned on its own, so a run page never
points at a missing child.
"""

from __future__ import annotations

import logging
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from django.db import transaction

from dags.models import TERMINAL_RUN_STATUSES, DagRun, RunStatus
from dags.reports import safe_name

logger = logging.getLogger(__name__)

# Roots deleted per transaction: short enough not to hold SQLite's write lock for long.
PRUNE_BATCH = 200
_DURATION = re.compile(r"(\d+)\s*([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class DurationError(ValueError):
    """A duration that is not `<number><d|h|m|s>`; `str()` is the one-line message."""


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s` (or a sum such as `1d12h`) as a timedelta."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact.replace(" ", ""):
        raise DurationError(f'invalid duration "{text}": expected e.g. 30d, 12h, 90m or 45s')
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def prune_runs(*, older_than: timedelta, now: datetime, log_dir: Path) -> int:
    """Delete run trees whose root finished before `now - older_than`. Returns runs deleted."""
    cutoff = now - older_than
    roots = (
        DagRun.objects.filter(
            parent__isnull=True, status__in=TERMINAL_RUN_STATUSES, finished_at__lt=cutoff
        )
        # A child still queued or running keeps its whole tree.
        .exclude(descendants__status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
        .order_by("finished_at")
    )
    deleted = 0
    while batch := list(roots.values_list("pk", flat=True)[:PRUNE_BATCH]):
        with transaction.atomic():
            ids = batch + list(
                DagRun.objects.filter(root_id__in=batch).values_list("pk", flat=True)
            )
            DagRun.objects.filter(pk__in=ids).delete()
        for run_id in ids:  # after the commit: a failed delete must not lose its logs
            shutil.rmtree(log_dir / safe_name(run_id), ignore_errors=True)
        deleted += len(ids)
    if deleted:
        logger.info("pruned %d run(s) finished before %s", deleted, cutoff.isoformat())
    return deleted


def apply_retention(*, days: int, now: datetime, log_dir: Path) -> int:
    """The main instance's daily step: prune runs older than `retention.days` (0: keep all)."""
    if days <= 0:
        return 0
    return prune_runs(older_than=timedelta(days=days), now=now, log_dir=log_dir)


class RetentionDuty:
    """Retention on the housekeeping lease holder: a pass when it gets the lease, then daily."""

    def __init__(self, *, days: int, log_dir: Path, every: timedelta = timedelta(days=1)) -> None:
        self.days, self.log_dir, self.every = days, log_dir, every
        self.last_pass: datetime | None = None

    def step(self, *, now: datetime) -> int:
        if self.last_pass is not None and now - self.last_pass < self.every:
            return 0
        self.last_pass = now
        return apply_retention(days=self.days, now=now, log_dir=self.log_dir)

    def forget(self) -> None:
        self.last_pass = None
