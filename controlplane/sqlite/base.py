"""SQLite, with this process's write transactions queued on a lock.

SQLite has one write lock per database. A thread that finds it taken sleeps in SQLite's busy
handler (1, 2, 5, 10 ... 100 ms), usually well past the moment the lock frees, so under load
the lock sits idle while writers sleep. Threads of one process (the coordinator's RPC
handlers, dispatcher and housekeeping) therefore queue on a Python lock taken before
`BEGIN IMMEDIATE` and released at commit or rollback; other processes still meet at
SQLite's own lock. Profiling showed the coordinator's report handlers spending two thirds of
their time in that busy handler before this (docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from django.db.backends.sqlite3 import base

from controlplane.core.config import ConfigError

_WRITE_LOCK = threading.Lock()

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


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

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
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

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
