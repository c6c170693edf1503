"""`manage.py status RUN_ID`: a run's state, steps and dispatch decisions."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from dags.progress import EXIT_INVALID, describe_step
from dags.runs import RunError, get_run
from dags.serializers import run_detail_json


class Command(ConfigCommand):
    help = "Show a run: status, worker, attempts, steps and dispatch decisions."
    config_sections = ("paths",)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_id")
        parser.add_argument("--json", action="store_true", help="print the run as JSON")

    def handle_config(self, config: Config, **options: Any) -> None:
        try:
            run = get_run(options["run_id"])
        except RunError as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(EXIT_INVALID)
        data = run_detail_json(run, now=utcnow(), timing=config.timing)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        out = self.stdout.write
        out(f"run {data['dag_run_id']} ({data['dag_name']}): {data['status']}")
        if data["waiting_reason"]:
            out(f"  waiting: {data['waiting_reason']}")
        if data["placement"]:
            out(f"  placement: {data['placement']['summary']}")
        out(
            f"  mode: {data['execution_mode']}  worker: {data['worker_id'] or '-'}  "
            f"attempt: {data['attempt']}"
        )
        if data["parent_dag_run_id"]:
            out(f"  parent: {data['parent_dag_run_id']}  root: {data['root_dag_run_id']}")
        if data["children"]:
            out(f"  children: {', '.join(data['children'])}")
        if data["error"]:
            out(f"  error: {data['error']}")
        for step in data["steps"]:
            out(describe_step(step["name"], step["status"], step["exit_code"], step["error"]))
        for d in data["dispatch_decisions"]:
            out(f"  decision #{d['attempt']} {d['decided_at']} {d['event']}: {d['detail']}")
