"""Real processes on loopback for end-to-end tests: a coordinator, workers, CLI commands.

Every cluster lives in its own temporary data dir with its own SQLite file (copied from a
database migrated once per session), on ports picked at run time. Waits are bounded and
every process is stopped (then killed) when the test ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]
# The console command `make install` puts beside the interpreter (pyproject [project.scripts]).
DAGU = [str(Path(sys.executable).parent / "dagu")]
DB_NAME = "controlplane.sqlite3"

# Fast thresholds so fault tests finish in seconds; each is still ordered as in SPEC §8.
FAST_TIMING = {
    "DAGU_HEALTH_WARNING_AFTER": "1.5",
    "DAGU_HEALTH_UNHEALTHY_AFTER": "3",
    "DAGU_HEALTH_OFFLINE_AFTER": "6",
    "DAGU_REGISTRY_REFRESH_INTERVAL": "1",
    "DAGU_REGISTRY_STALE_AFTER": "6",
}


def free_port() -> int:
    """A port that was free a moment ago: racy, so only for `demo`, which hands fixed ports to
    its children. Servers under test bind port 0 and report theirs (see `listening_port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def listening_port(log: str, prefix: str) -> int | None:
    """The port from the last `PREFIX HOST:PORT` line a server printed, if any yet."""
    found = re.findall(rf"^{re.escape(prefix)} \S*:(\d+)\b", log, flags=re.MULTILINE)
    return int(found[-1]) if found else None


PG_LANE = bool(os.environ.get("E2E_DATABASE_URL"))


def create_pg_database(server_url: str) -> str:
    """A new, empty database on the lane's PostgreSQL server; returns its URL."""
    import uuid

    import psycopg

    name = f"e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as pg:
        pg.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(server + "/postgres", autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrated_template(cache_dir: Path) -> Path:
    """One migrated SQLite file per test session; clusters copy it."""
    template = cache_dir / DB_NAME
    if not template.exists():
        env = {**os.environ, "DAGU_HOME": str(cache_dir)}
        env.pop("DATABASE_URL", None)
        subprocess.run([*MANAGE, "migrate", "-v0"], env=env, check=True, timeout=120)
        # Fold the WAL into the main file so a plain copy is complete.
        with sqlite3.connect(template) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return template


class Cluster:
    # What spawn() and manage() run; DAGU to go through the installed `dagu` command instead.
    program: list[str] = MANAGE

    def __init__(
        self, home: Path, template: Path, *, extra_env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        # In the PostgreSQL lane every cluster gets a fresh database on that server.
        self.pg_url = create_pg_database(os.environ["E2E_DATABASE_URL"]) if PG_LANE else ""
        if not self.pg_url:
            shutil.copy(template, home / DB_NAME)
        # The coordinator's gRPC port: bound as 0 and read back when it starts.
        self.port: int | None = None
        self.registry = home / "service-registry"
        self.env = {
            **os.environ,
            "DAGU_HOME": str(home),
            "DAGU_COORDINATOR_PORT": "0",
            "DAGU_COORDINATOR_ADVERTISE": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.env.pop("DATABASE_URL", None)
        if self.pg_url:
            self.env["DATABASE_URL"] = self.pg_url
            subprocess.run([*MANAGE, "migrate", "-v0"], env=self.env, check=True, timeout=180)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.ports: dict[str, int] = {}  # coordinator name -> gRPC port

    # -- processes ------------------------------------------------------------------------

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.home / f"{name}.log"
        self.logs[name] = log
        proc = subprocess.Popen(
            [*self.program, *args],
            env={**self.env, **(env or {})},
            stdout=open(log, "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start_coordinator(self, name: str = "coordinator") -> subprocess.Popen[bytes]:
        # A restart takes the port back, as an operator's would: workers know the address.
        again = ("--coordinator.port", str(self.port)) if self.port else ()
        proc = self.spawn(name, "coordinator", *again)
        self.port = self._wait_port(name, proc, "coordinator listening on", "the coordinator")
        self.ports[name] = self.port
        return proc

    def start_peer_coordinator(self, name: str, *, port: int | None = None) -> int:
        """Another coordinator on the same database (and data dir); returns its gRPC port.

        `self.port` keeps naming the first one, so `start_worker` dials it unless told
        otherwise. `port` restarts a dead peer on its old port, where workers listing it
        will find it. On SQLite this one exits 2: several coordinators need PostgreSQL.
        """
        again = ("--coordinator.port", str(port)) if port else ()
        proc = self.spawn(name, "coordinator", *again)
        port = self._wait_port(name, proc, "coordinator listening on", f"coordinator {name}")
        self.ports[name] = port
        return port

    def start_web(self, name: str = "web") -> int:
        """`manage.py web` (the UI and API alone) on a free port; returns that port."""
        proc = self.spawn(name, "web", "--port", "0")
        return self._wait_port(name, proc, "web UI and API on", "the web tier")

    def start_main(self, name: str = "main", *args: str) -> int:
        """`start_all` on a free web port; returns that port (self.port is its gRPC port)."""
        proc = self.spawn(name, "start_all", "--port", "0", *args)
        web = self._wait_port(name, proc, "web UI and API on", "start_all")
        self.port = self._wait_port(name, proc, "coordinator on", "start_all's coordinator")
        return web

    def _wait_port(self, name: str, proc: subprocess.Popen[bytes], prefix: str, what: str) -> int:
        port = wait_for(
            lambda: listening_port(self.log(name), prefix) or proc.poll() is not None,
            timeout=30,
            what=f"{what} to listen",
        )
        assert proc.poll() is None, self.log(name)
        return int(port)

    def start_worker(
        self,
        worker_id: str,
        labels: str = "",
        *,
        max_runs: int = 4,
        extra: tuple[str, ...] = (),
        coordinators: str = "",
        port: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """A worker dialling the first coordinator, or the one on `port`."""
        args = [
            "worker",
            "--worker.id",
            worker_id,
            "--worker.max-active-runs",
            str(max_runs),
            "--worker.coordinators",
            coordinators or f"127.0.0.1:{port or self.port}",
            "--shutdown-grace",
            "5",
            *extra,
        ]
        if labels:
            args += ["--worker.labels", labels]
        proc = self.spawn(worker_id, *args)
        wait_for(
            lambda: self.worker_row(worker_id) or proc.poll() is not None,
            timeout=30,
            what=f"worker {worker_id} to register",
        )
        assert proc.poll() is None, self.log(worker_id)
        return proc

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise AssertionError(
                f"{name} did not stop within {timeout}s:\n{self.log(name)}"
            ) from None

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 10
        self._reap(deadline)
        if self.pg_url:
            drop_pg_database(self.pg_url)

    def _reap(self, deadline: float) -> None:
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    # -- commands -------------------------------------------------------------------------

    def manage(
        self, *args: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.program, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def start_run(self, dag: Path | str, *extra: str) -> str:
        result = self.manage("start", str(dag), *extra)
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout.splitlines()[0].strip()

    def status(self, run_id: str) -> dict[str, Any]:
        result = self.manage("status", run_id, "--json", check=True)
        return json.loads(result.stdout)

    # -- direct reads (read-only, no Django in the test process) ------------------------------

    def query(self, sql: str, *params: object) -> list[Any]:
        if self.pg_url:
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(self.pg_url, row_factory=dict_row) as pg:
                return list(pg.execute(sql.replace("?", "%s"), params).fetchall())
        db = sqlite3.connect(f"file:{self.home / DB_NAME}?mode=ro", uri=True, timeout=30)
        try:
            db.row_factory = sqlite3.Row
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def run_row(self, run_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM dags_dagrun WHERE id = ?", run_id)
        return rows[0] if rows else None

    def worker_row(self, worker_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM workers_worker WHERE id = ?", worker_id)
        return rows[0] if rows else None

    def wait_run(
        self,
        run_id: str,
        *,
        status: str | tuple[str, ...] = ("succeeded", "failed", "cancelled"),
        timeout: float = 60,
    ) -> sqlite3.Row:
        wanted = (status,) if isinstance(status, str) else status
        return wait_for(
            lambda: (row := self.run_row(run_id)) is not None and row["status"] in wanted and row,
            timeout=timeout,
            what=f"run {run_id} to be {'/'.join(wanted)}",
        )

    def steps(self, run_id: str) -> dict[str, sqlite3.Row]:
        rows = self.query("SELECT * FROM dags_steprun WHERE run_id = ? ORDER BY position", run_id)
        return {r["name"]: r for r in rows}


def write_dag(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path
