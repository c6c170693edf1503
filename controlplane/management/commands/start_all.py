"""`manage.py start_all`: the main instance in one process.

Web UI and API (waitress, static files via whitenoise), coordinator, cron scheduler and
the local executor. SIGTERM/SIGINT stop everything in reverse order. The web tier is the
one `manage.py web` serves alone (controlplane/web.py); the scheduler is one of the
coordinator's lease duties (controlplane/service.py).
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.config import Config
from controlplane.service import (
    coordinator_on_web_host,
    install_stop_signals,
    start_coordinator,
    stop_coordinator,
)
from controlplane.web import add_web_arguments, bind_web, serve_web, web_url


class Command(ConfigCommand):
    help = "Run the main instance: web UI + API, coordinator, scheduler, local executor."
    config_sections = ("coordinator", "peer", "paths")

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_web_arguments(parser)
        parser.add_argument("--shutdown-grace", type=float, default=5.0)

    def handle_config(self, config: Config, **options: Any) -> None:
        config = coordinator_on_web_host(config, options["host"])
        stop = threading.Event()
        install_stop_signals(stop.set)
        web = bind_web(host=options["host"], port=options["port"], threads=options["web_threads"])
        running = start_coordinator(config, stop=stop)
        serve_web(web)
        url = web_url(web, options["host"])
        self.stdout.write(f"web UI and API on {url}/ (admin: {url}/admin/)")
        self.stdout.write(
            f"coordinator on {config.coordinator.host}:{running.port}"
            f" (workers dial {running.advertised})"
        )
        self.stdout.flush()
        stop.wait()
        self.stdout.write("stopping...")
        web.close()
        stop_coordinator(running, grace=options["shutdown_grace"])
        self.stdout.write("stopped")
