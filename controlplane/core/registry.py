"""The file-based service registry (SPEC §7): one JSON file per live worker and coordinator.

Layout: `<root>/worker/<id>-<host>-<pid>.json` and `<root>/coordinator/<id>-<host>-<port>.json`.
Writers replace their file atomically (temp file + fsync + rename), so a reader sees the old
or the new record, never a mix. Readers treat everything in these directories as untrusted:
anything that is not a valid record is reported as `Skipped`, never raised.

Pure file I/O on purpose: the worker agent imports this module and must not need Django.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat as stat_module
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from controlplane.core.labels import LabelError, check_host, check_labels, check_worker_id

logger = logging.getLogger(__name__)

WORKER = "worker"
COORDINATOR = "coordinator"
KINDS = (WORKER, COORDINATOR)

# One name part (id, host) is kept under this many characters so that the whole file name
# stays far below the 255-byte limit of common file systems.
MAX_NAME_PART = 80
# A registry record is a few hundred bytes; a bigger file is not ours and is not read whole.
MAX_FILE_BYTES = 4 * 1024 * 1024
TEMP_SUFFIX = ".tmp"

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class RegistryError(Exception):
    """A registry file or directory cannot be written or removed."""


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    host: str
    pid: int
    labels: Mapping[str, str]
    max_active_runs: int
    active_tasks: int
    status: str
    started_at: datetime
    last_heartbeat: datetime


@dataclass(frozen=True)
class CoordinatorRecord:
    id: str
    host: str
    port: int
    pid: int
    status: str
    started_at: datetime
    last_heartbeat: datetime


@dataclass(frozen=True)
class Entry:
    """One registry file read back."""

    path: Path
    record: WorkerRecord | CoordinatorRecord
    mtime: datetime


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class ScanResult:
    entries: list[Entry]
    skipped: list[Skipped]


# --- names -------------------------------------------------------------------------------


def _safe_part(value: str) -> str:
    safe = _UNSAFE_CHARS.sub("_", value) or "_"
    # A leading dot would make the file hidden and look like one of our temp files.
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if len(safe) > MAX_NAME_PART:
        # Keep a hash of the full value so two long ids sharing a prefix do not collide.
        digest = hashlib.sha256(value.encode()).hexdigest()[:8]
        safe = f"{safe[: MAX_NAME_PART - 9]}_{digest}"
    return safe


def worker_file_name(record: WorkerRecord) -> str:
    return f"{_safe_part(record.id)}-{_safe_part(record.host)}-{record.pid}.json"


def coordinator_file_name(record: CoordinatorRecord) -> str:
    return f"{_safe_part(record.id)}-{_safe_part(record.host)}-{record.port}.json"


def record_kind(record: WorkerRecord | CoordinatorRecord) -> str:
    return WORKER if isinstance(record, WorkerRecord) else COORDINATOR


def record_path(root: Path, record: WorkerRecord | CoordinatorRecord) -> Path:
    if isinstance(record, WorkerRecord):
        return Path(root) / WORKER / worker_file_name(record)
    return Path(root) / COORDINATOR / coordinator_file_name(record)


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and not name.endswith(".json")


# --- encoding and strict decoding --------------------------------------------------------


class _InvalidRecord(ValueError):
    pass


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. `2026-01-02T03:04:05.000006Z`."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (offset required) into an aware UTC datetime."""
    if not _RFC3339.match(text):
        raise ValueError(f"{text!r} is not an RFC 3339 time with an offset")
    # Go writes nanoseconds; Python 3.11's fromisoformat drops the digits beyond micro.
    return datetime.fromisoformat(text.replace("t", "T").replace("z", "Z")).astimezone(UTC)


