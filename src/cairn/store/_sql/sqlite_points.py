"""Metric points into SQLite with multi-row ``INSERT`` statements.

Python's ``sqlite3`` releases the GIL around every statement step, and ``executemany`` steps once per
row: a background writer inserting a batch handed the GIL back and forth with the training thread once
per point, and each hand-off costs the training thread CPU. One statement of up to 2,048 rows steps
once, so a batch of any size takes at most a dozen steps (its size in binary: 2,048, 1,024, ..., 1 rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

__all__ = ["insert_points"]

_INSERT = "INSERT INTO metrics (run_uuid, key, value, is_nan, step, timestamp, superseded) VALUES "
_ROW = "(?,?,?,?,?,?,0)"
_MAX_ROWS = 2048  # x 6 variables = 12,288, below SQLite's limit of 32,766
_STATEMENTS: dict[int, str] = {}


def _statement(rows: int) -> str:
    sql = _STATEMENTS.get(rows)
    if sql is None:
        sql = _STATEMENTS[rows] = _INSERT + ",".join([_ROW] * rows)
    return sql


def insert_points(execute: Callable[[str, tuple[Any, ...]], Any], rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``(run_uuid, key, value or None for NaN, is_nan, step, timestamp)`` rows, ``superseded`` 0.

    ``execute(sql, params)`` runs one statement with positional parameters (e.g. SQLAlchemy's
    ``Connection.exec_driver_sql``), inside the caller's transaction.
    """
    start, total = 0, len(rows)
    size = _MAX_ROWS
    while start < total:
        while size > total - start:
            size //= 2
        chunk = rows[start : start + size]
        execute(_statement(size), tuple(chain.from_iterable(chunk)))
        start += size
