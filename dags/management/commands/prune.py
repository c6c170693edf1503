"""`manage.py prune --older-than DURATION`: delete finished runs, their records and logs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from dags.progress import EXIT_INVALID
from dags.retention import DurationError, parse_duration, prune_runs


class Command(ConfigCommand):
    help = (
        "Delete runs that finished more than DURATION ago (e.g. 30d, 12h), with their "
        "attempts, steps, dispatch decisions, sub-DAG runs and log files."
    )
    config_sections = ("paths",)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--older-than", required=True, metavar="DURATION")

    def handle_config(self, config: Config, **options: Any) -> None:
        try:
            older_than = parse_duration(options["older_than"])
        except DurationError as exc:
            self.stderr.write(f"error: --older-than: {exc}")
            sys.exit(EXIT_INVALID)
        deleted = prune_runs(
            older_than=older_than, now=utcnow(), log_dir=Path(config.paths.log_dir)
        )
        self.stdout.write(f"pruned {deleted} run(s)")