def _record_to_json(record: WorkerRecord | CoordinatorRecord) -> dict[str, Any]:
    if isinstance(record, WorkerRecord):
        return {
            "id": record.id,
            "host": record.host,
            "pid": record.pid,
            "labels": dict(record.labels),
            "max_active_runs": record.max_active_runs,
            "active_tasks": record.active_tasks,
            "status": record.status,
            "started_at": _checked_time(record.started_at, "started_at"),
            "last_heartbeat": _checked_time(record.last_heartbeat, "last_heartbeat"),
        }
    return {
        "id": record.id,
        "host": record.host,
        "port": record.port,
        "pid": record.pid,
        "status": record.status,
        "started_at": _checked_time(record.started_at, "started_at"),
        "last_heartbeat": _checked_time(record.last_heartbeat, "last_heartbeat"),
    }


def _checked_time(value: object, key: str) -> str:
    if not isinstance(value, datetime):
        raise _InvalidRecord(f"key '{key}' must be a datetime, got {type(value).__name__}")
    # A naive datetime would be read as local time by astimezone(); refuse to guess.
    if value.tzinfo is None or value.utcoffset() is None:
        raise _InvalidRecord(f"key '{key}' must be timezone-aware")
    return format_time(value)


_WORKER_KEYS = (
    "id", "host", "pid", "labels", "max_active_runs", "active_tasks", "status",
    "started_at", "last_heartbeat",
)  # fmt: skip
_COORDINATOR_KEYS = ("id", "host", "port", "pid", "status", "started_at", "last_heartbeat")


def _require_keys(data: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in data]
    if len(missing) == 1:
        raise _InvalidRecord(f"missing key '{missing[0]}'")
    if missing:
        raise _InvalidRecord("missing keys " + ", ".join(f"'{key}'" for key in missing))


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _get_str(data: dict[str, Any], key: str, *, non_empty: bool = False) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise _InvalidRecord(f"key '{key}' must be a string, got {_type_name(value)}")
    if non_empty and not value:
        raise _InvalidRecord(f"key '{key}' must not be empty")
    return value


def _get_int(data: dict[str, Any], key: str, *, minimum: int, maximum: int | None = None) -> int:
    value = data[key]
    # bool is an int subclass; `true` is never a valid pid or count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _InvalidRecord(f"key '{key}' must be an integer, got {_type_name(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise _InvalidRecord(f"key '{key}' must be {bounds}, got {value}")
    return value


def _get_time(data: dict[str, Any], key: str) -> datetime:
    text = _get_str(data, key)
    try:
        return parse_time(text)
    except ValueError:
        raise _InvalidRecord(f"key '{key}' is not an RFC 3339 time: {text!r}") from None


def _get_labels(data: dict[str, Any], key: str) -> dict[str, str]:
    value = data[key]
    if not isinstance(value, dict):
        raise _InvalidRecord(f"key '{key}' must be an object, got {_type_name(value)}")
    for label, label_value in value.items():
        if not isinstance(label_value, str):
            raise _InvalidRecord(
                f"key '{key}' label {label!r} must be a string, got {_type_name(label_value)}"
            )
    return _checked(check_labels, value, key)


_T = TypeVar("_T")


def _checked(check: Callable[[Any], _T], value: object, key: str) -> _T:
    try:
        return check(value)
    except LabelError as exc:
        raise _InvalidRecord(f"key '{key}': {exc}") from None


