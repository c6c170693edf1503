"""`manage.py coordinator`: the gRPC coordinator with its dispatch, health and failover loops,
the cron scheduler and the local executor; several may share one PostgreSQL database."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.config import Config
from controlplane.service import install_stop_signals, start_coordinator, stop_coordinator


class Command(ConfigCommand):
    help = (
        "Run the coordinator (gRPC): dispatch queue, heartbeats, health, failover, registry, "
        "cron scheduler. Several may share one PostgreSQL database."
    )
    config_sections = ("coordinator", "peer", "paths")

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=5.0,
            help="seconds in-flight calls get on SIGTERM (default 5)",
        )

    def handle_config(self, config: Config, **options: Any) -> None:
        stop = threading.Event()
        install_stop_signals(stop.set)
        running = start_coordinator(config, stop=stop)
        self.stdout.write(
            f"coordinator listening on {config.coordinator.host}:{running.port}"
            f" (workers dial {running.advertised})"
        )
        self.stdout.flush()
        stop.wait()
        stop_coordinator(running, grace=options["shutdown_grace"])
        self.stdout.write("coordinator stopped")
