"""SQLite, with this process's write transactions queued on a lock.

SQLite has one write lock per database. A thread that finds it taken sleeps in SQLite's busy
handler (1, 2, 5, 10 ... 100 ms), usually well past the moment the lock frees, so under load
the lock sits idle while writers sleep. Threads of one process (the coordinator's RPC
handlers, dispatcher and housekeeping) therefore queue on a Python lock taken before
`BEGIN IMMEDIATE` and released at commit or rollback; other processes still meet at
SQLite's own lock. Profiling showed the coordinator's report handlers spending two thirds of
their time in that busy handler before this (docs/benchmarks.md).

Across processes (the coordinator and a `manage.py start`, a web process, a benchmark) the
same sleeps made each side wait up to 10 ms for a lock held for one: `BEGIN IMMEDIATE`
therefore polls SQLite's lock itself, in steps of 0.1 to 2 ms, with SQLite's busy handler
switched off for that one statement; the busy timeout still bounds the wait.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from django.db import OperationalError, connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.sqlite3 import base

from controlplane.core.config import ConfigError

_WRITE_LOCK = threading.Lock()
# How `BEGIN IMMEDIATE` polls a write lock another process holds (seconds).
_BEGIN_FIRST_PAUSE = 0.0001
_BEGIN_MAX_PAUSE = 0.002

# What SQLite says about a file it cannot use at all; every command would otherwise end in
# the same long traceback from deep inside the connection set-up.
_DAMAGE = {
    sqlite3.SQLITE_NOTADB: "is not an SQLite database (or its header is damaged)",
    sqlite3.SQLITE_CORRUPT: "is damaged (database disk image is malformed)",
}


def damaged_database(exc: BaseException, path: object) -> ConfigError | None:
    """The one-line error for an SQLite file that is corrupt or not SQLite, else None."""
    cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    problem = _DAMAGE.get(code & 0xFF) if isinstance(code, int) else None
    if problem is None:
        return None
    return ConfigError(
        "database",
        str(path),
        f"the file {problem}; restore it from a backup, or move it aside and run "
        "`python manage.py migrate` to start empty",
    )


def checkpoint(db: BaseDatabaseWrapper = connection) -> None:
    """Copy what the write-ahead log holds into the database file, on this thread's
    connection (the coordinator's checkpoint loop; a no-op on other databases).

    PASSIVE: it neither waits for nor blocks a writer. Otherwise the commit that takes the
    log over `wal_autocheckpoint` does the copy (and its fsync), and under load that was
    one run creation in a hundred taking 6-44 ms inside `create_run`.
    """
    if db.vendor != "sqlite":
        return
    with db.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False
    _busy_timeout_ms = 0
    _busy_timeout_of: sqlite3.Connection | None = None

    def get_new_connection(self, conn_params: dict[str, Any]) -> sqlite3.Connection:
        try:
            return super().get_new_connection(conn_params)
        except sqlite3.DatabaseError as exc:
            damaged = damaged_database(exc, self.settings_dict["NAME"])
            if damaged is None:
                raise
            raise damaged from None

    def _start_transaction_under_autocommit(self) -> None:
        _WRITE_LOCK.acquire()
        self._holds_write_lock = True
        try:
            self._begin()
        except BaseException:
            self._release_write_lock()
            raise

    def _begin(self) -> None:
        raw = self.connection
        if self.transaction_mode is None:
            super()._start_transaction_under_autocommit()
            return
        if self._busy_timeout_of is not raw:  # read once per connection
            self._busy_timeout_ms = int(raw.execute("PRAGMA busy_timeout").fetchone()[0])
            self._busy_timeout_of = raw
        timeout_ms = self._busy_timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000
        pause = _BEGIN_FIRST_PAUSE
        raw.execute("PRAGMA busy_timeout = 0")
        try:
            try:
                super()._start_transaction_under_autocommit()  # as Django does it
                return
            except OperationalError as exc:
                if "locked" not in str(exc):
                    raise
            # Retries go straight to sqlite3: a refused BEGIN is not a statement worth
            # logging or counting, and the first one was.
            while True:
                time.sleep(pause)
                pause = min(pause * 2, _BEGIN_MAX_PAUSE)
                try:
                    raw.execute(f"BEGIN {self.transaction_mode}")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise OperationalError(*exc.args) from exc
        finally:
            raw.execute(f"PRAGMA busy_timeout = {timeout_ms}")

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            _WRITE_LOCK.release()

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._release_write_lock()
