"""Plain SQL for the coordinator's per-run hot paths: claim, poll and report application.

Profiling showed about 70% of the coordinator's CPU per run spent in Django's ORM machinery
(building statements, cloning querysets, model instances) around statements that take 10%
to execute (docs/benchmarks.md, "Issue 11 baseline"). The hot paths therefore write their
few statements here by hand, one statement for many rows, with values adapted by the
models' own fields so that what is stored is exactly what the ORM would store. Statements
use `%s` placeholders and portable SQL (RETURNING needs SQLite >= 3.35, or PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import Model

Row = tuple[Any, ...]


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def marks(n: int) -> str:
    """`%s, %s, ...`: `n` placeholders."""
    return ", ".join(["%s"] * n)


def when_datetime(value: datetime | None) -> Any:
    """A datetime as the ORM would send it (SQLite: naive UTC text; PostgreSQL: as is)."""
    return connection.ops.adapt_datetimefield_value(value)


def read_datetime(value: Any) -> datetime:
    """A datetime column's value as the ORM would return it: aware, in UTC.

    SQLite gives naive UTC (as a datetime, Django's connection converts the declared type, or
    as text); PostgreSQL an aware datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def as_json(model: type[Model], field: str, value: Any) -> Any:
    """A value for a JSONField column, adapted by that field."""
    return model._meta.get_field(field).get_db_prep_save(value, connection)


def fetch(sql: str, params: Sequence[Any] = ()) -> list[Row]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def execute(sql: str, params: Sequence[Any] = ()) -> int:
    """Run one statement; returns the rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def execute_many(sql: str, rows: Sequence[Row]) -> None:
    if not rows:
        return
    with connection.cursor() as cursor:
        if len(rows) == 1:
            cursor.execute(sql, rows[0])
        else:
            cursor.executemany(sql, rows)


def case(key: str, pairs: Iterable[tuple[Any, Any]], params: list[Any]) -> str:
    """`CASE key WHEN %s THEN %s ... END`, appending its parameters to `params`."""
    parts = []
    for k, v in pairs:
        parts.append("WHEN %s THEN %s")
        params.extend((k, v))
    return f"CASE {key} {' '.join(parts)} END"
