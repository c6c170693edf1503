"""Opt-in SQL statement counter for benchmarks, loaded by Python itself, not by the product.

A benchmark puts this directory on a child's PYTHONPATH and sets DAGU_BENCH_SQL_COUNT_DIR;
Python imports `sitecustomize` at start-up, so the coordinator counts every statement that
goes through Django's cursors (execute and executemany each count once; BEGIN/COMMIT issued
by the driver itself do not) without a line of product code. A daemon thread writes the
running total (JSON) to `<dir>/<pid>.sql` every 100 ms; the benchmark reads it before and after its
window. With DAGU_BENCH_SQL_SHAPES=1 it also counts statements by shape (verb and first
table, e.g. "UPDATE dags_dagrun"; "executemany" marked): off by default, since classifying
costs the coordinator a little CPU. Without DAGU_BENCH_SQL_COUNT_DIR this file does nothing.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_DIR = os.environ.get("DAGU_BENCH_SQL_COUNT_DIR", "")
_SHAPES = os.environ.get("DAGU_BENCH_SQL_SHAPES", "") == "1"
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)', re.IGNORECASE)


def shape(sql: str, many: bool) -> str:
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    table = _TABLE.search(sql)
    return f"{verb} {table.group(1) if table else ''}".strip() + (" (executemany)" if many else "")


def _install(out: Path) -> None:
    from django.db.backends.signals import connection_created

    total = [0]
    shapes: Counter[str] = Counter()
    known: dict[tuple[str, bool], str] = {}
    lock = threading.Lock()

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        key = ""
        if _SHAPES:
            key = known.get((sql, many)) or known.setdefault((sql, many), shape(sql, many))
        with lock:
            total[0] += 1
            if key:
                shapes[key] += 1
        return execute(sql, params, many, context)

    def on_connect(sender: Any, connection: Any, **kwargs: Any) -> None:
        # The wrapper list belongs to the thread's connection wrapper and outlives reconnects.
        if count not in connection.execute_wrappers:
            connection.execute_wrappers.append(count)

    def publish() -> None:
        while True:
            tmp = out.with_suffix(".tmp")
            with lock:
                text = json.dumps({"total": total[0], "shapes": dict(shapes)})
            tmp.write_text(text)
            tmp.replace(out)
            time.sleep(0.1)

    connection_created.connect(on_connect, weak=False)
    threading.Thread(target=publish, name="bench-sql-count", daemon=True).start()


if _DIR:
    _install(Path(_DIR) / f"{os.getpid()}.sql")
