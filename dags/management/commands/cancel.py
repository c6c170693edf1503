"""`manage.py cancel RUN_ID`: cancel a queued or running run (and its children)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from dags.progress import EXIT_INVALID
from dags.runs import RunError, request_cancel


class Command(ConfigCommand):
    help = "Cancel a run. A queued run is cancelled at once; a running one is stopped."
    config_sections = ("paths",)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_id")

    def handle_config(self, config: Config, **options: Any) -> None:
        try:
            run = request_cancel(options["run_id"], now=utcnow())
        except RunError as exc:
            self.stderr.write(f"error: {exc}")
            sys.exit(EXIT_INVALID)
        state = "cancelled" if run.status == "cancelled" else "cancel requested"
        self.stdout.write(f"{run.id} {state}")
