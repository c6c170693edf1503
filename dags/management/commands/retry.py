"""`manage.py retry RUN_ID`: run a finished run again, keeping the steps that succeeded."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from dags.management.commands.start import run_and_report
from dags.progress import EXIT_INVALID
from dags.runs import RunError, retry_run


class Command(ConfigCommand):
    help = "Retry a finished run; prints the run id."
    config_sections = ("paths", "peer")

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_id")
        parser.add_argument("--wait", action="store_true", help="follow the run until it ends")
        parser.add_argument("--json", action="store_true", help="print the run as JSON")

    def handle_config(self, config: Config, **options: Any) -> None:
        try:
            run = retry_run(options["run_id"], now=utcnow())
        except RunError as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(EXIT_INVALID)
        sys.exit(run_and_report(self, run, config, wait=options["wait"], as_json=options["json"]))
