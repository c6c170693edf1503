"""Configuration resolver (SPEC section 2) and the command-line layer in controlplane.cli.

Resolver tests are pure: they pass `env` explicitly and point HOME at a temp dir, so neither
the operator's environment nor ~/.local/share/dagu can leak in. No database is used.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from controlplane.cli import (
    FLAG_KEYS,
    ConfigCommand,
    add_config_arguments,
    config_from_options,
    flags_from_options,
)
from controlplane.core.config import (
    SETTING_KEYS,
    Config,
    ConfigError,
    check_peer_files,
    default_data_dir,
    env_vars,
    export_early_flags,
    flag_source,
    parse_coordinator_address,
    resolve,
)
from controlplane.core.labels import LabelError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fake_home(tmp_path, monkeypatch):
    """default_data_dir() follows HOME; keep it inside the test's temp dir."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def write_config(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "config.yaml"
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    path.write_text(text)
    return path


def get(config: Config, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


def nest(key: str, value: Any, *, spelling: str = "snake") -> dict[str, Any]:
    section, _, name = key.rpartition(".")
    name = camel(name) if spelling == "camel" else name
    return {section: {name: value}} if section else {name: value}


# --- key by key precedence -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    file_value: Any  # as written in config.yaml
    env_value: str
    flag_value: Any  # as argparse hands it over (a string), or a typed value
    file_expected: Any
    env_expected: Any
    flag_expected: Any

    def __str__(self) -> str:
        return self.key


def default_of(key: str, home: Path) -> Any:
    data_dir = home / ".local" / "share" / "dagu"
    return {
        "coordinator.host": "127.0.0.1",
        "coordinator.port": 50055,
        "coordinator.advertise": socket.gethostname(),
        "coordinator.id": "",
        "worker.id": f"{socket.gethostname()}@{os.getpid()}",
        "worker.labels": {},
        "worker.max_active_runs": 10,
        "worker.coordinators": (),
        "worker.coordinator_host": "",
        "worker.coordinator_port": None,
        "paths.data_dir": data_dir,
        "paths.service_registry_dir": data_dir / "service-registry",
        "paths.dags_dir": data_dir / "dags",
        "paths.log_dir": data_dir / "logs",
        "default_execution_mode": "local",
        "database_url": "",
        "peer.insecure": True,
        "peer.cert_file": "",
        "peer.key_file": "",
        "peer.client_ca_file": "",
        "peer.skip_tls_verify": False,
        "timing.heartbeat_interval": 1.0,
        "timing.registry_refresh_interval": 10.0,
        "timing.registry_stale_after": 30.0,
        "timing.health_warning_after": 5.0,
        "timing.health_unhealthy_after": 15.0,
        "timing.health_offline_after": 30.0,
        "timing.offline_purge_after": 86400.0,
        "limits.max_subdag_depth": 16,
        "limits.workers_per_credential": 1000,
        "logs.max_step_bytes": 16 * 1024 * 1024,
        "retention.days": 30,
        "metrics.public": False,
        "worker.token": "",
        "worker.token_file": "",
    }[key]


CASES = [
    Case("coordinator.host", "0.0.0.0", "10.0.0.1", "10.0.0.2", "0.0.0.0", "10.0.0.1", "10.0.0.2"),
    Case("coordinator.port", 6001, "6002", "6003", 6001, 6002, 6003),
    Case("coordinator.advertise", "file-host", "env-host", "flag-host",
         "file-host", "env-host", "flag-host"),
    Case("coordinator.id", "c-file", "c-env", "coordinator-primary",
         "c-file", "c-env", "coordinator-primary"),
    Case("worker.id", "w-file", "w-env", "w-flag", "w-file", "w-env", "w-flag"),
    Case("worker.labels", {"gpu": True, "memory": 64}, "region=us-east-1", "zone=a, gpu=false",
         {"gpu": "true", "memory": "64"}, {"region": "us-east-1"}, {"zone": "a", "gpu": "false"}),
    Case("worker.max_active_runs", 3, "4", "5", 3, 4, 5),
    Case("worker.coordinators", ["a:1", "b:2"], "c:3", "d:4, e:5",
         ("a:1", "b:2"), ("c:3",), ("d:4", "e:5")),
    Case("worker.coordinator_host", "fh", "eh", "gh", "fh", "eh", "gh"),
    Case("worker.coordinator_port", 7001, "7002", "7003", 7001, 7002, 7003),
    Case("worker.token", "dwt_f", "dwt_e", "dwt_g", "dwt_f", "dwt_e", "dwt_g"),
    Case("worker.token_file", "/f/token", "/e/token", "/g/token",
         "/f/token", "/e/token", "/g/token"),
    Case("paths.data_dir", "/f/data", "/e/data", "/g/data",
         Path("/f/data"), Path("/e/data"), Path("/g/data")),
    Case("paths.service_registry_dir", "/f/reg", "/e/reg", "/g/reg",
         Path("/f/reg"), Path("/e/reg"), Path("/g/reg")),
    Case("paths.dags_dir", "/f/dags", "/e/dags", "/g/dags",
         Path("/f/dags"), Path("/e/dags"), Path("/g/dags")),
    Case("paths.log_dir", "/f/logs", "/e/logs", "/g/logs",
         Path("/f/logs"), Path("/e/logs"), Path("/g/logs")),
    Case("default_execution_mode", "distributed", "local", "Distributed",
         "distributed", "local", "distributed"),
    Case("database_url", "sqlite:////f/db.sqlite3", "postgres://e/db", "postgres://g/db",
         "sqlite:////f/db.sqlite3", "postgres://e/db", "postgres://g/db"),
    Case("peer.insecure", False, "true", "false", False, True, False),
    Case("peer.cert_file", "/f/cert.pem", "/e/cert.pem", "/g/cert.pem",
         "/f/cert.pem", "/e/cert.pem", "/g/cert.pem"),
    Case("peer.key_file", "/f/key.pem", "/e/key.pem", "/g/key.pem",
         "/f/key.pem", "/e/key.pem", "/g/key.pem"),
    Case("peer.client_ca_file", "/f/ca.pem", "/e/ca.pem", "/g/ca.pem",
         "/f/ca.pem", "/e/ca.pem", "/g/ca.pem"),
    Case("peer.skip_tls_verify", True, "no", "YES", True, False, True),
    Case("timing.heartbeat_interval", 2, "3", "4.5", 2.0, 3.0, 4.5),
    Case("timing.registry_refresh_interval", 11, "12", "13", 11.0, 12.0, 13.0),
    Case("timing.registry_stale_after", 31.5, "32", "33", 31.5, 32.0, 33.0),
    Case("timing.health_warning_after", 6, "7", "8", 6.0, 7.0, 8.0),
    Case("timing.health_unhealthy_after", 16, "17", "18", 16.0, 17.0, 18.0),
    Case("timing.health_offline_after", 31, "32", "33", 31.0, 32.0, 33.0),
    Case("timing.offline_purge_after", 100, "200", "300", 100.0, 200.0, 300.0),
    Case("limits.max_subdag_depth", 4, "8", "32", 4, 8, 32),
    Case("limits.workers_per_credential", 500, "600", "700", 500, 600, 700),
    Case("logs.max_step_bytes", 1000, "2000", "3000", 1000, 2000, 3000),
    Case("retention.days", 0, "7", "90", 0, 7, 90),
    Case("metrics.public", True, "false", "true", True, False, True),
]  # fmt: skip
ENV_CASES = [case for case in CASES if any(v.startswith("DAGU_") for v in env_vars(case.key))]


def test_every_setting_has_a_precedence_case():
    assert sorted(str(case) for case in CASES) == sorted(SETTING_KEYS)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_default_applies_when_nothing_sets_the_key(case, tmp_path, fake_home):
    config = resolve(env={})
    assert get(config, case.key) == default_of(case.key, fake_home)
    assert config.sources[case.key] == "default"
    assert config.config_file is None


@pytest.mark.parametrize("spelling", ["snake", "camel"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_config_file_overrides_default(case, spelling, tmp_path):
    path = write_config(tmp_path, nest(case.key, case.file_value, spelling=spelling))
    config = resolve(env={}, config_file=str(path))
    assert get(config, case.key) == case.file_expected
    assert config.sources[case.key] == f"config file {path}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_env_overrides_config_file(case, tmp_path):
    path = write_config(tmp_path, nest(case.key, case.file_value))
    env_var = env_vars(case.key)[0]
    config = resolve(env={env_var: case.env_value}, config_file=str(path))
    assert get(config, case.key) == case.env_expected
    assert config.sources[case.key] == env_var


@pytest.mark.parametrize("case", CASES, ids=str)
def test_flag_overrides_env_and_config_file(case, tmp_path):
    path = write_config(tmp_path, nest(case.key, case.file_value))
    env = {env_vars(case.key)[0]: case.env_value}
    config = resolve(flags={case.key: case.flag_value}, env=env, config_file=str(path))
    assert get(config, case.key) == case.flag_expected
    assert config.sources[case.key] == flag_source(case.key)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_flag_given_as_none_counts_as_not_passed(case, tmp_path):
    env = {env_vars(case.key)[0]: case.env_value}
    config = resolve(flags={case.key: None}, env=env)
    assert get(config, case.key) == case.env_expected


@pytest.mark.parametrize("case", ENV_CASES, ids=str)
def test_boltbase_alias_sets_the_key(case):
    name = env_vars(case.key)[0].replace("DAGU_", "BOLTBASE_", 1)
    config = resolve(env={name: case.env_value})
    assert get(config, case.key) == case.env_expected
    assert config.sources[case.key] == name


@pytest.mark.parametrize("case", ENV_CASES, ids=str)
def test_dagu_env_wins_over_boltbase_alias(case, tmp_path, fake_home):
    dagu = env_vars(case.key)[0]
    boltbase = dagu.replace("DAGU_", "BOLTBASE_", 1)
    # Any valid value that differs from the DAGU_ one; the file value is such a value.
    other = case.file_value
    other_text = ",".join(other) if isinstance(other, list) else other
    if isinstance(other, dict):
        other_text = "x=y"
    if isinstance(other, bool):
        other_text = str(other).lower()
    config = resolve(env={dagu: case.env_value, boltbase: str(other_text)})
    assert get(config, case.key) == case.env_expected
    assert config.sources[case.key] == dagu


def test_empty_env_var_counts_as_unset(tmp_path):
    path = write_config(tmp_path, {"coordinator": {"port": 6001}})
    config = resolve(
        env={"DAGU_COORDINATOR_PORT": "", "DAGU_WORKER_LABELS": "  "}, config_file=path
    )
    assert config.coordinator.port == 6001
    assert config.sources["coordinator.port"] == f"config file {path}"
    assert config.worker.labels == {}


def test_default_data_dir_is_under_home(fake_home):
    assert default_data_dir() == fake_home / ".local" / "share" / "dagu"


def test_resolve_reads_os_environ_when_env_is_not_given(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGU_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("DAGU_COORDINATOR_PORT", "6123")
    config = resolve()
    assert config.paths.data_dir == tmp_path / "data"
    assert config.coordinator.port == 6123


# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["file", "env", "flag"])
def test_derived_paths_follow_the_resolved_data_dir(layer, tmp_path):
    data = tmp_path / "data"
    env: dict[str, str] = {}
    flags: dict[str, Any] = {}
    config_file = None
    if layer == "file":
        config_file = write_config(tmp_path, {"paths": {"dataDir": str(data)}})
    elif layer == "env":
        env["DAGU_HOME"] = str(data)
    else:
        flags["paths.data_dir"] = str(data)
    config = resolve(env=env, flags=flags, config_file=config_file)
    assert config.paths == config.paths.__class__(
        data_dir=data,
        service_registry_dir=data / "service-registry",
        dags_dir=data / "dags",
        log_dir=data / "logs",
    )


def test_paths_expand_the_home_directory(fake_home):
    config = resolve(
        env={
            "DAGU_HOME": "~/data",
            "DAGU_PATHS_SERVICE_REGISTRY_DIR": "~/reg",
            "DAGU_DAGS_DIR": "~/dags",
            "DAGU_LOG_DIR": "~/logs",
            "DAGU_PEER_CERT_FILE": "~/cert.pem",
        }
    )
    assert config.paths.data_dir == fake_home / "data"
    assert config.paths.service_registry_dir == fake_home / "reg"
    assert config.paths.dags_dir == fake_home / "dags"
    assert config.paths.log_dir == fake_home / "logs"
    assert config.peer.cert_file == str(fake_home / "cert.pem")


def test_service_registry_dir_accepts_the_short_env_name():
    config = resolve(env={"DAGU_SERVICE_REGISTRY_DIR": "/short"})
    assert config.paths.service_registry_dir == Path("/short")
    assert config.sources["paths.service_registry_dir"] == "DAGU_SERVICE_REGISTRY_DIR"


def test_service_registry_dir_prefers_the_paths_env_name():
    config = resolve(
        env={
            "DAGU_SERVICE_REGISTRY_DIR": "/short",
            "DAGU_PATHS_SERVICE_REGISTRY_DIR": "/long",
            "BOLTBASE_PATHS_SERVICE_REGISTRY_DIR": "/alias",
        }
    )
    assert config.paths.service_registry_dir == Path("/long")


# --- locating config.yaml --------------------------------------------------------------------


def test_config_file_is_found_in_the_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.yaml").write_text("coordinator:\n  port: 6111\n")
    config = resolve(env={"DAGU_HOME": str(data)})
    assert config.coordinator.port == 6111
    assert config.config_file == data / "config.yaml"


def test_config_file_is_found_in_the_data_dir_given_by_flag(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.yaml").write_text("coordinator:\n  port: 6112\n")
    config = resolve(env={}, flags={"paths.data_dir": str(data)})
    assert config.coordinator.port == 6112


def test_config_file_is_found_in_the_default_data_dir(fake_home):
    data = fake_home / ".local" / "share" / "dagu"
    data.mkdir(parents=True)
    (data / "config.yaml").write_text("worker:\n  labels: gpu=true\n")
    assert resolve(env={}).worker.labels == {"gpu": "true"}


def test_config_env_var_beats_the_data_dir_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.yaml").write_text("coordinator:\n  port: 6111\n")
    other = tmp_path / "other.yaml"
    other.write_text("coordinator:\n  port: 6222\n")
    config = resolve(env={"DAGU_HOME": str(data), "DAGU_CONFIG": str(other)})
    assert config.coordinator.port == 6222
    assert config.config_file == other


def test_config_argument_beats_config_env_and_dagu_beats_boltbase(tmp_path):
    files = {}
    for name, port in (("arg", 1), ("dagu", 2), ("boltbase", 3)):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(f"coordinator:\n  port: {port}\n")
    env = {"DAGU_CONFIG": str(files["dagu"]), "BOLTBASE_CONFIG": str(files["boltbase"])}
    assert resolve(env=env, config_file=str(files["arg"])).coordinator.port == 1
    assert resolve(env=env, flags={"config": str(files["arg"])}).coordinator.port == 1
    assert resolve(env=env).coordinator.port == 2
    assert resolve(env={"BOLTBASE_CONFIG": str(files["boltbase"])}).coordinator.port == 3


def test_config_file_can_move_the_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.yaml").write_text(f"paths:\n  data_dir: {tmp_path / 'moved'}\n")
    config = resolve(env={"DAGU_HOME": str(data)})
    # The env var outranks the file, so the data dir stays; the file is still read.
    assert config.paths.data_dir == data
    config = resolve(env={"DAGU_CONFIG": str(data / "config.yaml")})
    assert config.paths.data_dir == tmp_path / "moved"
    assert config.paths.dags_dir == tmp_path / "moved" / "dags"


@pytest.mark.parametrize(
    ("how", "source"),
    [
        ("argument", "--config"),
        ("DAGU_CONFIG", "DAGU_CONFIG"),
        ("BOLTBASE_CONFIG", "BOLTBASE_CONFIG"),
    ],
)
def test_a_named_config_file_that_is_missing_is_an_error(how, source, tmp_path):
    missing = tmp_path / "nope.yaml"
    env = {} if how == "argument" else {how: str(missing)}
    with pytest.raises(ConfigError) as excinfo:
        resolve(env=env, config_file=str(missing) if how == "argument" else None)
    assert str(excinfo.value) == (
        f"config (from {source}): cannot read {missing}: No such file or directory"
    )


def test_empty_config_file_is_fine(tmp_path):
    path = write_config(tmp_path, "")
    assert resolve(env={}, config_file=path).coordinator.port == 50055


def test_null_section_is_fine(tmp_path):
    path = write_config(tmp_path, "worker:\ncoordinator:\n  port: 6001\n")
    assert resolve(env={}, config_file=path).coordinator.port == 6001


def test_invalid_yaml_is_one_line_naming_the_file(tmp_path):
    path = write_config(tmp_path, "worker:\n  labels: [\n")
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={}, config_file=path)
    message = str(excinfo.value)
    assert message.startswith(f"config (from config file {path}): invalid YAML at line 3, ")
    assert "line 3" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("- a\n- b\n", 'config: expected a mapping at the top level, got ["a", "b"]'),
        ("worker: 5\n", "worker: expected a mapping, got 5"),
        ("worker:\n  maxActivRuns: 3\n",
         'worker.maxActivRuns: unknown key; did you mean "maxActiveRuns"?'),
        ("peer:\n  cert: x\n", "peer.cert: unknown key"),
        ("coordinater:\n  port: 1\n", 'coordinater: unknown key; did you mean "coordinator"?'),
        ("dags_dir: /x\n", 'dags_dir: unknown key; did you mean "paths.dags_dir"?'),
        ("defaultExecutionMod: local\n",
         'defaultExecutionMod: unknown key; did you mean "defaultExecutionMode"?'),
        ("worker:\n  max_active_runs: 1\n  maxActiveRuns: 2\n",
         'worker.max_active_runs: given twice, as "max_active_runs" and "maxActiveRuns"; keep one'),
    ],
)  # fmt: skip
def test_config_file_structure_errors_name_the_key_and_file(document, message, tmp_path):
    path = write_config(tmp_path, document)
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={}, config_file=path)
    key, _, problem = message.partition(": ")
    assert str(excinfo.value) == f"{key} (from config file {path}): {problem}"


def test_full_seed_config_file_resolves(tmp_path):
    # The seeds' config.yaml examples, camelCase, in one file.
    path = write_config(
        tmp_path,
        """
coordinator:
  host: 0.0.0.0
  port: 50055
paths:
  serviceRegistryDir: "/nfs/shared/dagu/service-registry"
peer:
  insecure: false
  certFile: /path/to/cert.pem
  keyFile: /path/to/key.pem
  clientCaFile: /path/to/ca.pem
  skipTlsVerify: false
worker:
  id: "worker-gpu-01"
  maxActiveRuns: 10
  labels:
    gpu: "true"
    memory: "64G"
    region: "us-east-1"
""",
    )
    config = resolve(env={}, config_file=path)
    assert config.coordinator.host == "0.0.0.0"
    assert config.paths.service_registry_dir == Path("/nfs/shared/dagu/service-registry")
    assert config.peer.insecure is False
    assert config.peer.client_ca_file == "/path/to/ca.pem"
    assert config.worker.id == "worker-gpu-01"
    assert config.worker.labels == {"gpu": "true", "memory": "64G", "region": "us-east-1"}


# --- invalid values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_var", "value", "message"),
    [
        ("DAGU_COORDINATOR_PORT", "abc",
         'coordinator.port (from DAGU_COORDINATOR_PORT): "abc" is not a valid port (1-65535)'),
        ("DAGU_WORKER_COORDINATOR_PORT", "0",
         'worker.coordinator_port (from DAGU_WORKER_COORDINATOR_PORT): '
         '"0" is not a valid port (1-65535)'),
        ("DAGU_COORDINATOR_PORT", "65536",
         'coordinator.port (from DAGU_COORDINATOR_PORT): "65536" is not a valid port (1-65535)'),
        ("DAGU_COORDINATOR_PORT", "-1",
         'coordinator.port (from DAGU_COORDINATOR_PORT): "-1" is not a valid port (1-65535)'),
        ("DAGU_WORKER_COORDINATOR_PORT", "x",
         'worker.coordinator_port (from DAGU_WORKER_COORDINATOR_PORT): '
         '"x" is not a valid port (1-65535)'),
        ("DAGU_WORKER_MAX_ACTIVE_RUNS", "0",
         'worker.max_active_runs (from DAGU_WORKER_MAX_ACTIVE_RUNS): '
         '"0" is not a positive integer'),
        ("DAGU_WORKER_MAX_ACTIVE_RUNS", "2.5",
         'worker.max_active_runs (from DAGU_WORKER_MAX_ACTIVE_RUNS): '
         '"2.5" is not a positive integer'),
        ("DAGU_DEFAULT_EXECUTION_MODE", "remote",
         'default_execution_mode (from DAGU_DEFAULT_EXECUTION_MODE): "remote" is not valid: '
         "must be one of: local, distributed"),
        ("DAGU_PEER_INSECURE", "maybe",
         'peer.insecure (from DAGU_PEER_INSECURE): "maybe" is not a boolean '
         "(use true/false, 1/0 or yes/no)"),
        ("BOLTBASE_PEER_SKIP_TLS_VERIFY", "2",
         'peer.skip_tls_verify (from BOLTBASE_PEER_SKIP_TLS_VERIFY): "2" is not a boolean '
         "(use true/false, 1/0 or yes/no)"),
        ("DAGU_WORKER_LABELS", "gpu=true,gpu",
         'worker.labels (from DAGU_WORKER_LABELS): invalid label "gpu": expected key=value'),
        ("DAGU_WORKER_COORDINATORS", "a:1,b",
         'worker.coordinators (from DAGU_WORKER_COORDINATORS): '
         '"b" is not a coordinator address: expected host:port'),
        ("DAGU_WORKER_COORDINATORS", "a:99999",
         'worker.coordinators (from DAGU_WORKER_COORDINATORS): '
         '"a:99999" is not a coordinator address: port must be 1-65535'),
        ("DAGU_WORKER_COORDINATORS", ":50055",
         'worker.coordinators (from DAGU_WORKER_COORDINATORS): '
         '":50055" is not a coordinator address: the host is empty'),
        ("DAGU_HEARTBEAT_INTERVAL", "0",
         'timing.heartbeat_interval (from DAGU_HEARTBEAT_INTERVAL): '
         '"0" is not a positive number of seconds'),
        ("DAGU_HEALTH_OFFLINE_AFTER", "soon",
         'timing.health_offline_after (from DAGU_HEALTH_OFFLINE_AFTER): '
         '"soon" is not a positive number of seconds'),
        ("DAGU_OFFLINE_PURGE_AFTER", "nan",
         'timing.offline_purge_after (from DAGU_OFFLINE_PURGE_AFTER): '
         '"nan" is not a positive number of seconds'),
        ("DAGU_REGISTRY_STALE_AFTER", "inf",
         'timing.registry_stale_after (from DAGU_REGISTRY_STALE_AFTER): '
         '"inf" is not a positive number of seconds'),
    ],
)  # fmt: skip
def test_invalid_env_value_is_one_line_naming_key_source_and_problem(env_var, value, message):
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={env_var: value})
    assert str(excinfo.value) == message
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("coordinator.port", "abc", '"abc" is not a valid port (1-65535)'),
        ("coordinator.host", "", "must not be empty"),
        ("worker.labels", "gpu=true,gpu", 'invalid label "gpu": expected key=value'),
        ("peer.insecure", "sometimes",
         '"sometimes" is not a boolean (use true/false, 1/0 or yes/no)'),
        ("paths.data_dir", "", "must not be empty"),
        ("worker.max_active_runs", "-3", '"-3" is not a positive integer'),
    ],
)  # fmt: skip
def test_invalid_flag_value_names_the_flag(key, value, problem):
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={}, flags={key: value})
    assert str(excinfo.value) == f"{key} (from {flag_source(key)}): {problem}"


