"""Follow a run from the command line: print each step's progress until the run ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.db import close_old_connections

from controlplane.core.clock import utcnow
from dags.models import DagRun, RunStatus
from dags.runs import request_cancel

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class DagNotFound(Exception):
    pass


def resolve_dag_path(arg: str, *, dags_dir: Path) -> Path:
    """A path to a file, or the name of a DAG in the DAGs dir."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    for suffix in ("", ".yaml", ".yml"):
        candidate = dags_dir / f"{arg}{suffix}"
        if candidate.is_file():
            return candidate
    raise DagNotFound(f'DAG "{arg}" not found: no such file, and no {arg}.yaml in {dags_dir}')


def exit_code_for(status: str) -> int:
    return EXIT_OK if status == RunStatus.SUCCEEDED else EXIT_FAILED


def describe_step(name: str, status: str, exit_code: int | None, error: str) -> str:
    line = f"  step {name}: {status}"
    if exit_code is not None and status != "running":
        line += f" (exit {exit_code})"
    if error and status in ("failed", "cancelled"):
        line += f": {error.splitlines()[0][:200]}"
    return line


def follow_run(
    run_id: str,
    *,
    write: Callable[[str], None],
    interrupted: threading.Event,
    interval: float = 0.2,
) -> DagRun:
    """Print state changes until the run is terminal. Ctrl-C (interrupted) cancels the run."""
    seen: dict[str, str] = {}
    last: tuple[str, str, str] | None = None
    cancel_sent = False
    while True:
        close_old_connections()
        run = DagRun.objects.get(pk=run_id)
        state = (run.status, run.waiting_reason, run.worker_id)
        if state != last:
            where = f" on {run.worker_id}" if run.worker_id and run.status == "running" else ""
            waiting = f" (waiting: {run.waiting_reason})" if run.waiting_reason else ""
            write(f"run {run.id}: {run.status}{where}{waiting}")
            last = state
        for step in run.steps.order_by("position"):
            if step.status != "pending" and seen.get(step.name) != step.status:
                write(describe_step(step.name, step.status, step.exit_code, step.error))
                seen[step.name] = step.status
        if run.is_terminal:
            if run.error:
                write(f"run {run.id}: {run.error}")
            return run
        if interrupted.is_set() and not cancel_sent:
            write(f"run {run.id}: cancelling")
            request_cancel(run.id, now=utcnow())
            cancel_sent = True
        time.sleep(interval)
