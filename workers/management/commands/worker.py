"""`manage.py worker`: a worker agent. Talks to the control plane over gRPC only."""

from __future__ import annotations

import argparse
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.agent import WorkerAgent
from controlplane.core.config import Config
from controlplane.service import install_stop_signals


class Command(ConfigCommand):
    help = "Run a worker: register, heartbeat, long-poll the coordinator, execute runs."
    config_sections = ("worker", "peer", "paths")
    needs_database = False  # a worker host has no database; it talks gRPC only

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=30.0,
            help="seconds running steps get on SIGTERM before they are cancelled",
        )

    def handle_config(self, config: Config, **options: Any) -> None:
        agent = WorkerAgent(config, shutdown_grace=options["shutdown_grace"])
        install_stop_signals(agent.stop)
        agent.run()
        if agent.refused:
            self.exit_with_error(agent.refused)