@pytest.mark.parametrize(
    ("document", "key", "problem"),
    [
        ({"coordinator": {"port": 70000}}, "coordinator.port",
         "70000 is not a valid port (1-65535)"),
        ({"coordinator": {"port": True}}, "coordinator.port", "true is not a valid port (1-65535)"),
        ({"coordinator": {"port": "x"}}, "coordinator.port", '"x" is not a valid port (1-65535)'),
        ({"coordinator": {"host": ""}}, "coordinator.host", "must not be empty"),
        ({"coordinator": {"host": ["a"]}}, "coordinator.host", 'expected a string, got ["a"]'),
        ({"worker": {"maxActiveRuns": 0}}, "worker.max_active_runs", "0 is not a positive integer"),
        ({"worker": {"labels": {"gpu": {"model": "a100"}}}}, "worker.labels",
         'label "gpu": nested values are not allowed'),
        ({"worker": {"labels": "gpu=true,gpu"}}, "worker.labels",
         'invalid label "gpu": expected key=value'),
        ({"worker": {"labels": ["gpu=true"]}}, "worker.labels",
         "labels must be a key=value,... string or a mapping, got list"),
        ({"worker": {"coordinators": ["a:1", 123]}}, "worker.coordinators",
         "123 is not a coordinator address: expected host:port"),
        ({"worker": {"coordinators": {"a": 1}}}, "worker.coordinators",
         'expected host:port,... or a list, got {"a": 1}'),
        ({"worker": {"coordinators": ["::1:50055"]}}, "worker.coordinators",
         '"::1:50055" is not a coordinator address: put IPv6 hosts in brackets, e.g. [::1]:50055'),
        ({"default_execution_mode": "Remote"}, "default_execution_mode",
         '"Remote" is not valid: must be one of: local, distributed'),
        ({"defaultExecutionMode": 1}, "default_execution_mode",
         "1 is not valid: must be one of: local, distributed"),
        ({"peer": {"insecure": "perhaps"}}, "peer.insecure",
         '"perhaps" is not a boolean (use true/false, 1/0 or yes/no)'),
        ({"peer": {"certFile": {"a": 1}}}, "peer.cert_file", 'expected a string, got {"a": 1}'),
        ({"paths": {"dagsDir": 5}}, "paths.dags_dir", "expected a path, got 5"),
        ({"timing": {"heartbeatInterval": -1}}, "timing.heartbeat_interval",
         "-1 is not a positive number of seconds"),
        ({"database_url": 5}, "database_url", "expected a URL string, got 5"),
    ],
)  # fmt: skip
def test_invalid_config_file_value_names_the_file(document, key, problem, tmp_path):
    path = write_config(tmp_path, document)
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={}, config_file=path)
    assert str(excinfo.value) == f"{key} (from config file {path}): {problem}"


