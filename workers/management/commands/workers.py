"""`manage.py workers`: the worker table; `--drain ID` / `--undrain ID` steer one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from controlplane.core.labels import LabelError, format_labels, parse_label_string
from workers.presence import set_draining
from workers.summary import worker_summaries


class Command(ConfigCommand):
    help = "List workers (id, labels, health, busy/max, running tasks); drain or undrain one."
    config_sections = ("paths",)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--selector", default="", help="only workers matching k=v,...")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument("--drain", metavar="WORKER_ID", help="stop giving this worker runs")
        parser.add_argument("--undrain", metavar="WORKER_ID", help="let this worker take runs")

    def handle_config(self, config: Config, **options: Any) -> None:
        for flag, draining in (("drain", True), ("undrain", False)):
            if worker_id := options[flag]:
                if not set_draining(worker_id, draining=draining):
                    self.stderr.write(f'error: --{flag}: unknown worker "{worker_id}"')
                    sys.exit(2)
                self.stdout.write(f"{worker_id} {'draining' if draining else 'undrained'}")
                return
        try:
            selector = parse_label_string(options["selector"])
        except LabelError as exc:
            self.stderr.write(f"error: --selector: {exc}")
            sys.exit(2)
        rows = worker_summaries(now=utcnow(), timing=config.timing, selector=selector)
        if options["json"]:
            self.stdout.write(json.dumps({"workers": rows}, indent=2))
            return
        header = ("ID", "LABELS", "HEALTH", "BUSY/MAX", "RUNNING")
        table = [header] + [
            (
                w["id"] + (" (draining)" if w["draining"] else ""),
                format_labels(w["labels"]) or "-",
                w["health_status"],
                f"{w['busy']}/{w['max_active_runs']}",
                ", ".join(f"{t['dag_name']}:{t['dag_run_id']}" for t in w["running_tasks"]) or "-",
            )
            for w in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            self.stdout.write(
                "  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=False)) + "  " + row[-1]
            )