def _record_from_json(data: object, kind: str) -> WorkerRecord | CoordinatorRecord:
    """Build a record from decoded JSON; unknown extra keys are ignored (newer writers)."""
    if not isinstance(data, dict):
        raise _InvalidRecord(f"expected a JSON object, got {_type_name(data)}")
    if kind == WORKER:
        _require_keys(data, _WORKER_KEYS)
        return WorkerRecord(
            id=_checked(check_worker_id, _get_str(data, "id", non_empty=True), "id"),
            host=_checked(check_host, _get_str(data, "host"), "host"),
            pid=_get_int(data, "pid", minimum=1),
            labels=_get_labels(data, "labels"),
            max_active_runs=_get_int(data, "max_active_runs", minimum=0),
            active_tasks=_get_int(data, "active_tasks", minimum=0),
            status=_get_str(data, "status", non_empty=True),
            started_at=_get_time(data, "started_at"),
            last_heartbeat=_get_time(data, "last_heartbeat"),
        )
    _require_keys(data, _COORDINATOR_KEYS)
    return CoordinatorRecord(
        id=_get_str(data, "id", non_empty=True),
        host=_get_str(data, "host"),
        port=_get_int(data, "port", minimum=1, maximum=65535),
        pid=_get_int(data, "pid", minimum=1),
        status=_get_str(data, "status", non_empty=True),
        started_at=_get_time(data, "started_at"),
        last_heartbeat=_get_time(data, "last_heartbeat"),
    )


def encode_record(record: WorkerRecord | CoordinatorRecord) -> bytes:
    """The file content for `record`; RegistryError if it would not read back as valid."""
    kind = record_kind(record)
    try:
        data = _record_to_json(record)
        # Same checks as on read, so this process never writes a file it would skip itself.
        _record_from_json(data, kind)
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
    except (_InvalidRecord, TypeError, ValueError) as exc:
        raise RegistryError(f"invalid {kind} record {record.id!r}: {exc}") from None


# --- writing -----------------------------------------------------------------------------


