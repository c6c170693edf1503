"""Cron schedules: DAG files in the DAGs dir with `schedule:` get runs when they are due.

The scheduler fires each due schedule once per tick and never catches up on ticks missed
while the main instance was down: a stopped scheduler should not unleash a backlog.

With several coordinators it runs on the housekeeping lease holder only, and each tick is
claimed by inserting a `CronTick` row with a unique (DAG, expression, due time) in the same
transaction as its run: an old holder that has not noticed it lost the lease and the new one
insert the same key, and only one commits. A standing-by scheduler keeps its last tick
CATCH_UP_SECONDS (longer than a lease change takes) behind, so the tick due while the old
holder died still fires, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from croniter import croniter
from django.db import IntegrityError, transaction

from controlplane.core.config import Config
from controlplane.core.spec import DagFile, DagSpecError, load_dag_file
from controlplane.models import CronTick
from dags.models import DagRun
from dags.runs import create_run

logger = logging.getLogger(__name__)

# How far back a scheduler that was not ticking (another coordinator held the lease) looks
# for due ticks; the claim rows keep it from firing one that the old holder fired.
CATCH_UP_SECONDS = 30.0
# Claim rows older than this are deleted: no scheduler looks back that far.
TICKS_KEPT = timedelta(days=1)


# What identifies one version of a file: a change of either means "read it again".
_Version = tuple[int, int] | None


class CronScheduler:
    def __init__(self, config: Config, *, now: datetime, on_queued: Callable[[], None]) -> None:
        self.config = config
        self.last_tick = now
        self._pruned = now
        self.on_queued = on_queued
        # path -> (version, parsed file or None when bad). A bad file is reported once per
        # version, so an operator sees one line per edit, not one per second.
        self._files: dict[Path, tuple[_Version, DagFile | None]] = {}

    def _dag_files(self) -> list[DagFile]:
        root = Path(self.config.paths.dags_dir)
        paths = sorted([*root.glob("*.yaml"), *root.glob("*.yml")]) if root.is_dir() else []
        out = []
        for path in paths:
            version = _version(path)
            cached = self._files.get(path)
            if cached is None or cached[0] != version:
                cached = (version, self._load(path, version))
                self._files[path] = cached
            if cached[1] is not None:
                out.append(cached[1])
        for gone in set(self._files) - set(paths):
            del self._files[gone]
        return out

    def _load(self, path: Path, version: _Version) -> DagFile | None:
        if version is None:
            logger.warning("scheduler skips %s: cannot read it (dangling link?)", path)
            return None
        try:
            return load_dag_file(path)
        except DagSpecError as exc:
            logger.warning("scheduler skips %s: %s", path, exc)
        except Exception:
            # A bug reading one file must not stop every other file's schedules.
            logger.exception("scheduler skips %s: reading it failed", path)
        return None

    def tick(self, *, now: datetime, fencing: int = 0) -> int:
        """Queue a run for every schedule due in (last tick, now]. Returns how many.

        `fencing` is the housekeeping lease number this tick runs under (stored with each
        claim, for the operator reading who fired what)."""
        queued = 0
        since = self.last_tick
        for dag_file in self._dag_files():
            dag = dag_file.main
            for expr in dag.schedule:
                due = croniter(expr, since).get_next(datetime)
                if due <= now:
                    run = self._fire(dag_file, expr, due=due, now=now, fencing=fencing)
                    if run is not None:
                        logger.info("schedule %r of %s queued run %s", expr, dag.name, run.id)
                        queued += 1
        self.last_tick = now
        if now - self._pruned > timedelta(hours=1):
            CronTick.objects.filter(due_at__lt=now - TICKS_KEPT).delete()
            self._pruned = now
        if queued:
            self.on_queued()
        return queued

    def stand_by(self, *, now: datetime) -> None:
        """Called instead of `tick` while another coordinator schedules: keep the last tick
        CATCH_UP_SECONDS behind, so that on taking over this one fires the tick due while the
        lease changed hands (the claim rows skip it if the old holder fired it) and no older.
        """
        self.last_tick = max(self.last_tick, now - timedelta(seconds=CATCH_UP_SECONDS))

    def _fire(
        self, dag_file: DagFile, expr: str, *, due: datetime, now: datetime, fencing: int
    ) -> DagRun | None:
        """Claim the tick and queue its run in one transaction; None if it was fired already."""
        with transaction.atomic():
            try:
                with transaction.atomic():
                    tick = CronTick.objects.create(
                        dag_name=dag_file.main.name,
                        expression=expr,
                        due_at=due,
                        fencing=fencing,
                        fired_at=now,
                    )
            except IntegrityError:
                return None
            run = create_run(
                dag_file,
                now=now,
                source=dag_file.source,
                default_mode=self.config.default_execution_mode,
            )
            CronTick.objects.filter(pk=tick.pk).update(run_id=run.id)
        return run


def _version(path: Path) -> _Version:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
