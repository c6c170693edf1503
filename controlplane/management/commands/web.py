"""`manage.py web`: the web UI and REST API alone (no coordinator, no loops).

Run as many as the traffic needs, beside one or more coordinators on the same database;
`start_all` stays the one-process default.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.config import Config
from controlplane.service import install_stop_signals
from controlplane.web import add_web_arguments, bind_web, serve_web, web_url


class Command(ConfigCommand):
    help = "Run the web UI and REST API only (waitress); coordinators run apart."
    config_sections = ("coordinator", "paths")

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_web_arguments(parser)

    def handle_config(self, config: Config, **options: Any) -> None:
        stop = threading.Event()
        install_stop_signals(stop.set)
        web = bind_web(host=options["host"], port=options["port"], threads=options["web_threads"])
        serve_web(web)
        self.stdout.write(f"web UI and API on {web_url(web, options['host'])}/")
        self.stdout.flush()
        stop.wait()
        web.close()
        self.stdout.write("stopped")