def test_an_invalid_value_in_a_lower_layer_is_ignored_when_overridden(tmp_path):
    path = write_config(tmp_path, {"coordinator": {"port": "abc"}})
    config = resolve(env={"DAGU_COORDINATOR_PORT": "6001"}, config_file=path)
    assert config.coordinator.port == 6001


def test_config_error_carries_its_parts():
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={"DAGU_COORDINATOR_PORT": "abc"})
    assert (excinfo.value.key, excinfo.value.source) == (
        "coordinator.port",
        "DAGU_COORDINATOR_PORT",
    )
    assert excinfo.value.problem == '"abc" is not a valid port (1-65535)'


def test_unknown_flag_key_is_a_programming_error():
    with pytest.raises(ValueError, match=r"coordinator\.prot"):
        resolve(env={}, flags={"coordinator.prot": "1"})


# --- typed values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
     ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False)],
)  # fmt: skip
def test_booleans_accept_true_false_1_0_yes_no_in_any_case(raw, expected):
    assert resolve(env={"DAGU_PEER_INSECURE": raw}).peer.insecure is expected
    assert resolve(env={"DAGU_PEER_SKIP_TLS_VERIFY": raw}).peer.skip_tls_verify is expected


@pytest.mark.parametrize("port", ["1", "65535", " 8080 "])
def test_ports_accept_the_full_range(port):
    assert resolve(env={"DAGU_COORDINATOR_PORT": port}).coordinator.port == int(port)


