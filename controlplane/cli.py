"""Configuration as command-line flags, and the base class for commands that take them.

Every flag defaults to None so `config_from_options` can tell "not passed" from "passed the
default value"; only passed flags become the top layer of `controlplane.core.config.resolve`.
Values stay strings here: the resolver parses them, so a bad flag gets the same one-line
error (naming `--coordinator.port` etc.) as a bad env var or config file entry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import OperationalError

from controlplane.core.config import Config, ConfigError, check_peer_files, env_vars, resolve
from controlplane.core.labels import LabelError

SECTIONS = ("coordinator", "worker", "peer", "paths")


@dataclass(frozen=True)
class _Flag:
    section: str
    spellings: tuple[str, ...]  # first is canonical
    key: str  # dotted config key
    help: str
    metavar: str = "VALUE"
    is_bool: bool = False

    @property
    def dest(self) -> str:
        # The name Django uses in **options: --worker.max-active-runs -> worker_max_active_runs
        return self.spellings[0].lstrip("-").replace(".", "_").replace("-", "_")


_FLAGS: tuple[_Flag, ...] = (
    _Flag("coordinator", ("--coordinator.host",), "coordinator.host",
          "address the coordinator's gRPC server binds (default 127.0.0.1)", "HOST"),
    _Flag("coordinator", ("--coordinator.port",), "coordinator.port",
          "coordinator gRPC port (default 50055)", "PORT"),
    _Flag("coordinator", ("--coordinator.advertise",), "coordinator.advertise",
          "address workers dial to reach this coordinator (default: the bound host, or this "
          "machine's non-loopback address when bound to all interfaces)", "HOST"),
    _Flag("coordinator", ("--coordinator.id",), "coordinator.id",
          "coordinator id in the service registry (default: ADVERTISE@PORT)", "ID"),
    _Flag("worker", ("--worker.id",), "worker.id",
          "worker id (default: hostname@pid)", "ID"),
    _Flag("worker", ("--worker.labels", "--worker-labels"), "worker.labels",
          "worker labels, e.g. gpu=true,region=us-east-1", "K=V,..."),
    _Flag("worker", ("--worker.max-active-runs",), "worker.max_active_runs",
          "runs this worker executes at once (default 10)", "N"),
    _Flag("worker", ("--worker.coordinators",), "worker.coordinators",
          "coordinator addresses host:port,... (default: discover from the registry)",
          "HOST:PORT,..."),
    _Flag("worker", ("--worker.coordinator-host",), "worker.coordinator_host",
          "single coordinator host (port defaults to --coordinator.port)", "HOST"),
    _Flag("worker", ("--worker.coordinator-port",), "worker.coordinator_port",
          "single coordinator port", "PORT"),
    _Flag("worker", ("--worker.token",), "worker.token",
          "worker credential from `manage.py create_worker_token` (default: "
          "<data-dir>/worker_token when readable)", "TOKEN"),
    _Flag("worker", ("--worker.token-file",), "worker.token_file",
          "file holding the worker credential", "FILE"),
    _Flag("peer", ("--peer.insecure",), "peer.insecure",
          "plaintext h2c instead of TLS (default true)", "BOOL", is_bool=True),
    _Flag("peer", ("--peer.cert-file",), "peer.cert_file",
          "TLS certificate (PEM)", "FILE"),
    _Flag("peer", ("--peer.key-file",), "peer.key_file",
          "TLS private key (PEM)", "FILE"),
    _Flag("peer", ("--peer.client-ca-file",), "peer.client_ca_file",
          "CA bundle: client certificates (coordinator) or the coordinator's (clients)", "FILE"),
    _Flag("peer", ("--peer.skip-tls-verify",), "peer.skip_tls_verify",
          "do not verify the coordinator's certificate (default false)", "BOOL", is_bool=True),
    _Flag("paths", ("--data-dir",), "paths.data_dir",
          "data directory (default ~/.local/share/dagu)", "DIR"),
    _Flag("paths", ("--service-registry-dir",), "paths.service_registry_dir",
          "shared service registry directory (default <data-dir>/service-registry)", "DIR"),
    _Flag("paths", ("--dags",), "paths.dags_dir",
          "DAG files directory (default <data-dir>/dags)", "DIR"),
)  # fmt: skip

# Every flag spelling (aliases included) -> dotted config key; "--config" names the file.
FLAG_KEYS: dict[str, str] = {
    spelling: flag.key for flag in _FLAGS for spelling in flag.spellings
} | {"--config": "config"}


def add_config_arguments(parser: argparse.ArgumentParser, *, sections: Iterable[str]) -> None:
    """Add the flags of `sections` (see SECTIONS), plus --config and --data-dir.

    --config and --data-dir are always accepted because manage.py reads them for every
    command before settings load (export_early_flags); rejecting them later would be odd.
    """
    wanted = set(sections)
    unknown = wanted - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown config sections: {', '.join(sorted(unknown))}")
    # dest is not "config": that name is taken by handle_config's first parameter.
    parser.add_argument(
        "--config",
        dest="config_file",
        default=None,
        metavar="FILE",
        help="config.yaml (env DAGU_CONFIG)",
    )
    for flag in _FLAGS:
        if flag.section not in wanted and flag.key != "paths.data_dir":
            continue
        help_text = f"{flag.help}; env {env_vars(flag.key)[0]}"
        if flag.is_bool:
            # `--peer.insecure` alone means true; `--peer.insecure=false` turns it off.
            parser.add_argument(
                *flag.spellings, dest=flag.dest, default=None, nargs="?", const="true",
                metavar=flag.metavar, help=help_text,
            )  # fmt: skip
        else:
            parser.add_argument(
                *flag.spellings, dest=flag.dest, default=None, metavar=flag.metavar,
                help=help_text,
            )  # fmt: skip


def flags_from_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The flags the user actually passed, as {dotted key: value}."""
    return {flag.key: options[flag.dest] for flag in _FLAGS if options.get(flag.dest) is not None}


