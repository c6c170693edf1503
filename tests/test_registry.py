"""The file-based service registry: names, atomic writes, tolerant scans, cleanup, Registrant."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from controlplane.core import registry
from controlplane.core.registry import (
    CoordinatorRecord,
    Registrant,
    RegistryError,
    WorkerRecord,
    cleanup,
    coordinator_file_name,
    pid_alive,
    remove_record,
    scan,
    worker_file_name,
    write_record,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def make_worker(**overrides: object) -> WorkerRecord:
    fields: dict[str, object] = {
        "id": "w1",
        "host": "box",
        "pid": 4242,
        "labels": {"gpu": "true", "region": "eu"},
        "max_active_runs": 4,
        "active_tasks": 1,
        "status": "active",
        "started_at": NOW - timedelta(minutes=5),
        "last_heartbeat": NOW,
    }
    fields.update(overrides)
    return WorkerRecord(**fields)  # type: ignore[arg-type]


def make_coordinator(**overrides: object) -> CoordinatorRecord:
    fields: dict[str, object] = {
        "id": "box@50055",
        "host": "box",
        "port": 50055,
        "pid": 4243,
        "status": "active",
        "started_at": NOW - timedelta(minutes=5),
        "last_heartbeat": NOW,
    }
    fields.update(overrides)
    return CoordinatorRecord(**fields)  # type: ignore[arg-type]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    return proc.pid


def set_mtime(path: Path, when: datetime) -> None:
    ts = when.timestamp()
    os.utime(path, (ts, ts))


def valid_worker_json(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "id": "w9",
        "host": "box",
        "pid": 99,
        "labels": {},
        "max_active_runs": 1,
        "active_tasks": 0,
        "status": "active",
        "started_at": "2026-01-02T03:04:05Z",
        "last_heartbeat": "2026-01-02T03:04:05.123456789+01:00",
    }
    data.update(overrides)
    return data


def reasons(result: registry.ScanResult) -> dict[str, str]:
    return {s.path.name: s.reason for s in result.skipped}


@pytest.fixture(autouse=True)
def fresh_warning_memory():
    registry._warned.clear()
    yield
    registry._warned.clear()


@pytest.fixture
def not_writable_root(tmp_path: Path) -> Path:
    """A registry root nothing can be created under, for root and non-root alike."""
    if os.geteuid() == 0:
        # chmod does not stop root; a regular file in place of the directory stops anyone.
        root = tmp_path / "registry"
        root.write_text("not a directory\n")
        yield root
        return
    root = tmp_path / "registry"
    root.mkdir()
    root.chmod(0o500)
    try:
        yield root
    finally:
        root.chmod(0o700)


# --- round trip and names ----------------------------------------------------------------


def test_worker_record_round_trips(tmp_path: Path):
    record = make_worker()
    path = write_record(tmp_path, record)

    assert path == tmp_path / "worker" / "w1-box-4242.json"
    result = scan(tmp_path, "worker")
    assert result.skipped == []
    [entry] = result.entries
    assert entry.record == record
    assert entry.path == path
    assert entry.mtime.tzinfo is not None
    assert abs(entry.mtime - datetime.now(UTC)) < timedelta(minutes=1)


def test_coordinator_record_round_trips(tmp_path: Path):
    record = make_coordinator()
    path = write_record(tmp_path, record)

    assert path == tmp_path / "coordinator" / "box_50055-box-50055.json"
    [entry] = scan(tmp_path, "coordinator").entries
    assert entry.record == record
    assert scan(tmp_path, "worker").entries == []


def test_file_holds_exactly_the_spec_keys_with_utc_times(tmp_path: Path):
    offset = datetime(2026, 1, 2, 7, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    path = write_record(tmp_path, make_worker(started_at=offset))
    data = json.loads(path.read_text())

    assert list(data) == [
        "id", "host", "pid", "labels", "max_active_runs", "active_tasks", "status",
        "started_at", "last_heartbeat",
    ]  # fmt: skip
    assert data["started_at"] == "2026-01-02T05:04:05.000000Z"
    assert data["last_heartbeat"] == "2026-01-02T03:04:05.000006Z"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    coordinator = json.loads(write_record(tmp_path, make_coordinator()).read_text())
    assert list(coordinator) == [
        "id", "host", "port", "pid", "status", "started_at", "last_heartbeat",
    ]  # fmt: skip


def test_file_names_are_sanitised():
    worker = make_worker(id="gpu box@1", host="host name", pid=42)
    assert worker_file_name(worker) == "gpu_box_1-host_name-42.json"
    coordinator = make_coordinator(id="../etc/passwd", host="h/ost:x", port=7)
    assert coordinator_file_name(coordinator) == "_._etc_passwd-h_ost_x-7.json"
    assert worker_file_name(make_worker(id="ünï", host="")) == "_n_-_-4242.json"


def test_long_name_parts_are_truncated_without_colliding():
    first = worker_file_name(make_worker(id="a" * 300 + "1"))
    second = worker_file_name(make_worker(id="a" * 300 + "2"))

    assert first != second
    assert len(first) < 200
    assert len(first.split("-")[0]) == registry.MAX_NAME_PART


def test_sanitised_names_are_written_inside_the_kind_dir(tmp_path: Path):
    path = write_record(tmp_path, make_worker(id="../../escape", host="a b"))

    assert path.parent == tmp_path / "worker"
    assert scan(tmp_path, "worker").entries[0].record.id == "../../escape"


def test_write_rejects_naive_times(tmp_path: Path):
    with pytest.raises(RegistryError, match="'last_heartbeat' must be timezone-aware"):
        write_record(tmp_path, make_worker(last_heartbeat=datetime(2026, 1, 1)))
    assert not (tmp_path / "worker").exists()


def test_write_rejects_records_it_would_not_read_back(tmp_path: Path):
    with pytest.raises(RegistryError, match="key 'id' must not be empty"):
        write_record(tmp_path, make_worker(id=""))
    with pytest.raises(RegistryError, match="key 'port' must be between 1 and 65535"):
        write_record(tmp_path, make_coordinator(port=0))


def test_remove_record_deletes_and_tolerates_missing_file(tmp_path: Path):
    record = make_worker()
    path = write_record(tmp_path, record)

    remove_record(tmp_path, record)
    assert not path.exists()
    remove_record(tmp_path, record)
    remove_record(tmp_path / "never-created", record)


# --- atomic writes -----------------------------------------------------------------------


def test_write_leaves_no_temp_files(tmp_path: Path):
    record = make_worker()
    for n in range(5):
        write_record(tmp_path, replace(record, active_tasks=n))

    assert [p.name for p in (tmp_path / "worker").iterdir()] == ["w1-box-4242.json"]
    assert scan(tmp_path, "worker").entries[0].record.active_tasks == 4


def test_concurrent_scans_never_see_a_partial_file(tmp_path: Path):
    # As large as a valid record gets (see controlplane.core.labels for the limits).
    big = {f"label-{i:05d}-" + "k" * 50: "v" * 63 for i in range(64)}
    records = [make_worker(labels=big, active_tasks=0), make_worker(labels=big, active_tasks=1)]
    write_record(tmp_path, records[0])
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            write_record(tmp_path, records[writes % 2])
            writes += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        scans = 0
        while (scans < 200 or len(seen) < 2) and time.monotonic() < deadline:
            result = scan(tmp_path, "worker")
            # The writer's own temp file may be listed (as a temp file); the record never is.
            assert [s for s in result.skipped if not s.path.name.startswith(".")] == []
            assert all(s.reason.startswith("temporary file") for s in result.skipped)
            [entry] = result.entries
            assert entry.record in records
            seen.add(entry.record.active_tasks)
            scans += 1
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert writes > 1
    assert seen == {0, 1}
    assert [p.name for p in (tmp_path / "worker").iterdir()] == ["w1-box-4242.json"]


# --- tolerant scans ----------------------------------------------------------------------


def test_scan_of_missing_dir_is_empty(tmp_path: Path):
    result = scan(tmp_path / "nowhere", "worker")
    assert result.entries == []
    assert result.skipped == []


def test_scan_rejects_unknown_kind(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown service registry kind 'scheduler'"):
        scan(tmp_path, "scheduler")


def test_scan_skips_bad_files_with_reasons(tmp_path: Path):
    good = write_record(tmp_path, make_worker())
    d = tmp_path / "worker"
    full = good.read_text()
    (d / "corrupt.json").write_text('{"id": nope}')
    (d / "half.json").write_text(full[: len(full) // 2])
    (d / "empty.json").write_text("")
    (d / "foreign.json").write_text('{"hello": 1}')
    (d / "list.json").write_text("[1, 2]")
    (d / "notes.txt").write_text("hi")
    (d / "old.json.gc.1.2").write_text(full)
    (d / ".w1-box-4242.json.abc.tmp").write_text(full[:10])
    (d / "dir.json").mkdir()
    (d / "binary.json").write_bytes(b"\xff\xfe{}")
    (d / "nopid.json").write_text(
        json.dumps({k: v for k, v in valid_worker_json().items() if k != "pid"})
    )

    result = scan(tmp_path, "worker")

    assert [e.path for e in result.entries] == [good]
    got = reasons(result)
    assert got["corrupt.json"] == "invalid JSON at line 1 column 8: Expecting value"
    assert got["half.json"].startswith("invalid JSON at line ")
    assert got["empty.json"] == "empty file"
    assert got["foreign.json"].startswith("missing keys 'id', 'host', 'pid'")
    assert got["list.json"] == "expected a JSON object, got list"
    assert got["notes.txt"] == "not a .json file"
    assert got["old.json.gc.1.2"] == "not a .json file"
    assert got[".w1-box-4242.json.abc.tmp"].startswith("temporary file")
    assert got["dir.json"] == "is a directory, not a file"
    assert got["binary.json"].startswith("not UTF-8 text")
    assert got["nopid.json"] == "missing key 'pid'"
    assert len(result.skipped) == 11


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"id": ""}, "key 'id' must not be empty"),
        ({"id": 7}, "key 'id' must be a string, got int"),
        ({"pid": "42"}, "key 'pid' must be an integer, got str"),
        ({"pid": True}, "key 'pid' must be an integer, got bool"),
        ({"pid": 1.5}, "key 'pid' must be an integer, got float"),
        ({"pid": 0}, "key 'pid' must be >= 1, got 0"),
        ({"labels": ["a"]}, "key 'labels' must be an object, got list"),
        ({"labels": {"a": 1}}, "key 'labels' label 'a' must be a string, got int"),
        ({"active_tasks": None}, "key 'active_tasks' must be an integer, got null"),
        ({"status": ""}, "key 'status' must not be empty"),
        ({"started_at": "2026-01-02"}, "key 'started_at' is not an RFC 3339 time: '2026-01-02'"),
        (
            {"last_heartbeat": "2026-01-02T03:04:05"},
            "key 'last_heartbeat' is not an RFC 3339 time: '2026-01-02T03:04:05'",
        ),
        ({"last_heartbeat": "2026-13-02T03:04:05Z"}, "key 'last_heartbeat' is not an RFC 3339"),
    ],
)
def test_scan_skips_wrongly_typed_records(tmp_path: Path, overrides: dict, reason: str):
    d = tmp_path / "worker"
    d.mkdir()
    (d / "bad.json").write_text(json.dumps(valid_worker_json(**overrides)))

    result = scan(tmp_path, "worker")

    assert result.entries == []
    [skipped] = result.skipped
    assert skipped.reason.startswith(reason)


def test_scan_accepts_unknown_extra_keys_and_foreign_time_formats(tmp_path: Path):
    d = tmp_path / "worker"
    d.mkdir()
    (d / "newer.json").write_text(json.dumps(valid_worker_json(zone="eu-1", version=3)))

    [entry] = scan(tmp_path, "worker").entries

    assert entry.record.id == "w9"
    assert entry.record.started_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert entry.record.last_heartbeat == datetime(2026, 1, 2, 2, 4, 5, 123456, tzinfo=UTC)
    assert entry.record.last_heartbeat.tzinfo == UTC


def test_worker_file_in_coordinator_dir_is_skipped(tmp_path: Path):
    d = tmp_path / "coordinator"
    d.mkdir()
    (d / "misplaced.json").write_text(json.dumps(valid_worker_json()))

    [skipped] = scan(tmp_path, "coordinator").skipped
    assert skipped.reason == "missing key 'port'"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_scan_skips_unreadable_file(tmp_path: Path):
    path = write_record(tmp_path, make_worker())
    path.chmod(0)
    try:
        [skipped] = scan(tmp_path, "worker").skipped
    finally:
        path.chmod(0o644)
    assert skipped.reason == "cannot read: Permission denied"


def test_scan_warns_once_per_file_and_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    d = tmp_path / "worker"
    d.mkdir()
    bad = d / "bad.json"
    bad.write_text("{")
    caplog.set_level(logging.WARNING, logger="controlplane.core.registry")

    for _ in range(3):
        scan(tmp_path, "worker")
    bad.write_text('{"hello": 1}')
    scan(tmp_path, "worker")
    scan(tmp_path, "worker")

    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(f"skipping service registry file {bad}: invalid JSON")
    assert "missing keys" in messages[1]


def test_scan_does_not_warn_about_temp_files(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    d = tmp_path / "worker"
    d.mkdir()
    (d / ".x.json.123.tmp").write_text("{")
    caplog.set_level(logging.WARNING, logger="controlplane.core.registry")

    assert len(scan(tmp_path, "worker").skipped) == 1
    assert caplog.records == []


# --- cleanup -----------------------------------------------------------------------------


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(0)
    assert not pid_alive(-1)


def test_cleanup_removes_stale_and_dead_files_and_keeps_live_ones(tmp_path: Path):
    old = NOW - timedelta(seconds=60)
    gone = dead_pid()

    def written(record: WorkerRecord | CoordinatorRecord, *, mtime: datetime = NOW) -> Path:
        path = write_record(tmp_path, record)
        set_mtime(path, mtime)
        return path

    stale = written(make_worker(id="stale", host="other", last_heartbeat=old), mtime=old)
    stale_coord = written(make_coordinator(id="sc", last_heartbeat=old), mtime=old)
    touched = written(make_worker(id="touched", host="other", last_heartbeat=old))
    dead_here = written(make_worker(id="dead", host="me", pid=gone))
    dead_elsewhere = written(make_worker(id="dead-there", host="other", pid=gone))
    live_here = written(make_worker(id="live", host="me", pid=os.getpid()))
    fresh_beat = written(make_worker(id="beat", host="other"), mtime=old)

    removed = cleanup(tmp_path, now=NOW, stale_after=30, this_host="me")

    assert sorted(removed) == sorted([stale, stale_coord, dead_here])
    for path in (touched, dead_elsewhere, live_here, fresh_beat):
        assert path.exists(), path
    assert not stale.exists()
    assert not dead_here.exists()


def test_cleanup_uses_the_injected_pid_check(tmp_path: Path):
    path = write_record(tmp_path, make_worker(host="me", pid=77))
    set_mtime(path, NOW)
    asked: list[int] = []

    def alive(pid: int) -> bool:
        asked.append(pid)
        return True

    assert cleanup(tmp_path, now=NOW, stale_after=30, this_host="me", pid_alive=alive) == []
    assert asked == [77]


def test_cleanup_ignores_far_future_heartbeats(tmp_path: Path):
    old = NOW - timedelta(seconds=60)
    path = write_record(tmp_path, make_worker(last_heartbeat=NOW + timedelta(days=1)))
    set_mtime(path, old)

    assert cleanup(tmp_path, now=NOW, stale_after=30, this_host="me") == [path]


def test_cleanup_removes_old_temp_and_corrupt_files_only(tmp_path: Path):
    old = NOW - timedelta(seconds=60)
    d = tmp_path / "worker"
    d.mkdir()
    files = {
        "old_tmp": d / ".a.json.1.tmp",
        "new_tmp": d / ".b.json.2.tmp",
        "old_corrupt": d / "c.json",
        "new_corrupt": d / "d.json",
        "old_foreign_json": d / "e.json",
        "old_text": d / "notes.txt",
        "old_hidden": d / ".gitkeep",
    }
    for name, path in files.items():
        path.write_text('{"hello": 1}' if "foreign" in name else "{")
        set_mtime(path, NOW if name.startswith("new") else old)
    (d / "dir.json").mkdir()
    set_mtime(d / "dir.json", old)

    removed = cleanup(tmp_path, now=NOW, stale_after=30, this_host="me")

    expected = [files["old_tmp"], files["old_corrupt"], files["old_foreign_json"]]
    assert sorted(removed) == sorted(expected)
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [".b.json.2.tmp", "d.json", "notes.txt", ".gitkeep", "dir.json"]
    )


def test_cleanup_of_missing_root_is_empty(tmp_path: Path):
    assert cleanup(tmp_path / "nowhere", now=NOW, stale_after=30, this_host="me") == []


# --- Registrant --------------------------------------------------------------------------


class Counter:
    """A record_fn whose active_tasks counts the calls."""

    def __init__(self, record: WorkerRecord | CoordinatorRecord) -> None:
        self.record = record
        self.calls = 0
        self.fail_with: Exception | None = None

    def __call__(self) -> WorkerRecord | CoordinatorRecord:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls += 1
        if isinstance(self.record, WorkerRecord):
            return replace(self.record, active_tasks=self.calls, last_heartbeat=datetime.now(UTC))
        return replace(self.record, last_heartbeat=datetime.now(UTC))


def read_record(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def wait_for(condition: object, *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_registrant_start_refresh_stop(tmp_path: Path):
    record_fn = Counter(make_worker())
    registrant = Registrant(tmp_path, record_fn, interval=3600)
    assert not registrant.healthy

    registrant.start()
    try:
        assert registrant.healthy
        assert registrant.path == tmp_path / "worker" / "w1-box-4242.json"
        assert read_record(registrant.path)["active_tasks"] == 1
        registrant.refresh_now()
        assert read_record(registrant.path)["active_tasks"] == 2
    finally:
        registrant.stop()

    assert not registrant.path.exists()
    assert not registrant.healthy
    assert not any(t.name.startswith("registry-") for t in threading.enumerate())
    registrant.stop()  # twice is fine
    registrant.refresh_now()  # after stop: does not bring the file back
    assert not registrant.path.exists()


def test_registrant_refreshes_in_the_background(tmp_path: Path):
    record_fn = Counter(make_coordinator())
    registrant = Registrant(tmp_path, record_fn, interval=0.05)
    registrant.start()
    try:
        assert wait_for(lambda: record_fn.calls >= 4)
        [entry] = scan(tmp_path, "coordinator").entries
        assert entry.record.id == "box@50055"
    finally:
        registrant.stop()
    assert scan(tmp_path, "coordinator").entries == []


def test_registrant_recreates_deleted_file_and_dir(tmp_path: Path):
    root = tmp_path / "registry"
    registrant = Registrant(root, Counter(make_worker()), interval=3600)
    registrant.start()
    try:
        registrant.path.unlink()
        registrant.refresh_now()
        assert registrant.path.exists()

        shutil.rmtree(root)
        registrant.refresh_now()
        assert registrant.healthy
        assert read_record(registrant.path)["active_tasks"] == 3
    finally:
        registrant.stop()


def test_registrant_start_twice_is_an_error(tmp_path: Path):
    registrant = Registrant(tmp_path, Counter(make_worker()), interval=3600)
    registrant.start()
    try:
        with pytest.raises(RuntimeError):
            registrant.start()
    finally:
        registrant.stop()


def test_unwritable_registry_dir_raises_registry_error_naming_the_path(not_writable_root: Path):
    registrant = Registrant(not_writable_root, Counter(make_worker()), interval=3600)

    with pytest.raises(RegistryError) as caught:
        registrant.start()

    message = str(caught.value)
    assert str(not_writable_root / "worker") in message
    assert "\n" not in message
    assert message.endswith(("Permission denied", "Not a directory"))
    assert not registrant.healthy
    with pytest.raises(RegistryError, match=str(not_writable_root)):
        write_record(not_writable_root, make_coordinator())


def test_refresh_failures_are_logged_once_and_recover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    record_fn = Counter(make_worker())
    registrant = Registrant(tmp_path, record_fn, interval=3600)
    registrant.start()
    caplog.set_level(logging.INFO, logger="controlplane.core.registry")
    try:
        record_fn.fail_with = OSError("disk on fire")
        registrant.refresh_now()
        registrant.refresh_now()
        assert not registrant.healthy
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "OSError: disk on fire" in warnings[0].getMessage()

        record_fn.fail_with = None
        registrant.refresh_now()
        assert registrant.healthy
        assert any("written again" in r.getMessage() for r in caplog.records)
    finally:
        registrant.stop()


def test_refresh_into_a_blocked_dir_is_logged_not_raised(tmp_path: Path):
    root = tmp_path / "registry"
    registrant = Registrant(root, Counter(make_worker()), interval=3600)
    registrant.start()
    try:
        shutil.rmtree(root)
        root.write_text("now a file\n")
        registrant.refresh_now()
        assert not registrant.healthy
        root.unlink()
        registrant.refresh_now()
        assert registrant.healthy
    finally:
        registrant.stop()


def test_permission_denied_message_names_the_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Root ignores chmod, so the non-root failure is simulated where the OS would raise it.
    def refuse(**kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(registry.tempfile, "mkstemp", refuse)

    with pytest.raises(RegistryError) as caught:
        write_record(tmp_path, make_worker())

    assert str(caught.value) == (
        f"service registry dir {tmp_path / 'worker'} is not writable: Permission denied"
    )