def test_execution_mode_is_case_insensitive():
    config = resolve(env={"DAGU_DEFAULT_EXECUTION_MODE": " Distributed "})
    assert config.default_execution_mode == "distributed"


def test_empty_worker_id_and_advertise_mean_the_default(tmp_path):
    path = write_config(tmp_path, {"worker": {"id": ""}, "coordinator": {"advertise": ""}})
    config = resolve(env={}, config_file=path)
    assert config.worker.id == f"{socket.gethostname()}@{os.getpid()}"
    assert config.coordinator.advertise == socket.gethostname()
    assert config.sources["worker.id"] == "default"


def test_numeric_worker_id_in_yaml_is_text(tmp_path):
    path = write_config(tmp_path, "worker:\n  id: 42\n")
    assert resolve(env={}, config_file=path).worker.id == "42"


# --- labels: the precedence example --------------------------------------------------


def test_labels_from_flag_env_and_file_resolve_with_spec_precedence(tmp_path):
    path = write_config(tmp_path, {"worker": {"labels": {"gpu": "true", "memory": "64G"}}})
    env = {"DAGU_WORKER_LABELS": "region=eu-west-1,compliance=gdpr"}

    from_file = resolve(env={}, config_file=path)
    assert from_file.worker.labels == {"gpu": "true", "memory": "64G"}

    # Each layer replaces the labels as a whole; labels are not merged across layers.
    from_env = resolve(env=env, config_file=path)
    assert from_env.worker.labels == {"region": "eu-west-1", "compliance": "gdpr"}
    assert from_env.sources["worker.labels"] == "DAGU_WORKER_LABELS"

    from_flag = resolve(env=env, config_file=path, flags={"worker.labels": "gpu=false"})
    assert from_flag.worker.labels == {"gpu": "false"}
    assert from_flag.sources["worker.labels"] == "--worker.labels"


