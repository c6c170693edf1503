"""`manage.py start DAG`: create a run. Local runs execute in this process."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from controlplane.core.rpc.client import wake_coordinator
from controlplane.core.spec import DagSpecError, load_dag_file, parse_params_string
from controlplane.service import install_stop_signals
from dags.local import cli_executor_id, execute_attempt
from dags.models import DagRun, ExecutionMode
from dags.progress import (
    EXIT_INVALID,
    EXIT_OK,
    DagNotFound,
    exit_code_for,
    follow_run,
    resolve_dag_path,
)
from dags.runs import RunError, create_run, start_attempt
from dags.serializers import run_json


class Command(ConfigCommand):
    help = "Start a run of a DAG file (or a DAG name from the DAGs dir); prints the run id."
    config_sections = ("paths", "peer")

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dag", help="DAG file, or the name of a DAG in the DAGs dir")
        parser.add_argument("--params", default="", help='parameters, e.g. "K=V K2=V2"')
        parser.add_argument("--wait", action="store_true", help="follow the run until it ends")
        parser.add_argument("--json", action="store_true", help="print the run as JSON")

    def handle_config(self, config: Config, **options: Any) -> None:
        try:
            path = resolve_dag_path(options["dag"], dags_dir=config.paths.dags_dir)
            dag_file = load_dag_file(path)
            params = parse_params_string(options["params"])
        except DagNotFound as exc:
            self._fail(str(exc))
        except DagSpecError as exc:
            for line in exc.lines():
                self.stderr.write(f"{options['dag']}: {line}")
            sys.exit(EXIT_INVALID)
        except ValueError as exc:
            self._fail(f"--params: {exc}")
        try:
            run = create_run(
                dag_file,
                now=utcnow(),
                default_mode=config.default_execution_mode,
                params=params,
                source=str(path),
            )
        except RunError as exc:
            self._fail(str(exc))
        sys.exit(run_and_report(self, run, config, wait=options["wait"], as_json=options["json"]))

    def _fail(self, message: str) -> None:
        self.stderr.write(f"error: {message}")
        sys.exit(EXIT_INVALID)


def run_and_report(
    cmd: ConfigCommand, run: DagRun, config: Config, *, wait: bool, as_json: bool
) -> int:
    """Execute a local run here, or hand a distributed one to the coordinator; report it."""
    progress = cmd.stderr if as_json else cmd.stdout
    if not as_json:
        cmd.stdout.write(run.id)
        cmd.stdout.flush()
    interrupted = threading.Event()
    install_stop_signals(interrupted.set)
    if run.execution_mode == ExecutionMode.LOCAL:
        attempt = start_attempt(
            run, now=utcnow(), mode=ExecutionMode.LOCAL, worker_id=cli_executor_id()
        )
        if attempt is not None:
            follower = None
            if wait:
                follower = threading.Thread(
                    target=follow_run,
                    args=(run.id,),
                    kwargs={"write": progress.write, "interrupted": threading.Event()},
                    daemon=True,
                )
                follower.start()
            execute_attempt(
                run, attempt, config, cancel=interrupted, wake=lambda: wake_coordinator(config)
            )
            if follower:
                follower.join(timeout=5)
        wait = True
    else:
        if not wake_coordinator(config):
            progress.write(
                f"run {run.id} queued; no coordinator answered yet, it will start "
                "when one is running"
            )
        if wait:
            follow_run(run.id, write=progress.write, interrupted=interrupted)
    run.refresh_from_db()
    if as_json:
        cmd.stdout.write(json.dumps(run_json(run), indent=2))
    elif wait:
        cmd.stdout.write(f"{run.id} {run.status}")
    return exit_code_for(run.status) if wait else EXIT_OK