def _ensure_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(
            f"cannot create service registry dir {directory}: {_os_reason(exc)}"
        ) from None
    if not directory.is_dir():
        raise RegistryError(f"service registry dir {directory} is not a directory")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_record(root: Path, record: WorkerRecord | CoordinatorRecord) -> Path:
    """Atomically (re)write the record's file, creating missing directories. Returns its path."""
    content = encode_record(record)
    path = record_path(root, record)
    directory = path.parent
    _ensure_dir(directory)
    try:
        # The temp name starts with "." and does not end in ".json": scanners ignore it.
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise RegistryError(
            f"service registry dir {directory} is not writable: {_os_reason(exc)}"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RegistryError(
            f"cannot write service registry file {path}: {_os_reason(exc)}"
        ) from None
    _fsync_dir(directory)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename survive a power loss; best effort, some file systems refuse it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_record(root: Path, record: WorkerRecord | CoordinatorRecord) -> None:
    """Delete the record's file; a file that is already gone is fine."""
    path = record_path(root, record)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise RegistryError(
            f"cannot remove service registry file {path}: {_os_reason(exc)}"
        ) from None


# --- reading -----------------------------------------------------------------------------

# (path, reason) pairs already warned about: scans repeat every few seconds and one broken
# file must not flood the log. Bounded so a directory full of junk cannot grow it forever.
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
_WARNED_LIMIT = 1000


def _warn_once(path: Path, reason: str) -> None:
    key = (str(path), reason)
    with _warned_lock:
        if key in _warned:
            return
        if len(_warned) >= _WARNED_LIMIT:
            _warned.clear()
        _warned.add(key)
    logger.warning("skipping service registry file %s: %s", path, reason)


def _mtime(stat: os.stat_result) -> datetime:
    return datetime.fromtimestamp(stat.st_mtime, tz=UTC)


class _Gone(Exception):
    """The file disappeared while being read (removed or renamed by its writer)."""


def _read_entry(path: Path, kind: str) -> Entry:
    """Read one `.json` file; raises _InvalidRecord with the reason, or _Gone."""
    try:
        with path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            if not _is_regular(stat):
                raise _InvalidRecord("not a regular file")
            if stat.st_size > MAX_FILE_BYTES:
                raise _InvalidRecord(f"file too large ({stat.st_size} bytes)")
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise _Gone from None
    except IsADirectoryError:
        raise _InvalidRecord("is a directory, not a file") from None
    except OSError as exc:
        raise _InvalidRecord(f"cannot read: {_os_reason(exc)}") from None
    if not raw.strip():
        raise _InvalidRecord("empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _InvalidRecord(f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _InvalidRecord(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _InvalidRecord("invalid JSON: nested too deeply") from None
    return Entry(path=path, record=_record_from_json(data, kind), mtime=_mtime(stat))


def _is_regular(stat: os.stat_result) -> bool:
    return stat_module.S_ISREG(stat.st_mode)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(
            f"unknown service registry kind {kind!r}: expected 'worker' or 'coordinator'"
        )


def _list_dir(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        _warn_once(directory, "not a directory")
        return []
    except OSError as exc:
        _warn_once(directory, f"cannot list: {_os_reason(exc)}")
        return []


def _scan_dir(directory: Path, kind: str) -> tuple[list[Entry], list[Skipped]]:
    entries: list[Entry] = []
    skipped: list[Skipped] = []
    for path in _list_dir(directory):
        if _is_temp_name(path.name):
            # Expected while a writer is mid-replace: reported, but not worth a warning.
            skipped.append(Skipped(path, "temporary file (write in progress or left over)"))
            continue
        if path.suffix != ".json":
            reason = "not a .json file"
        else:
            try:
                entries.append(_read_entry(path, kind))
                continue
            except _Gone:
                continue
            except _InvalidRecord as exc:
                reason = str(exc)
        _warn_once(path, reason)
        skipped.append(Skipped(path, reason))
    return entries, skipped


def scan(root: Path, kind: str) -> ScanResult:
    """Read every record of `kind` ("worker" or "coordinator"). Never raises for bad files.

    A missing directory gives an empty result. Entries and skipped files are in name order.
    """
    _check_kind(kind)
    entries, skipped = _scan_dir(Path(root) / kind, kind)
    return ScanResult(entries=entries, skipped=skipped)


# --- cleanup -----------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    # kill(0, 0) and kill(-n, 0) address process groups, not a process.
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # unknown: keeping a file is safer than deleting a live one
    return True


def cleanup(
    root: Path,
    *,
    now: datetime,
    stale_after: float,
    this_host: str,
    pid_alive: Callable[[int], bool] = pid_alive,
) -> list[Path]:
    """Remove stale and orphaned registry files of both kinds; returns the removed paths.

    Removed: records whose freshest sign of life (last_heartbeat or mtime) is older than
    `stale_after` seconds; records of this host whose pid is dead; corrupt `.json` files and
    leftover temp files untouched for `stale_after`. Never raises: it runs in a loop.
    """
    cutoff = now - timedelta(seconds=stale_after)
    removed: list[Path] = []
    for kind in KINDS:
        for path in _list_dir(Path(root) / kind):
            reason = _removal_reason(
                path, kind, now=now, cutoff=cutoff, this_host=this_host, pid_alive=pid_alive
            )
            if reason and _remove_unless_touched(path, reason):
                removed.append(path)
    return removed


def _removal_reason(
    path: Path,
    kind: str,
    *,
    now: datetime,
    cutoff: datetime,
    this_host: str,
    pid_alive: Callable[[int], bool],
) -> tuple[str, float] | None:
    """Why `path` should go, with the mtime it was judged on; None to keep it."""
    try:
        stat = path.lstat()
    except OSError:
        return None
    mtime = _mtime(stat)
    if _is_temp_name(path.name):
        if path.name.endswith(TEMP_SUFFIX) and mtime < cutoff and _is_regular(stat):
            return ("leftover temp file", stat.st_mtime)
        return None
    if path.suffix != ".json":
        return None  # not ours: leave foreign files to whoever put them there
    try:
        entry = _read_entry(path, kind)
    except _Gone:
        return None
    except _InvalidRecord as exc:
        if mtime < cutoff and _is_regular(stat):
            return (f"corrupt ({exc})", stat.st_mtime)
        return None
    record = entry.record
    freshest = mtime
    # A heartbeat far in the future (clock skew) would keep a dead file forever; trust mtime.
    if record.last_heartbeat - now <= now - cutoff:
        freshest = max(freshest, record.last_heartbeat)
    if freshest < cutoff:
        return (f"stale (last seen {format_time(freshest)})", stat.st_mtime)
    if record.host == this_host and not pid_alive(record.pid):
        return (f"process {record.pid} is gone", stat.st_mtime)
    return None


def _remove_unless_touched(path: Path, judged: tuple[str, float]) -> bool:
    reason, judged_mtime = judged
    # The owner may have rewritten the file since we looked; a fresh write wins.
    try:
        if path.lstat().st_mtime != judged_mtime:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("cannot remove service registry file %s: %s", path, _os_reason(exc))
        return False
    logger.info("removed service registry file %s: %s", path, reason)
    return True


# --- keeping one's own file fresh --------------------------------------------------------


class Registrant:
    """Keeps one record's file fresh from a background thread.

    The worker agent and the coordinator each own one. The refresh rewrites the whole file
    (fresh last_heartbeat and active_tasks) and recreates it, directories included, if
    someone deleted it; failures are logged once per distinct error and retried.
    """

    def __init__(
        self,
        root: Path,
        record_fn: Callable[[], WorkerRecord | CoordinatorRecord],
        *,
        interval: float = 10.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"registry refresh interval must be > 0, got {interval}")
        self._root = Path(root)
        self._record_fn = record_fn
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one write at a time, so the newest record lands last
        self._thread: threading.Thread | None = None
        self._path: Path | None = None
        self._healthy = False
        self._stopped = False
        self._last_error: str | None = None

    @property
    def path(self) -> Path:
        """The record's file (computed from a fresh record before the first write)."""
        if self._path is None:
            return record_path(self._root, self._record_fn())
        return self._path

    @property
    def healthy(self) -> bool:
        """True while the file is believed in place: False before start, after a failed write
        and after stop."""
        return self._healthy

    def start(self) -> None:
        """Write the file now (RegistryError if impossible), then refresh it in the background."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("Registrant.start() called twice")
        with self._lock:
            self._write()
        self._thread = threading.Thread(
            target=self._run, name=f"registry-{self.path.parent.name}", daemon=True
        )
        self._thread.start()
        logger.info("registered in the service registry as %s", self._path)

    def refresh_now(self) -> None:
        """Rewrite the file once with a fresh record; failures are logged, never raised."""
        with self._lock:
            if self._stopped:
                return
            try:
                self._write()
            except Exception as exc:
                self._note_failure(exc)
                return
            if self._last_error is not None:
                logger.info("service registry file %s written again", self._path)
                self._last_error = None

    def stop(self) -> None:
        """Stop refreshing and delete the file. Safe to call more than once."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._interval + 5)
            if thread.is_alive():
                logger.warning("service registry refresh thread did not stop in time")
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._healthy = False
            if self._path is None:
                return
            try:
                self._path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning(
                    "cannot remove service registry file %s: %s", self._path, _os_reason(exc)
                )
                return
        logger.info("unregistered from the service registry: removed %s", self._path)

    def _run(self) -> None:
        # Runs in the registrant's daemon thread until stop().
        while not self._stop.wait(self._interval):
            self.refresh_now()

    def _write(self) -> None:
        """One write under self._lock; raises RegistryError (or whatever record_fn raises)."""
        try:
            record = self._record_fn()
            path = write_record(self._root, record)
        except Exception:
            self._healthy = False
            raise
        if self._path is not None and path != self._path:
            # The name parts changed (they should not); do not leave the old file behind.
            with contextlib.suppress(OSError):
                self._path.unlink(missing_ok=True)
        self._path = path
        self._healthy = True

    def _note_failure(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
        if message != self._last_error:
            logger.warning("service registry refresh failed (will retry): %s", message)
            self._last_error = message