@pytest.mark.parametrize("layer", ["file", "env", "flag"])
def test_a_label_item_without_value_is_refused_in_every_layer(layer, tmp_path):
    sources = {"file": None, "env": "DAGU_WORKER_LABELS", "flag": "--worker.labels"}
    path = write_config(tmp_path, {"worker": {"labels": "gpu=true,gpu"}})
    kwargs: dict[str, Any] = {"env": {}}
    if layer == "file":
        kwargs["config_file"] = path
        sources["file"] = f"config file {path}"
    elif layer == "env":
        kwargs["env"] = {"DAGU_WORKER_LABELS": "gpu=true,gpu"}
    else:
        kwargs["flags"] = {"worker.labels": "gpu=true,gpu"}
    with pytest.raises(ConfigError) as excinfo:
        resolve(**kwargs)
    assert str(excinfo.value) == (
        f'worker.labels (from {sources[layer]}): invalid label "gpu": expected key=value'
    )


def test_labels_string_form_in_config_file(tmp_path):
    path = write_config(tmp_path, {"worker": {"labels": "gpu=true, memory=64G,region=us-east-1"}})
    config = resolve(env={}, config_file=path)
    assert config.worker.labels == {"gpu": "true", "memory": "64G", "region": "us-east-1"}


def test_labels_flag_may_clear_labels_from_lower_layers():
    config = resolve(env={"DAGU_WORKER_LABELS": "gpu=true"}, flags={"worker.labels": ""})
    assert config.worker.labels == {}


