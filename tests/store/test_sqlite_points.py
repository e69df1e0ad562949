"""Metric points go into SQLite as multi-row INSERTs: every point lands, in a handful of statements."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cairn.store._sql import sqlite_points
from cairn.store._sql.store import SqlTrackingStore
from cairn.store.base import MetricPoint


@pytest.mark.parametrize("count", [1, 2, 2047, 2048, 5000])
def test_every_point_of_any_batch_size_is_stored(store: SqlTrackingStore, count: int) -> None:
    run_id = store.create_run("0", user_id="u", start_time=0, tags=[], run_name="r").info.run_id
    values = [math.nan if i % 7 == 3 else i / 4 for i in range(count)]
    store.log_metric_points([MetricPoint(run_id, "loss", v, 1000 + i, i) for i, v in enumerate(values)])
    history = store.get_metric_history(run_id, "loss")
    assert [(m.step, m.timestamp) for m in history] == [(i, 1000 + i) for i in range(count)]
    for stored, expected in zip((m.value for m in history), values, strict=True):
        assert (math.isnan(stored) and math.isnan(expected)) or stored == expected


def test_a_batch_takes_one_statement_per_binary_digit() -> None:
    statements: list[tuple[str, int]] = []

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        statements.append((sql, len(params)))

    rows = [("r", "k", float(i), False, i, i) for i in range(2048 + 1024 + 5)]
    sqlite_points.insert_points(execute, rows)
    assert [n // 6 for _, n in statements] == [2048, 1024, 4, 1]
    assert all(sql.count("(?,?,?,?,?,?,0)") == n // 6 for sql, n in statements)
    sqlite_points.insert_points(execute, [])
    assert len(statements) == 4