def config_from_options(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Resolve the configuration with parsed command options as the top layer."""
    return resolve(
        flags=flags_from_options(options), env=env, config_file=options.get("config_file")
    )


class ConfigCommand(BaseCommand):
    """Base for commands configured by SPEC section 2.

    Subclasses set `config_sections` and implement `handle_config`; they add their own
    arguments in `add_command_arguments`. A configuration error ends the command with one
    `error: ...` line on stderr and exit status 2, never a traceback.
    """

    config_sections: ClassVar[tuple[str, ...]] = ()
    # Commands that read or write runs and workers; the worker agent sets this False.
    needs_database: ClassVar[bool] = True

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # manage.py reads --config and --data-dir from argv before settings load; an
        # abbreviation such as `--data X` would reach the command but not the database.
        kwargs.setdefault("allow_abbrev", False)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        add_config_arguments(parser, sections=self.config_sections)
        self.add_command_arguments(parser)

    def add_command_arguments(self, parser: CommandParser) -> None:
        """Hook for the subclass's own arguments."""

    def handle(self, *args: Any, **options: Any) -> str | None:
        try:
            config = config_from_options(options)
            if "peer" in self.config_sections:
                check_peer_files(config)
            if self.needs_database:
                check_database(config)
            with process_config(config):
                return self.handle_config(config, **options)
        except (ConfigError, LabelError) as exc:
            self.exit_with_error(str(exc))

    def handle_config(self, config: Config, **options: Any) -> str | None:
        raise NotImplementedError("ConfigCommand subclasses must implement handle_config()")

    def exit_with_error(self, message: str) -> NoReturn:
        self.stderr.write(f"error: {message}")
        sys.exit(2)


@contextmanager
def process_config(config: Config) -> Iterator[Config]:
    """Make `config` the one every part of this process reads, as `settings.DAGU`.

    settings.py resolves at import, before a command has parsed its flags; without this
    `start_all --dags X` would schedule from X while its API listed the default dir.
    Restored on exit so an in-process `call_command` leaves nothing behind.
    """
    previous = settings.DAGU
    settings.DAGU = config
    try:
        yield config
    finally:
        settings.DAGU = previous


def check_database(config: Config) -> None:
    """The database answers and is migrated, or one ConfigError saying which is not so."""
    source = config.sources.get("database_url", "default") if config.database_url else "default"
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("database", source, f"cannot connect: {first}") from None
    if pending:
        raise ConfigError(
            "database",
            source,
            f"{len(pending)} migration(s) not applied; run `python manage.py migrate` first",
        )
