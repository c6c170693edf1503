"""Cron schedules: DAG files in the DAGs dir with `schedule:` get runs when they are due.

The scheduler fires each due schedule once per tick and never catches up on ticks missed
while the main instance was down: a stopped scheduler should not unleash a backlog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from croniter import croniter

from controlplane.core.config import Config
from controlplane.core.spec import DagFile, DagSpecError, load_dag_file
from dags.runs import create_run

logger = logging.getLogger(__name__)


# What identifies one version of a file: a change of either means "read it again".
_Version = tuple[int, int] | None


class CronScheduler:
    def __init__(self, config: Config, *, now: datetime, on_queued: Callable[[], None]) -> None:
        self.config = config
        self.last_tick = now
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

    def tick(self, *, now: datetime) -> int:
        """Queue a run for every schedule due in (last tick, now]. Returns how many."""
        queued = 0
        for dag_file in self._dag_files():
            dag = dag_file.main
            for expr in dag.schedule:
                due = croniter(expr, self.last_tick).get_next(datetime)
                if due <= now:
                    run = create_run(
                        dag_file,
                        now=now,
                        source=dag_file.source,
                        default_mode=self.config.default_execution_mode,
                    )
                    logger.info("schedule %r of %s queued run %s", expr, dag.name, run.id)
                    queued += 1
        self.last_tick = now
        if queued:
            self.on_queued()
        return queued


def _version(path: Path) -> _Version:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
