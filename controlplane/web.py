"""The web tier: the UI and the REST API under waitress (static files via whitenoise).

`start_all` serves it beside a coordinator; `web` serves it alone, so web replicas scale apart
from coordinators. Nothing here needs a coordinator in the process: runs queued through the
API reach the coordinators through the database (and their wake-ups, dags.wakeups).
"""

from __future__ import annotations

import argparse
import threading

from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from controlplane.core.config import ConfigError
from controlplane.wsgi import application


def add_web_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="web address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="web port (default 8080)")
    parser.add_argument("--web-threads", type=int, default=8)


def bind_web(*, host: str, port: int, threads: int) -> BaseWSGIServer | MultiSocketServer:
    """Bind the web server (not serving yet). Raises ConfigError when the port is taken."""
    try:
        return create_server(application, host=host, port=port, threads=threads,
                             ident="controlplane")  # fmt: skip
    except OSError as exc:
        problem = f"cannot listen on {host}:{port}: {exc.strerror}"
        raise ConfigError("web port", "--port", problem) from None


def serve_web(server: BaseWSGIServer | MultiSocketServer) -> threading.Thread:
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    return thread


def web_url(server: BaseWSGIServer | MultiSocketServer, host: str) -> str:
    return f"http://{host}:{server.effective_port}"