# --- coordinator addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("host1:8080,host2:9090", ("host1:8080", "host2:9090")),
        (" host1:8080 , host2:9090 ", ("host1:8080", "host2:9090")),
        ("host1:8080,,host2:9090,", ("host1:8080", "host2:9090")),
        (",host1:8080", ("host1:8080",)),
        ("[::1]:8080", ("[::1]:8080",)),
        ("", ()),
    ],
)
def test_worker_coordinators_string_form(raw, expected):
    assert resolve(env={}, flags={"worker.coordinators": raw}).worker.coordinators == expected


def test_worker_coordinators_list_form(tmp_path):
    path = write_config(tmp_path, {"worker": {"coordinators": ["h1:1", " ", "[fe80::1]:2"]}})
    assert resolve(env={}, config_file=path).worker.coordinators == ("h1:1", "[fe80::1]:2")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("host", '"host" is not a coordinator address: expected host:port'),
        ("host:abc", '"host:abc" is not a coordinator address: port must be 1-65535'),
        ("host:0", '"host:0" is not a coordinator address: port must be 1-65535'),
        ("host:70000", '"host:70000" is not a coordinator address: port must be 1-65535'),
        ("host:-1", '"host:-1" is not a coordinator address: port must be 1-65535'),
        (":50055", '":50055" is not a coordinator address: the host is empty'),
        ("[::1]", '"[::1]" is not a coordinator address: expected [ipv6]:port'),
        ("[]:1", '"[]:1" is not a coordinator address: the host is empty'),
        ("host:8080:extra",
         '"host:8080:extra" is not a coordinator address: put IPv6 hosts in brackets, '
         "e.g. [::1]:50055"),
    ],
)  # fmt: skip
def test_parse_coordinator_address_refuses_bad_entries(text, problem):
    with pytest.raises(ValueError) as excinfo:
        parse_coordinator_address(text)
    assert str(excinfo.value) == problem


def test_coordinator_host_and_port_build_one_entry():
    config = resolve(
        env={"DAGU_WORKER_COORDINATOR_HOST": "coord", "DAGU_WORKER_COORDINATOR_PORT": "6000"}
    )
    assert config.worker.coordinators == ("coord:6000",)
    assert config.worker.coordinator_host == "coord"
    assert config.worker.coordinator_port == 6000
    assert config.sources["worker.coordinators"] == "DAGU_WORKER_COORDINATOR_HOST"


def test_coordinator_host_alone_uses_the_coordinator_port():
    config = resolve(
        env={"DAGU_COORDINATOR_PORT": "6100"}, flags={"worker.coordinator_host": "coord"}
    )
    assert config.worker.coordinators == ("coord:6100",)
    assert config.sources["worker.coordinators"] == "--worker.coordinator-host"


def test_coordinator_port_alone_uses_the_coordinator_host():
    config = resolve(env={}, flags={"worker.coordinator_port": "6200"})
    assert config.worker.coordinators == ("127.0.0.1:6200",)


def test_coordinator_host_may_be_ipv6():
    config = resolve(
        env={}, flags={"worker.coordinator_host": "[::1]", "worker.coordinator_port": "1"}
    )
    assert config.worker.coordinators == ("[::1]:1",)
    assert resolve(env={}, flags={"worker.coordinator_host": "::1"}).worker.coordinators == (
        "[::1]:50055",
    )


def test_the_higher_layer_wins_between_coordinators_and_coordinator_host(tmp_path):
    path = write_config(tmp_path, {"worker": {"coordinators": "a:1,b:2"}})
    env = {"DAGU_WORKER_COORDINATOR_HOST": "env-host"}
    assert resolve(env=env, config_file=path).worker.coordinators == ("env-host:50055",)
    config = resolve(env=env, config_file=path, flags={"worker.coordinators": "c:3"})
    assert config.worker.coordinators == ("c:3",)
    assert config.sources["worker.coordinators"] == "--worker.coordinators"


def test_coordinators_and_coordinator_host_in_the_same_layer_conflict():
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={"DAGU_WORKER_COORDINATORS": "a:1", "DAGU_WORKER_COORDINATOR_HOST": "b"})
    assert str(excinfo.value) == (
        "worker.coordinator_host (from DAGU_WORKER_COORDINATOR_HOST): conflicts with "
        "worker.coordinators (from DAGU_WORKER_COORDINATORS); set one or the other"
    )


# --- timing ----------------------------------------------------------------------------------


def test_timing_section_accepts_both_spellings(tmp_path):
    path = write_config(
        tmp_path,
        {"timing": {"heartbeatInterval": 2, "health_warning_after": 6, "offlinePurgeAfter": 60}},
    )
    timing = resolve(env={}, config_file=path).timing
    assert (timing.heartbeat_interval, timing.health_warning_after) == (2.0, 6.0)
    assert timing.offline_purge_after == 60.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DAGU_HEALTH_WARNING_AFTER": "20"},
         "timing.health_warning_after (from DAGU_HEALTH_WARNING_AFTER): 20 must be less than "
         "timing.health_unhealthy_after (15)"),
        ({"DAGU_HEALTH_UNHEALTHY_AFTER": "4"},
         "timing.health_unhealthy_after (from DAGU_HEALTH_UNHEALTHY_AFTER): 4 must be greater than "
         "timing.health_warning_after (5)"),
        ({"DAGU_HEALTH_OFFLINE_AFTER": "15"},
         "timing.health_offline_after (from DAGU_HEALTH_OFFLINE_AFTER): 15 must be greater than "
         "timing.health_unhealthy_after (15)"),
        ({"DAGU_HEARTBEAT_INTERVAL": "5"},
         "timing.heartbeat_interval (from DAGU_HEARTBEAT_INTERVAL): 5 must be less than "
         "timing.health_warning_after (5)"),
        ({"DAGU_REGISTRY_STALE_AFTER": "2.5"},
         "timing.registry_stale_after (from DAGU_REGISTRY_STALE_AFTER): 2.5 must be greater than "
         "timing.registry_refresh_interval (10)"),
        # Both from the same layer: the upper bound is blamed.
        ({"DAGU_HEALTH_WARNING_AFTER": "9", "DAGU_HEALTH_UNHEALTHY_AFTER": "8"},
         "timing.health_unhealthy_after (from DAGU_HEALTH_UNHEALTHY_AFTER): 8 must be greater than "
         "timing.health_warning_after (9)"),
    ],
)  # fmt: skip
def test_timing_thresholds_must_increase(env, message):
    with pytest.raises(ConfigError) as excinfo:
        resolve(env=env)
    assert str(excinfo.value) == message


