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

import threading

from django.db.backends.sqlite3 import base

_WRITE_LOCK = threading.Lock()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

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
