"""`manage.py demo` (what `make run` starts): the main instance plus two labelled workers.

It migrates, creates an `admin` login if there is none, copies the examples into the DAGs
dir, starts `start_all` and two workers as child processes, starts a run that labels route
to the gpu worker, and prints where to look. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

from controlplane.cli import ConfigCommand
from controlplane.core.config import Config

DEMO_WORKERS = (("demo-gpu", "gpu=true,cuda=12.0"), ("demo-eu", "region=eu-west-1,compliance=gdpr"))
DEMO_DAG = "gpu-cpu-routing.yaml"


class Command(ConfigCommand):
    help = "Start the whole system on the embedded defaults with two demo workers."
    config_sections = ("coordinator", "paths")
    needs_database = False  # it migrates the database itself

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8080)

    def handle_config(self, config: Config, **options: Any) -> None:
        for key, host, port in (
            ("--port", options["host"], options["port"]),
            ("coordinator.port", config.coordinator.host, config.coordinator.port),
        ):
            if port_in_use(host, port):
                self.exit_with_error(f"{key}: {host}:{port} is already in use; pick another port")
        call_command("migrate", interactive=False, verbosity=0)
        password = ensure_admin()
        examples = Path(settings.BASE_DIR) / "examples"
        dags_dir = Path(config.paths.dags_dir)
        dags_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(examples.glob("*.yaml")):
            shutil.copy(path, dags_dir / path.name)
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        grpc_port = str(config.coordinator.port)
        # Own sessions: Ctrl-C reaches only this command, which stops the others in order.
        procs = [
            subprocess.Popen(
                [
                    *manage,
                    "start_all",
                    "--host",
                    options["host"],
                    "--port",
                    str(options["port"]),
                    "--coordinator.port",
                    grpc_port,
                ],
                start_new_session=True,
            )
        ]
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.set())
        try:
            if not wait_listening(procs[0], options["host"], options["port"]):
                self.stderr.write("error: the main instance did not start (see its error above)")
                sys.exit(2)
            for worker_id, labels in DEMO_WORKERS:
                procs.append(
                    subprocess.Popen(
                        [
                            *manage,
                            "worker",
                            "--worker.id",
                            worker_id,
                            "--worker.labels",
                            labels,
                            "--worker.coordinators",
                            f"127.0.0.1:{grpc_port}",
                        ],
                        start_new_session=True,
                    )
                )
            time.sleep(2)
            self.banner(options["host"], options["port"], password, dags_dir)
            subprocess.run([*manage, "start", str(dags_dir / DEMO_DAG)], check=False)
            while not stop.is_set() and all(p.poll() is None for p in procs):
                stop.wait(0.5)
        finally:
            # Workers first (they finish or cancel their runs and report), then the main instance.
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.stdout.write("demo stopped")

    def banner(self, host: str, port: int, password: str | None, dags_dir: Path) -> None:
        url = f"http://{host}:{port}"
        login = f"admin / {password}" if password else "your existing admin account"
        self.stdout.write(
            self.style.SUCCESS(
                f"\nThe control plane is up.\n"
                f"  Workers page: {url}/workers/\n"
                f"  Runs:         {url}/runs/\n"
                f"  Admin:        {url}/admin/   (log in as {login})\n"
                f"  Workers:      {', '.join(f'{w} ({lbl})' for w, lbl in DEMO_WORKERS)}\n"
                f"  DAGs dir:     {dags_dir}\n"
                f"A demo run of {DEMO_DAG} is starting; it is routed to demo-gpu by its labels.\n"
                f"Ctrl-C stops everything.\n"
            )
        )
        self.stdout.flush()


def port_in_use(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def wait_listening(proc: subprocess.Popen[bytes], host: str, port: int) -> bool:
    """Wait until the web port answers (the coordinator binds before it); False if it died."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        time.sleep(0.2)
    return proc.poll() is None


def ensure_admin() -> str | None:
    """Create `admin` on a fresh install; return its password, or None if one existed."""
    user_model = get_user_model()
    if user_model.objects.filter(is_superuser=True).exists():
        return None
    password = os.environ.get("DEMO_ADMIN_PASSWORD", "admin")
    user_model.objects.create_superuser("admin", "admin@example.invalid", password)
    return password
