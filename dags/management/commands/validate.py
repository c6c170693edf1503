"""`manage.py validate FILE...`: check DAG files without running anything.

Prints `FILE: ok` to stdout for each valid file and `FILE: PATH: MESSAGE` to stderr for each
problem (`FILE: MESSAGE` when the problem has no YAML path), followed by `FILE: PATH: hint: ...`
where there is a likely fix. Warnings (`FILE: PATH: warning: ...`, stderr) do not make a file
invalid. Exit status 0 when every file is valid, else 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from controlplane.core.spec import DagSpecError, load_dag_file

EXIT_INVALID = 2


class Command(BaseCommand):
    help = "Validate DAG files; exit 0 when all are valid, else 2 with one line per problem."
    # Pure file checks: no database, so the system checks have nothing to say here.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE", help="DAG YAML files")
        parser.add_argument(
            "--dags",
            dest="dags_dir",
            type=Path,
            default=None,
            help="DAGs dir that `call` targets outside the file must exist in "
            "(default: the configured paths.dags_dir)",
        )

    def handle(self, *args: Any, files: list[str], dags_dir: Path | None, **options: Any) -> None:
        dags_dir = dags_dir or Path(settings.DAGU.paths.dags_dir)
        # A DAGs dir that does not exist here is likely configured for another machine;
        # then only the targets inside each file can be checked.
        lookup_dir = dags_dir if dags_dir.is_dir() else None
        valid = True
        for name in files:
            try:
                dag_file = load_dag_file(name, dags_dir=lookup_dir)
            except DagSpecError as exc:
                valid = False
                for line in exc.lines():
                    self.stderr.write(f"{name}: {line}", style_func=lambda text: text)
            else:
                for warning in dag_file.warnings:
                    self.stderr.write(f"{name}: {warning}", style_func=lambda text: text)
                self.stdout.write(f"{name}: ok")
        if not valid:
            self.stderr.flush()
            sys.exit(EXIT_INVALID)
