"""Layered configuration: built-in defaults < config.yaml < DAGU_*/BOLTBASE_* env < flags.

INTERFACE CONTRACT (other modules rely on these names; keep them stable):
- `Config` and its section dataclasses, all frozen.
- `resolve(*, flags=None, env=None, config_file=None) -> Config`
- `ConfigError(key, source, problem)`; `str()` is one line naming all three.
- `export_early_flags(argv, env)`: copies --config/--data-dir from argv into env.
- Turning config into command-line flags lives in `controlplane.cli`.

settings.py calls `resolve()` at import time, so this module stays cheap and must never
import Django. Every value is validated where it is resolved, and an invalid one names the
dotted key, the layer it came from (`default`, `config file PATH`, an env var, a flag) and
what is wrong, in one line.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.core.events import DEFAULT_MAX_STEP_LOG_BYTES
from controlplane.core.labels import LabelError, check_worker_id, parse_labels
from controlplane.core.yamlload import YamlError, load_one

logger = logging.getLogger(__name__)

EXECUTION_MODES = ("local", "distributed")
ENV_PREFIXES = ("DAGU_", "BOLTBASE_")  # BOLTBASE_ is an alias; DAGU_ wins.

# Layer ranks; a higher rank overrides a lower one.
_DEFAULT, _FILE, _ENV, _FLAG = 0, 1, 2, 3


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
    # Empty means "<advertised host>@<port>", decided once the port is bound.
    id: str = ""


@dataclass(frozen=True)
class WorkerConfig:
    id: str = field(default_factory=lambda: f"{socket.gethostname()}@{os.getpid()}")
    labels: Mapping[str, str] = field(default_factory=dict)
    max_active_runs: int = 10
    # "host:port" strings; empty means discover from the service registry.
    coordinators: tuple[str, ...] = ()
    # As given; when set they have already been folded into `coordinators`.
    coordinator_host: str = ""
    coordinator_port: int | None = None
    # The credential presented to the coordinator (docs/security.md); with neither set, a
    # worker uses <data_dir>/worker_token when it can read it (same host as the coordinator).
    token: str = field(default="", repr=False)
    token_file: str = ""


@dataclass(frozen=True)
class PeerConfig:
    insecure: bool = True
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    skip_tls_verify: bool = False
    # TLS settings that were given but dropped because peer.insecure was set true (seed 001
    # writes `insecure: true` beside certFile/keyFile); check_peer_files says so once.
    ignored: tuple[str, ...] = ()


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
class LimitsConfig:
    # Sub-DAG calls nested deeper than this fail the calling step: a DAG that (through
    # other files) calls itself would otherwise spawn runs and threads without end.
    max_subdag_depth: int = 16
    # Live worker ids one credential may hold in the coordinator's fleet: a leaked token
    # heartbeating from ever-new ids is refused instead of growing memory and the Workers table.
    workers_per_credential: int = 1000


@dataclass(frozen=True)
class LogsConfig:
    # Output kept per step; beyond it a truncation marker ends the log (controlplane.core.events).
    max_step_bytes: int = DEFAULT_MAX_STEP_LOG_BYTES


@dataclass(frozen=True)
class RetentionConfig:
    # Finished runs older than this are deleted daily by the main instance; 0 keeps them.
    days: int = 30


@dataclass(frozen=True)
class MetricsConfig:
    # /metrics is served without authentication only when this is true (a scraper inside a
    # trusted network); otherwise it takes a viewer's API token or session like the API.
    public: bool = False


@dataclass(frozen=True)
class Config:
    coordinator: CoordinatorConfig
    worker: WorkerConfig
    peer: PeerConfig
    paths: PathsConfig
    timing: TimingConfig
    logs: LogsConfig = field(default_factory=LogsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    default_execution_mode: str = "local"
    database_url: str = ""
    # dotted key -> where its value came from ("default", "config file FILE", "DAGU_X", "--flag")
    sources: Mapping[str, str] = field(default_factory=dict)
    # The config.yaml that was read, if any.
    config_file: Path | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "dagu"


# --- value parsers -------------------------------------------------------------------------
# Each takes the raw value of one layer (a string from env/flags, anything YAML produces, or a
# typed value from a programmatic caller) and returns the typed value, or _UNSET to mean "not
# set here, fall through to the layer below". Problems raise _Invalid with the message tail.


class _Invalid(ValueError):
    pass


_UNSET: Any = object()


def _show(value: object) -> str:
    """A value as it appears in an error: strings quoted, YAML-ish for the rest."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # circular structures; YAML anchors can build them
        return repr(value)


