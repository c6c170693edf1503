"""Layered configuration: built-in defaults < config.yaml < DAGU_*/BOLTBASE_* env < flags.

INTERFACE CONTRACT (other modules rely on these names; keep them stable):
- `Config` and its section dataclasses, all frozen.
- `resolve(*, flags=None, env=None, config_file=None) -> Config`
- `ConfigError(key, source, problem)`; `str()` is one line naming all three.
- `export_early_flags(argv, env)`: copies --config/--data-dir from argv into env.
- `add_arguments(parser, *, sections)` / `flags_from_options(options)` for commands.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """An invalid setting: names the key, where the value came from, and what is wrong."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        self.key = key
        self.source = source
        self.problem = problem
        super().__init__(f"{key} (from {source}): {problem}")


@dataclass(frozen=True)
class CoordinatorConfig:
    host: str = "127.0.0.1"
    port: int = 50055
    advertise: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class WorkerConfig:
    id: str = field(default_factory=lambda: f"{socket.gethostname()}@{os.getpid()}")
    labels: Mapping[str, str] = field(default_factory=dict)
    max_active_runs: int = 10
    # "host:port" strings; empty means discover from the service registry.
    coordinators: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeerConfig:
    insecure: bool = True
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    skip_tls_verify: bool = False


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Path
    service_registry_dir: Path
    dags_dir: Path
    log_dir: Path


@dataclass(frozen=True)
class TimingConfig:
    """Intervals and health thresholds, in seconds."""

    heartbeat_interval: float = 1.0
    registry_refresh_interval: float = 10.0
    registry_stale_after: float = 30.0
    health_warning_after: float = 5.0
    health_unhealthy_after: float = 15.0
    health_offline_after: float = 30.0
    offline_purge_after: float = 86400.0


@dataclass(frozen=True)
class Config:
    coordinator: CoordinatorConfig
    worker: WorkerConfig
    peer: PeerConfig
    paths: PathsConfig
    timing: TimingConfig
    default_execution_mode: str = "local"
    database_url: str = ""
    # dotted key -> where its value came from ("default", "config.yaml FILE", "DAGU_X", "--flag")
    sources: Mapping[str, str] = field(default_factory=dict)


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "dagu"


def resolve(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Resolve every key. Minimal placeholder; replaced by the full layered resolver."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("DAGU_HOME") or env.get("BOLTBASE_HOME") or default_data_dir())
    return Config(
        coordinator=CoordinatorConfig(),
        worker=WorkerConfig(),
        peer=PeerConfig(),
        paths=PathsConfig(
            data_dir=data_dir,
            service_registry_dir=data_dir / "service-registry",
            dags_dir=data_dir / "dags",
            log_dir=data_dir / "logs",
        ),
        timing=TimingConfig(),
        database_url=env.get("DATABASE_URL", ""),
    )


def export_early_flags(argv: Sequence[str], env: os._Environ[str] | dict[str, str]) -> None:
    """Copy --config/--data-dir from argv into env so settings.py sees them."""
    for i, arg in enumerate(argv):
        for flag, var in (("--config", "DAGU_CONFIG"), ("--data-dir", "DAGU_HOME")):
            if arg == flag and i + 1 < len(argv):
                env[var] = argv[i + 1]
            elif arg.startswith(flag + "="):
                env[var] = arg.split("=", 1)[1]
