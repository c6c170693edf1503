"""Opt-in SQL statement counter for benchmarks, loaded by Python itself, not by the product.

A benchmark puts this directory on a child's PYTHONPATH and sets DAGU_BENCH_SQL_COUNT_DIR;
Python imports `sitecustomize` at start-up, so the coordinator counts every statement that
goes through Django's cursors (execute and executemany each count once; BEGIN/COMMIT issued
by the driver itself do not) without a line of product code. A daemon thread writes the
running total to `<dir>/<pid>.sql` every 100 ms; the benchmark reads it before and after its
window. Without the variable this file does nothing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

_DIR = os.environ.get("DAGU_BENCH_SQL_COUNT_DIR", "")


def _install(out: Path) -> None:
    from django.db.backends.signals import connection_created

    total = [0]
    lock = threading.Lock()

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        with lock:
            total[0] += 1
        return execute(sql, params, many, context)

    def on_connect(sender: Any, connection: Any, **kwargs: Any) -> None:
        # The wrapper list belongs to the thread's connection wrapper and outlives reconnects.
        if count not in connection.execute_wrappers:
            connection.execute_wrappers.append(count)

    def publish() -> None:
        while True:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(str(total[0]))
            tmp.replace(out)
            time.sleep(0.1)

    connection_created.connect(on_connect, weak=False)
    threading.Thread(target=publish, name="bench-sql-count", daemon=True).start()


if _DIR:
    _install(Path(_DIR) / f"{os.getpid()}.sql")