def _parse_port(value: object) -> int:
    port = _as_int(value)
    if port is None or not 1 <= port <= 65535:
        raise _Invalid(f"{_show(value)} is not a valid port (1-65535)")
    return port


def _parse_listen_port(value: object) -> int:
    # 0 asks the OS for a free port; the coordinator reports the one it got (its first log
    # line and its registry file), so nobody has to pick a port that may be taken meanwhile.
    if _as_int(value) == 0:
        return 0
    return _parse_port(value)


def _parse_positive_int(value: object) -> int:
    number = _as_int(value)
    if number is None or number < 1:
        raise _Invalid(f"{_show(value)} is not a positive integer")
    return number


def _parse_non_negative_int(value: object) -> int:
    number = _as_int(value)
    if number is None:
        raise _Invalid(f"{_show(value)} is not a whole number >= 0")
    return number


def _as_int(value: object) -> int | None:
    # bool is an int subclass; `port: yes` in YAML must not become port 1.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value.strip())
    return None


def _parse_seconds(value: object) -> float:
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            seconds = None
    # `x == x` is False only for NaN.
    if seconds is None or not (0 < seconds < float("inf")) or seconds != seconds:
        raise _Invalid(f"{_show(value)} is not a positive number of seconds")
    return seconds


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid(f"{_show(value)} is not a boolean (use true/false, 1/0 or yes/no)")


def _parse_mode(value: object) -> str:
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode not in EXECUTION_MODES:
        raise _Invalid(f"{_show(value)} is not valid: must be one of: {', '.join(EXECUTION_MODES)}")
    return mode


def _text(value: object) -> str:
    # YAML reads `id: 42` as an int; an id or a host that looks like a number is still text.
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Invalid(f"expected a string, got {_show(value)}")


def _parse_host(value: object) -> str:
    host = _text(value)
    if not host:
        raise _Invalid("must not be empty")
    return host


def _parse_text_or_default(value: object) -> str:
    # Dagu's own config templates write `id: ""` and `advertise: ""` meaning "the default".
    return _text(value) or _UNSET


def _parse_optional_file(value: object) -> str:
    if value is None:
        return ""
    text = _text(value)
    return str(Path(text).expanduser()) if text else ""


def _parse_optional_text(value: object) -> str:
    return "" if value is None else _text(value)


def _parse_path(value: object) -> Path:
    text = str(value).strip() if isinstance(value, str | os.PathLike) else None
    if not text:
        raise _Invalid(
            "must not be empty" if text == "" else f"expected a path, got {_show(value)}"
        )
    return Path(text).expanduser()


def _parse_database_url(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"expected a URL string, got {_show(value)}")
    return value.strip()


def _parse_worker_id(value: object) -> str:
    text = _parse_text_or_default(value)
    try:
        return text if text is _UNSET else check_worker_id(text)
    except LabelError as exc:
        raise _Invalid(str(exc)) from None


def _parse_worker_labels(value: object) -> dict[str, str]:
    try:
        return parse_labels(value)
    except LabelError as exc:
        raise _Invalid(str(exc)) from None


