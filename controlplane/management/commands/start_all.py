"""`manage.py start_all`: the main instance in one process.

Web UI and API (waitress, static files via whitenoise), coordinator, cron scheduler and
the local executor. SIGTERM/SIGINT stop everything in reverse order.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from waitress.server import create_server

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config, ConfigError
from controlplane.loops import run_loop
from controlplane.service import (
    coordinator_on_web_host,
    install_stop_signals,
    start_coordinator,
    stop_coordinator,
)
from controlplane.wsgi import application
from dags.scheduler import CronScheduler


class Command(ConfigCommand):
    help = "Run the main instance: web UI + API, coordinator, scheduler, local executor."
    config_sections = ("coordinator", "peer", "paths")

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="web address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8080, help="web port (default 8080)")
        parser.add_argument("--web-threads", type=int, default=8)
        parser.add_argument("--shutdown-grace", type=float, default=5.0)

    def handle_config(self, config: Config, **options: Any) -> None:
        config = coordinator_on_web_host(config, options["host"])
        stop = threading.Event()
        install_stop_signals(stop.set)
        try:
            web = create_server(
                application,
                host=options["host"],
                port=options["port"],
                threads=options["web_threads"],
                ident="controlplane",
            )
        except OSError as exc:
            address = f"{options['host']}:{options['port']}"
            problem = f"cannot listen on {address}: {exc.strerror}"
            raise ConfigError("web port", "--port", problem) from None
        running = start_coordinator(config, stop=stop)
        scheduler = CronScheduler(config, now=utcnow(), on_queued=running.core.wake)
        scheduler_thread = run_loop(
            "scheduler", lambda: scheduler.tick(now=utcnow()), stop=stop, interval=1.0
        )
        web_thread = threading.Thread(target=web.run, name="web", daemon=True)
        web_thread.start()
        url = f"http://{options['host']}:{web.effective_port}"
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
        scheduler_thread.join(timeout=5)
        self.stdout.write("stopped")