def test_timing_thresholds_may_all_move_together():
    env = {
        "DAGU_HEARTBEAT_INTERVAL": "10",
        "DAGU_HEALTH_WARNING_AFTER": "20",
        "DAGU_HEALTH_UNHEALTHY_AFTER": "40",
        "DAGU_HEALTH_OFFLINE_AFTER": "60",
    }
    timing = resolve(env=env).timing
    assert (timing.heartbeat_interval, timing.health_offline_after) == (10.0, 60.0)


# --- peer files ------------------------------------------------------------------------------

PEER_FILE_KEYS = ("peer.cert_file", "peer.key_file", "peer.client_ca_file")


def test_coordinator_port_0_means_any_free_port_but_only_for_listening():
    assert resolve(env={"DAGU_COORDINATOR_PORT": "0"}).coordinator.port == 0
    with pytest.raises(ConfigError) as excinfo:
        resolve(env={"DAGU_COORDINATOR_PORT": "0", "DAGU_WORKER_COORDINATOR_HOST": "h"})
    assert str(excinfo.value) == (
        "worker.coordinator_host (from DAGU_WORKER_COORDINATOR_HOST): needs "
        "worker.coordinator_port: coordinator.port is 0 (any free port)"
    )


def test_check_peer_files_accepts_readable_files(tmp_path):
    files = {key: tmp_path / f"{key}.pem" for key in PEER_FILE_KEYS}
    for path in files.values():
        path.write_text("x")
    config = resolve(env={}, flags={key: str(path) for key, path in files.items()})
    assert [getattr(config.peer, key.partition(".")[2]) for key in PEER_FILE_KEYS] == [
        str(files[key]) for key in PEER_FILE_KEYS
    ]
    assert check_peer_files(config) is None
    # Each file was really looked at: the same config with any one of them gone is refused,
    # naming that file's key.
    for key, path in files.items():
        gone = path.rename(path.with_suffix(".gone"))
        with pytest.raises(ConfigError) as excinfo:
            check_peer_files(config)
        assert (excinfo.value.key, excinfo.value.source) == (key, flag_source(key))
        gone.rename(path)
    assert check_peer_files(config) is None
    assert check_peer_files(resolve(env={})) is None  # plaintext: nothing to check


def test_check_peer_files_refuses_an_unreadable_file(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    config = resolve(
        env={
            "DAGU_PEER_CERT_FILE": str(tmp_path / "cert.pem"),
            "DAGU_PEER_KEY_FILE": str(tmp_path / "missing.pem"),
        }
    )
    with pytest.raises(ConfigError) as excinfo:
        check_peer_files(config)
    assert str(excinfo.value) == (
        f"peer.key_file (from DAGU_PEER_KEY_FILE): cannot read {tmp_path / 'missing.pem'}: "
        "No such file or directory"
    )


def test_check_peer_files_refuses_a_certificate_without_a_key(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    config = resolve(env={}, flags={"peer.cert_file": str(tmp_path / "cert.pem")})
    with pytest.raises(ConfigError) as excinfo:
        check_peer_files(config)
    assert str(excinfo.value) == (
        "peer.cert_file (from --peer.cert-file): set without peer.key_file; TLS needs both"
    )


# --- early flags and import weight -----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["worker", "--config", "/c.yaml", "--data-dir", "/d"],
         {"DAGU_CONFIG": "/c.yaml", "DAGU_HOME": "/d"}),
        (["worker", "--config=/c.yaml", "--data-dir=/d"],
         {"DAGU_CONFIG": "/c.yaml", "DAGU_HOME": "/d"}),
        (["worker", "--worker.labels", "a=b"], {}),
        (["worker", "--config"], {}),
    ],
)  # fmt: skip
def test_export_early_flags_copies_config_and_data_dir(argv, expected):
    env: dict[str, str] = {}
    export_early_flags(argv, env)
    assert env == expected


def test_config_module_imports_no_django():
    code = (
        "import sys, controlplane.core.config; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'django'); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- controlplane.cli ------------------------------------------------------------------------


def test_flag_keys_cover_the_spec_spellings():
    assert FLAG_KEYS == {
        "--coordinator.host": "coordinator.host",
        "--coordinator.port": "coordinator.port",
        "--coordinator.advertise": "coordinator.advertise",
        "--coordinator.id": "coordinator.id",
        "--worker.id": "worker.id",
        "--worker.labels": "worker.labels",
        "--worker-labels": "worker.labels",
        "--worker.max-active-runs": "worker.max_active_runs",
        "--worker.coordinators": "worker.coordinators",
        "--worker.coordinator-host": "worker.coordinator_host",
        "--worker.coordinator-port": "worker.coordinator_port",
        "--data-dir": "paths.data_dir",
        "--service-registry-dir": "paths.service_registry_dir",
        "--dags": "paths.dags_dir",
        "--peer.insecure": "peer.insecure",
        "--peer.cert-file": "peer.cert_file",
        "--peer.key-file": "peer.key_file",
        "--peer.client-ca-file": "peer.client_ca_file",
        "--peer.skip-tls-verify": "peer.skip_tls_verify",
        "--worker.token": "worker.token",
        "--worker.token-file": "worker.token_file",
        "--config": "config",
    }


def make_parser(*sections: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(parser, sections=sections)
    return parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings} - {"-h", "--help"}


def test_add_config_arguments_adds_only_the_requested_sections():
    assert option_strings(make_parser("coordinator")) == {
        "--config",
        "--data-dir",
        "--coordinator.host",
        "--coordinator.port",
        "--coordinator.advertise",
        "--coordinator.id",
    }
    assert option_strings(make_parser(*("coordinator", "worker", "peer", "paths"))) == set(
        FLAG_KEYS
    )


def test_add_config_arguments_refuses_unknown_sections():
    with pytest.raises(ValueError, match="scheduler"):
        make_parser("scheduler")


def test_every_flag_defaults_to_none():
    options = vars(make_parser("coordinator", "worker", "peer", "paths").parse_args([]))
    assert options and all(value is None for value in options.values())
    assert flags_from_options(options) == {}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--peer.insecure"], "true"),
        (["--peer.insecure=false"], "false"),
        (["--peer.insecure", "no"], "no"),
    ],
)
def test_bool_flags_take_an_optional_value(argv, expected):
    options = vars(make_parser("peer").parse_args(argv))
    assert flags_from_options(options) == {"peer.insecure": expected}