def _parse_coordinators(value: object) -> tuple[str, ...]:
    """`host:port,...` or a YAML list of them; empty entries are skipped, bad ones refused."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _Invalid(f"expected host:port,... or a list, got {_show(value)}")
    addresses: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(f"{_show(item)} is not a coordinator address: expected host:port")
        if item.strip():
            addresses.append(parse_coordinator_address(item))
    return tuple(addresses)


def parse_coordinator_address(text: str) -> str:
    """Validate one `host:port` (`[v6]:port` for IPv6) and return it normalised.

    Raises ValueError with the problem (without the key/source, which the caller knows).
    """
    address = text.strip()
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise _Invalid(f'"{address}" is not a coordinator address: expected [ipv6]:port')
        port_text = rest[1:]
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            raise _Invalid(f'"{address}" is not a coordinator address: expected host:port')
        if ":" in host:
            raise _Invalid(
                f'"{address}" is not a coordinator address: put IPv6 hosts in brackets, '
                "e.g. [::1]:50055"
            )
    host = host.strip()
    if not host:
        raise _Invalid(f'"{address}" is not a coordinator address: the host is empty')
    port = _as_int(port_text)
    if port is None or not 1 <= port <= 65535:
        raise _Invalid(f'"{address}" is not a coordinator address: port must be 1-65535')
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_coordinator_host(value: object) -> str:
    host = _parse_host(value)
    # Accept `[::1]` as well as `::1`; brackets are added back when the address is built.
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


# --- the settings table ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    key: str  # dotted, as in SPEC section 2
    parse: Callable[[object], Any]
    env: tuple[str, ...] = ()  # names after the DAGU_/BOLTBASE_ prefix, first wins
    raw_env: tuple[str, ...] = ()  # names read without a prefix
    flag: str = ""  # canonical spelling, used to name the source


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("coordinator.host", _parse_host, ("COORDINATOR_HOST",), flag="--coordinator.host"),
    _Setting(
        "coordinator.port", _parse_listen_port, ("COORDINATOR_PORT",), flag="--coordinator.port"
    ),
    _Setting(
        "coordinator.advertise",
        _parse_text_or_default,
        ("COORDINATOR_ADVERTISE",),
        flag="--coordinator.advertise",
    ),
    _Setting(
        "coordinator.id", _parse_text_or_default, ("COORDINATOR_ID",), flag="--coordinator.id"
    ),
    _Setting("worker.id", _parse_worker_id, ("WORKER_ID",), flag="--worker.id"),
    _Setting("worker.labels", _parse_worker_labels, ("WORKER_LABELS",), flag="--worker.labels"),
    _Setting(
        "worker.max_active_runs",
        _parse_positive_int,
        ("WORKER_MAX_ACTIVE_RUNS",),
        flag="--worker.max-active-runs",
    ),
    _Setting(
        "worker.coordinators",
        _parse_coordinators,
        ("WORKER_COORDINATORS",),
        flag="--worker.coordinators",
    ),
    _Setting(
        "worker.coordinator_host",
        _parse_coordinator_host,
        ("WORKER_COORDINATOR_HOST",),
        flag="--worker.coordinator-host",
    ),
    _Setting(
        "worker.coordinator_port",
        _parse_port,
        ("WORKER_COORDINATOR_PORT",),
        flag="--worker.coordinator-port",
    ),
    _Setting("worker.token", _parse_optional_text, ("WORKER_TOKEN",), flag="--worker.token"),
    _Setting(
        "worker.token_file",
        _parse_optional_file,
        ("WORKER_TOKEN_FILE",),
        flag="--worker.token-file",
    ),
    _Setting("paths.data_dir", _parse_path, ("HOME",), flag="--data-dir"),
    _Setting(
        "paths.service_registry_dir",
        _parse_path,
        ("PATHS_SERVICE_REGISTRY_DIR", "SERVICE_REGISTRY_DIR"),
        flag="--service-registry-dir",
    ),
    _Setting("paths.dags_dir", _parse_path, ("DAGS_DIR", "PATHS_DAGS_DIR"), flag="--dags"),
    _Setting("paths.log_dir", _parse_path, ("LOG_DIR", "PATHS_LOG_DIR")),
    _Setting("default_execution_mode", _parse_mode, ("DEFAULT_EXECUTION_MODE",)),
    _Setting("database_url", _parse_database_url, raw_env=("DATABASE_URL",)),
    _Setting("peer.insecure", _parse_bool, ("PEER_INSECURE",), flag="--peer.insecure"),
    _Setting("peer.cert_file", _parse_optional_file, ("PEER_CERT_FILE",), flag="--peer.cert-file"),
    _Setting("peer.key_file", _parse_optional_file, ("PEER_KEY_FILE",), flag="--peer.key-file"),
    _Setting(
        "peer.client_ca_file",
        _parse_optional_file,
        ("PEER_CLIENT_CA_FILE",),
        flag="--peer.client-ca-file",
    ),
    _Setting(
        "peer.skip_tls_verify",
        _parse_bool,
        ("PEER_SKIP_TLS_VERIFY",),
        flag="--peer.skip-tls-verify",
    ),
    _Setting("timing.heartbeat_interval", _parse_seconds, ("HEARTBEAT_INTERVAL",)),
    _Setting("timing.registry_refresh_interval", _parse_seconds, ("REGISTRY_REFRESH_INTERVAL",)),
    _Setting("timing.registry_stale_after", _parse_seconds, ("REGISTRY_STALE_AFTER",)),
    _Setting("timing.health_warning_after", _parse_seconds, ("HEALTH_WARNING_AFTER",)),
    _Setting("timing.health_unhealthy_after", _parse_seconds, ("HEALTH_UNHEALTHY_AFTER",)),
    _Setting("timing.health_offline_after", _parse_seconds, ("HEALTH_OFFLINE_AFTER",)),
    _Setting("timing.offline_purge_after", _parse_seconds, ("OFFLINE_PURGE_AFTER",)),
    _Setting("limits.max_subdag_depth", _parse_positive_int, ("LIMITS_MAX_SUBDAG_DEPTH",)),
    _Setting(
        "limits.workers_per_credential",
        _parse_positive_int,
        ("LIMITS_WORKERS_PER_CREDENTIAL",),
    ),
    _Setting("logs.max_step_bytes", _parse_positive_int, ("LOGS_MAX_STEP_BYTES",)),
    _Setting("retention.days", _parse_non_negative_int, ("RETENTION_DAYS",)),
    _Setting("metrics.public", _parse_bool, ("METRICS_PUBLIC",)),
)
_BY_KEY: dict[str, _Setting] = {s.key: s for s in _SETTINGS}
SETTING_KEYS: tuple[str, ...] = tuple(_BY_KEY)

# Each pair must be strictly increasing; otherwise workers flap or registry entries expire
# between refreshes.
_ORDERED_TIMINGS: tuple[tuple[str, str], ...] = (
    ("timing.heartbeat_interval", "timing.health_warning_after"),
    ("timing.health_warning_after", "timing.health_unhealthy_after"),
    ("timing.health_unhealthy_after", "timing.health_offline_after"),
    ("timing.registry_refresh_interval", "timing.registry_stale_after"),
)


def env_vars(key: str) -> tuple[str, ...]:
    """Every environment variable that sets `key`, highest priority first."""
    setting = _BY_KEY[key]
    prefixed = tuple(prefix + name for prefix in ENV_PREFIXES for name in setting.env)
    return prefixed + setting.raw_env


def flag_source(key: str) -> str:
    """How a value passed as a flag is named in errors and in Config.sources."""
    return _BY_KEY[key].flag or f"flag {key}"


# --- config.yaml -----------------------------------------------------------------------------


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _yaml_layout() -> dict[str, dict[str, str]]:
    """section ("" for top level) -> {accepted spelling: dotted key}."""
    layout: dict[str, dict[str, str]] = {"": {}}
    for key in SETTING_KEYS:
        section, _, name = key.rpartition(".")
        spellings = layout.setdefault(section, {})
        spellings[name] = key
        spellings[_camel(name)] = key
    return layout


_YAML_LAYOUT = _yaml_layout()


def _read_config_file(path: Path, *, key_source: str) -> dict[str, Any]:
    """Flatten config.yaml into {dotted key: raw value}; structural problems are errors."""
    source = f"config file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError("config", key_source, f"cannot read {path}: {reason}") from None
    try:
        # The loader DAG files use, so `no` or `on` mean the same text in both.
        document = load_one(text)
    except YamlError as exc:
        raise ConfigError("config", source, str(exc)) from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ConfigError(
            "config", source, f"expected a mapping at the top level, got {_show(document)}"
        )

    values: dict[str, Any] = {}
    seen_as: dict[str, str] = {}

    def take(name: object, value: object, *, section: str) -> None:
        where = f"{section}.{name}" if section else str(name)
        key = _YAML_LAYOUT[section].get(name) if isinstance(name, str) else None
        if key is None:
            raise ConfigError(where, source, "unknown key" + _hint(name, section=section))
        if key in seen_as:
            raise ConfigError(
                key, source, f'given twice, as "{seen_as[key]}" and "{name}"; keep one'
            )
        seen_as[key] = str(name)
        values[key] = value

    for name, value in document.items():
        if isinstance(name, str) and name in _YAML_LAYOUT and name:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(name, source, f"expected a mapping, got {_show(value)}")
            for sub_name, sub_value in value.items():
                take(sub_name, sub_value, section=name)
        else:
            take(name, value, section="")
    return values


def _hint(name: object, *, section: str) -> str:
    if not isinstance(name, str):
        return ""
    candidates = list(_YAML_LAYOUT[section])
    if not section:
        candidates += [s for s in _YAML_LAYOUT if s]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    if close:
        return f'; did you mean "{close[0]}"?'
    # A section key written at the top level (`dags_dir:` instead of `paths: {dags_dir:}`).
    if not section:
        for other, spellings in _YAML_LAYOUT.items():
            if other and name in spellings:
                return f'; did you mean "{other}.{name}"?'
    return ""


# --- resolution ------------------------------------------------------------------------------


@dataclass
class _Raw:
    value: object
    source: str
    rank: int


def _env_value(names: Iterable[str], env: Mapping[str, str]) -> tuple[str, str] | None:
    # An empty variable counts as unset, as in viper: `DAGU_X=` must not blank a setting.
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return name, value
    return None


def _candidates(
    key: str,
    *,
    file_values: Mapping[str, Any],
    file_source: str,
    env: Mapping[str, str],
    flags: Mapping[str, Any],
) -> list[_Raw]:
    """The raw values for `key`, highest layer first."""
    found: list[_Raw] = []
    if key in flags and flags[key] is not None:
        found.append(_Raw(flags[key], flag_source(key), _FLAG))
    hit = _env_value(env_vars(key), env)
    if hit is not None:
        found.append(_Raw(hit[1], hit[0], _ENV))
    if key in file_values:
        found.append(_Raw(file_values[key], file_source, _FILE))
    return found


def _pick(key: str, candidates: Sequence[_Raw]) -> tuple[Any, str, int]:
    """(parsed value, source, rank) of the highest layer that sets `key`, else _UNSET."""
    parse = _BY_KEY[key].parse
    for raw in candidates:
        try:
            value = parse(raw.value)
        except _Invalid as exc:
            raise ConfigError(key, raw.source, str(exc)) from None
        if value is not _UNSET:
            return value, raw.source, raw.rank
    return _UNSET, "default", _DEFAULT


def _locate_config_file(
    *,
    config_file: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    data_dir: Path,
) -> tuple[Path, str] | None:
    """(path, what named it) of the config.yaml to read, or None when there is none."""
    if config_file is not None and str(config_file).strip():
        return Path(str(config_file).strip()).expanduser(), "--config"
    hit = _env_value([prefix + "CONFIG" for prefix in ENV_PREFIXES], env)
    if hit is not None:
        return Path(hit[1].strip()).expanduser(), hit[0]
    default = data_dir / "config.yaml"
    # Only an existing file is read here; a named file that is missing is an error above.
    if default.is_file():
        return default, "default"
    return None


def resolve(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Config:
    """Resolve every setting: built-in defaults < config.yaml < env < flags.

    `flags` maps dotted keys (see SETTING_KEYS) to the values the user actually passed;
    None values count as not passed. A `config` entry is taken as `config_file`.
    `env` defaults to os.environ. Raises ConfigError on the first invalid value.
    """
    env = os.environ if env is None else env
    flags = dict(flags or {})
    flag_config = flags.pop("config", None)
    unknown = sorted(set(flags) - set(_BY_KEY))
    if unknown:
        raise ValueError(f"unknown setting(s) passed as flags: {', '.join(unknown)}")
    if config_file is None:
        config_file = flag_config

    # The data dir is needed to find <data_dir>/config.yaml, so it is resolved once from
    # flags and env alone; the file may still move it, and derived paths follow the result.
    early = _candidates("paths.data_dir", file_values={}, file_source="", env=env, flags=flags)
    early_dir, _, _ = _pick("paths.data_dir", early)
    located = _locate_config_file(
        config_file=config_file,
        env=env,
        data_dir=default_data_dir() if early_dir is _UNSET else early_dir,
    )
    file_values: dict[str, Any] = {}
    file_source = ""
    if located is not None:
        path, named_by = located
        file_values = _read_config_file(path, key_source=named_by)
        file_source = f"config file {path}"
        logger.debug("read configuration from %s", path)

    picked: dict[str, Any] = {}
    sources: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for key in SETTING_KEYS:
        value, source, rank = _pick(
            key,
            _candidates(
                key, file_values=file_values, file_source=file_source, env=env, flags=flags
            ),
        )
        if value is not _UNSET:
            picked[key] = value
        sources[key] = source
        ranks[key] = rank

    data_dir: Path = picked.get("paths.data_dir", default_data_dir())
    timing = _timing(picked, sources=sources, ranks=ranks)
    coordinator = CoordinatorConfig(
        host=picked.get("coordinator.host", "127.0.0.1"),
        port=picked.get("coordinator.port", 50055),
        **_present(picked, advertise="coordinator.advertise", id="coordinator.id"),
    )
    return Config(
        coordinator=coordinator,
        worker=WorkerConfig(
            labels=picked.get("worker.labels", {}),
            max_active_runs=picked.get("worker.max_active_runs", 10),
            coordinators=_worker_coordinators(
                picked, coordinator=coordinator, sources=sources, ranks=ranks
            ),
            coordinator_host=picked.get("worker.coordinator_host", ""),
            coordinator_port=picked.get("worker.coordinator_port"),
            token=picked.get("worker.token", ""),
            token_file=picked.get("worker.token_file", ""),
            **_present(picked, id="worker.id"),
        ),
        peer=_peer(picked, ranks=ranks),
        paths=PathsConfig(
            data_dir=data_dir,
            service_registry_dir=picked.get(
                "paths.service_registry_dir", data_dir / "service-registry"
            ),
            dags_dir=picked.get("paths.dags_dir", data_dir / "dags"),
            log_dir=picked.get("paths.log_dir", data_dir / "logs"),
        ),
        timing=timing,
        logs=LogsConfig(
            max_step_bytes=picked.get("logs.max_step_bytes", DEFAULT_MAX_STEP_LOG_BYTES)
        ),
        retention=RetentionConfig(days=picked.get("retention.days", 30)),
        default_execution_mode=picked.get("default_execution_mode", "local"),
        database_url=picked.get("database_url", ""),
        sources=sources,
        config_file=located[0] if located is not None else None,
        limits=LimitsConfig(
            max_subdag_depth=picked.get("limits.max_subdag_depth", LimitsConfig.max_subdag_depth),
            workers_per_credential=picked.get(
                "limits.workers_per_credential", LimitsConfig.workers_per_credential
            ),
        ),
        metrics=MetricsConfig(public=picked.get("metrics.public", False)),
    )


def _present(picked: Mapping[str, Any], **fields: str) -> dict[str, Any]:
    # Only fields that were set, so the dataclass default factories (hostname, pid) apply.
    return {name: picked[key] for name, key in fields.items() if key in picked}


_TLS_KEYS = ("peer.cert_file", "peer.key_file", "peer.client_ca_file", "peer.skip_tls_verify")


def _peer(picked: Mapping[str, Any], *, ranks: Mapping[str, int]) -> PeerConfig:
    """peer.*; an explicit `insecure: true` wins over TLS settings, which are then dropped.

    Left at its default, insecure=true still lets TLS settings switch TLS on (design.md,
    Transport security); only an operator who wrote `insecure: true` gets plaintext.
    """
    values = {key: picked[key] for key in _TLS_KEYS if picked.get(key)}
    insecure = picked.get("peer.insecure", True)
    ignored: tuple[str, ...] = ()
    if insecure and ranks["peer.insecure"] > _DEFAULT and values:
        ignored, values = tuple(values), {}
    return PeerConfig(
        insecure=insecure,
        **{key.partition(".")[2]: value for key, value in values.items()},
        ignored=ignored,
    )


def _timing(
    picked: Mapping[str, Any], *, sources: Mapping[str, str], ranks: Mapping[str, int]
) -> TimingConfig:
    defaults = TimingConfig()
    values = {
        key: picked.get(key, getattr(defaults, key.partition(".")[2]))
        for key in SETTING_KEYS
        if key.startswith("timing.")
    }
    for low, high in _ORDERED_TIMINGS:
        if values[low] < values[high]:
            continue
        # Blame whichever side the operator set most recently (higher layer); on a tie, the
        # upper bound, since lowering a threshold is the likelier mistake.
        if ranks[low] > ranks[high]:
            raise ConfigError(
                low, sources[low], f"{values[low]:g} must be less than {high} ({values[high]:g})"
            )
        raise ConfigError(
            high, sources[high], f"{values[high]:g} must be greater than {low} ({values[low]:g})"
        )
    return TimingConfig(**{key.partition(".")[2]: value for key, value in values.items()})


def _worker_coordinators(
    picked: Mapping[str, Any],
    *,
    coordinator: CoordinatorConfig,
    sources: dict[str, str],
    ranks: Mapping[str, int],
) -> tuple[str, ...]:
    """`worker.coordinators`, or the single address built from coordinator_host/_port.

    Whichever was set in the higher layer wins; both in the same layer is ambiguous.
    """
    listed: tuple[str, ...] = picked.get("worker.coordinators", ())
    host_key, port_key = "worker.coordinator_host", "worker.coordinator_port"
    if host_key not in picked and port_key not in picked:
        return listed
    single_key = host_key if ranks[host_key] >= ranks[port_key] else port_key
    if "worker.coordinators" in picked:
        list_rank, single_rank = ranks["worker.coordinators"], ranks[single_key]
        if list_rank > single_rank:
            return listed
        if list_rank == single_rank:
            raise ConfigError(
                single_key,
                sources[single_key],
                f"conflicts with worker.coordinators (from {sources['worker.coordinators']}); "
                "set one or the other",
            )
    host = picked.get(host_key, coordinator.host)
    port = picked.get(port_key, coordinator.port)
    if port == 0:
        raise ConfigError(
            host_key,
            sources[host_key],
            "needs worker.coordinator_port: coordinator.port is 0 (any free port)",
        )
    sources["worker.coordinators"] = sources[single_key]
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}",)


# --- checks that touch the filesystem --------------------------------------------------------


def check_peer_files(config: Config) -> None:
    """Fail early on TLS files that are half-configured or unreadable.

    Kept out of resolve(): settings.py resolves for every command, and a missing certificate
    must stop the coordinator and worker, not `migrate`.
    """
    peer = config.peer
    if peer.ignored:
        logger.warning(
            "peer.insecure is true (from %s): ignoring %s; coordinator traffic is plaintext (h2c)",
            config.sources.get("peer.insecure", "default"),
            ", ".join(peer.ignored),
        )
    if bool(peer.cert_file) != bool(peer.key_file):
        given, missing = (
            ("peer.cert_file", "peer.key_file")
            if peer.cert_file
            else ("peer.key_file", "peer.cert_file")
        )
        raise ConfigError(
            given, config.sources.get(given, "default"), f"set without {missing}; TLS needs both"
        )
    for key, path in (
        ("peer.cert_file", peer.cert_file),
        ("peer.key_file", peer.key_file),
        ("peer.client_ca_file", peer.client_ca_file),
    ):
        if not path:
            continue
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ConfigError(
                key,
                config.sources.get(key, "default"),
                f"cannot read {path}: {exc.strerror or exc}",
            ) from None


def export_early_flags(argv: Sequence[str], env: os._Environ[str] | dict[str, str]) -> None:
    """Copy --config/--data-dir from argv into env so settings.py sees them."""
    for i, arg in enumerate(argv):
        for flag, var in (("--config", "DAGU_CONFIG"), ("--data-dir", "DAGU_HOME")):
            if arg == flag and i + 1 < len(argv):
                env[var] = argv[i + 1]
            elif arg.startswith(flag + "="):
                env[var] = arg.split("=", 1)[1]
