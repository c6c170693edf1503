"""The SQLite backend's BEGIN IMMEDIATE against a write lock held by another process, and
the checkpoint that copies the write-ahead log into the database file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from django.db import OperationalError
from django.db.utils import ConnectionHandler

from controlplane.sqlite.base import _WRITE_LOCK, DatabaseWrapper, checkpoint


@pytest.fixture(autouse=True)
def _own_database_files(django_db_blocker):
    # These tests open their own SQLite files, not the test database.
    with django_db_blocker.unblock():
        yield


def wrapper(path: Path, *, busy_ms: int) -> DatabaseWrapper:
    handler = ConnectionHandler(
        {
            "default": {
                "ENGINE": "controlplane.sqlite",
                "NAME": str(path),
                "OPTIONS": {
                    "transaction_mode": "IMMEDIATE",
                    "init_command": f"PRAGMA journal_mode=WAL;PRAGMA busy_timeout={busy_ms};",
                },
            }
        }
    )
    db = handler["default"]
    assert isinstance(db, DatabaseWrapper)
    db.ensure_connection()
    return db


def other_process_holding_the_lock(path: Path) -> sqlite3.Connection:
    # Another connection stands for another process: it never takes our Python lock.
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_it_begins_once_another_process_releases_the_write_lock(tmp_path: Path):
    path = tmp_path / "db.sqlite3"
    db = wrapper(path, busy_ms=30_000)
    holder = other_process_holding_the_lock(path)
    release = threading.Timer(0.05, holder.execute, ["COMMIT"])
    release.start()
    try:
        db._start_transaction_under_autocommit()
        assert db.connection.in_transaction
        db._commit()
        # The busy timeout the other statements rely on is back.
        assert db.connection.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    finally:
        release.join()
        holder.close()
        db.close()


def test_it_gives_up_after_the_busy_timeout_and_frees_the_writer_queue(tmp_path: Path):
    path = tmp_path / "db.sqlite3"
    db = wrapper(path, busy_ms=100)
    holder = other_process_holding_the_lock(path)
    try:
        with pytest.raises(OperationalError, match="locked"):
            db._start_transaction_under_autocommit()
        assert _WRITE_LOCK.acquire(blocking=False)  # released on failure
        _WRITE_LOCK.release()
        assert db.connection.execute("PRAGMA busy_timeout").fetchone()[0] == 100
    finally:
        holder.execute("COMMIT")
        holder.close()
        db.close()


def test_checkpoint_copies_the_log_into_the_database_file(tmp_path):
    """What the coordinator's checkpoint loop does, so commits need not (settings.py)."""
    db = wrapper(tmp_path / "db.sqlite3", busy_ms=1000)
    with db.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x TEXT)")
        cursor.executemany("INSERT INTO t VALUES (%s)", [("x" * 1000,)] * 200)
    before = (tmp_path / "db.sqlite3").stat().st_size
    checkpoint(db)
    assert (tmp_path / "db.sqlite3").stat().st_size > before + 100_000
    with db.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        busy, log, copied = cursor.fetchone()
    assert busy == 0 and log == copied  # nothing left to copy
    db.close()