def test_both_label_flag_spellings_set_worker_labels():
    parser = make_parser("worker")
    for flag in ("--worker.labels", "--worker-labels"):
        options = vars(parser.parse_args([flag, "gpu=true"]))
        assert flags_from_options(options) == {"worker.labels": "gpu=true"}
        options = vars(parser.parse_args([f"{flag}=gpu=true,region=eu"]))
        assert config_from_options(options, env={}).worker.labels == {"gpu": "true", "region": "eu"}


def test_config_from_options_layers_only_passed_flags_over_env(tmp_path):
    path = write_config(tmp_path, {"coordinator": {"host": "file-host", "advertise": "adv"}})
    parser = make_parser("coordinator", "worker", "peer", "paths")
    options = vars(
        parser.parse_args(
            ["--config", str(path), "--coordinator.port", "6001", "--peer.skip-tls-verify",
             "--dags", str(tmp_path / "dags")]
        )
    )  # fmt: skip
    config = config_from_options(options, env={"DAGU_COORDINATOR_HOST": "env-host"})
    assert config.config_file == path
    assert config.coordinator.host == "env-host"
    assert config.coordinator.advertise == "adv"
    assert config.coordinator.port == 6001
    assert config.peer.skip_tls_verify is True
    assert config.paths.dags_dir == tmp_path / "dags"
    assert config.sources["coordinator.port"] == "--coordinator.port"


class ProbeCommand(ConfigCommand):
    help = "test command"
    config_sections = ("coordinator", "worker", "peer")
    needs_database = False  # a probe of config handling only

    def add_command_arguments(self, parser):
        parser.add_argument("--selector", default="")

    def handle_config(self, config, **options):
        from controlplane.core.labels import parse_label_string

        parse_label_string(options["selector"])  # may raise LabelError
        self.stdout.write(f"port={config.coordinator.port} labels={dict(config.worker.labels)}")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """ConfigCommand reads os.environ; drop anything that could leak in from the shell."""
    for name in list(os.environ):
        if name.startswith(("DAGU_", "BOLTBASE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAGU_HOME", str(tmp_path / "data"))


def test_config_command_passes_the_resolved_config(clean_env, capsys, monkeypatch):
    monkeypatch.setenv("DAGU_WORKER_LABELS", "gpu=true")
    call_command(ProbeCommand(), "--coordinator.port=6001")
    assert capsys.readouterr().out.strip() == "port=6001 labels={'gpu': 'true'}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--coordinator.port=abc"],
         'error: coordinator.port (from --coordinator.port): "abc" is not a valid port (1-65535)'),
        (["--worker-labels", "gpu=true,gpu"],
         'error: worker.labels (from --worker.labels): invalid label "gpu": expected key=value'),
        (["--selector", "gpu"], 'error: invalid label "gpu": expected key=value'),
        (["--peer.cert-file", "/nonexistent/cert.pem", "--peer.key-file", "/nonexistent/key.pem"],
         "error: peer.cert_file (from --peer.cert-file): cannot read /nonexistent/cert.pem: "
         "No such file or directory"),
    ],
)  # fmt: skip
def test_config_command_reports_one_line_and_exits_2(argv, message, clean_env, capsys):
    with pytest.raises(SystemExit) as excinfo:
        call_command(ProbeCommand(), *argv)
    assert excinfo.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""


def test_config_command_reports_env_errors_too(clean_env, capsys, monkeypatch):
    monkeypatch.setenv("DAGU_COORDINATOR_PORT", "99999")
    with pytest.raises(SystemExit) as excinfo:
        call_command(ProbeCommand())
    assert excinfo.value.code == 2
    assert capsys.readouterr().err == (
        'error: coordinator.port (from DAGU_COORDINATOR_PORT): "99999" is not a valid port '
        "(1-65535)\n"
    )


def test_label_error_and_config_error_are_distinct_types():
    # ConfigCommand catches both; LabelError reaches it from handle_config code directly.
    assert not issubclass(LabelError, ConfigError)


class PathsProbeCommand(ConfigCommand):
    """Reports what the rest of the process (views, pages, clients) reads while it runs."""

    config_sections = ("coordinator", "paths")
    needs_database = False

    def handle_config(self, config, **options):
        seen = settings.DAGU
        self.stdout.write(f"{seen.paths.dags_dir} {seen.paths.service_registry_dir}")
        assert seen is config


def test_a_commands_flags_are_what_the_whole_process_reads(clean_env, capsys, tmp_path):
    before = settings.DAGU
    dags, registry = tmp_path / "flagged-dags", tmp_path / "flagged-registry"
    call_command(PathsProbeCommand(), "--dags", str(dags), "--service-registry-dir", str(registry))
    assert capsys.readouterr().out.strip() == f"{dags} {registry}"
    assert settings.DAGU is before  # put back for whatever runs next in this process


def test_config_flags_cannot_be_abbreviated(clean_env, capsys, tmp_path):
    # `--data X` would pass argparse but not manage.py's early export: two data dirs.
    with pytest.raises(CommandError, match="unrecognized arguments: --data "):
        call_command(PathsProbeCommand(), "--data", str(tmp_path))
