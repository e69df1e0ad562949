"""Metric points at the SQL level: inserting them and keeping ``latest_metrics`` in step, on one connection.

The store's methods open the transaction and check the run; these functions write inside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from cairn.store._sql.schema import latest_metrics, metrics
from cairn.store._sql.sqlite_points import insert_points
from cairn.store.base import MetricPoint, StoredMetricPoint

_PG_COPY_POINTS = "COPY metrics (run_uuid, key, value, is_nan, step, timestamp) FROM STDIN (FORMAT BINARY)"
_PG_COPY_TYPES = ("varchar", "varchar", "float8", "bool", "int8", "int8")
#: Batches of up to this many points go in one statement with the latest-value upsert; larger ones by COPY.
_PG_COPY_FROM = 200
_PG_ARRAYS = "unnest(%s::varchar[], %s::varchar[], %s::float8[], %s::bool[], %s::int8[], %s::int8[])"
_PG_UPSERT_LATEST = (
    "INSERT INTO latest_metrics AS old (run_uuid, key, value, is_nan, step, timestamp) "
    f"SELECT * FROM {_PG_ARRAYS} "
    "ON CONFLICT (run_uuid, key) DO UPDATE SET value = excluded.value, is_nan = excluded.is_nan, "
    "step = excluded.step, timestamp = excluded.timestamp "
    "WHERE excluded.step > old.step OR (excluded.step = old.step AND excluded.timestamp >= old.timestamp)"
)
_PG_INSERT_POINTS_AND_LATEST = (
    "WITH inserted AS (INSERT INTO metrics (run_uuid, key, value, is_nan, step, timestamp) "
    f"SELECT * FROM {_PG_ARRAYS}) {_PG_UPSERT_LATEST}"
)
# The copy path (import_run_data) writes the superseded flag too.
_SQLITE_IMPORT_POINTS = (
    "INSERT INTO metrics (run_uuid, key, value, is_nan, step, timestamp, superseded) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_PG_COPY_IMPORT_POINTS = (
    "COPY metrics (run_uuid, key, value, is_nan, step, timestamp, superseded) FROM STDIN (FORMAT BINARY)"
)
_PG_COPY_IMPORT_TYPES = (*_PG_COPY_TYPES, "bool")


def stored_value(value: float) -> float | None:
    return None if math.isnan(value) else value


def loaded_value(value: float | None, is_nan: bool) -> float:
    return math.nan if is_nan or value is None else float(value)


def latest_upsert(insert: Callable[[sa.Table], Any]) -> Any:
    """The upsert that moves a (run, key)'s latest value forward, never backward (``insert``: the dialect's)."""
    statement = insert(latest_metrics)
    new, old = statement.excluded, latest_metrics.c
    return statement.on_conflict_do_update(
        index_elements=[old.run_uuid, old.key],
        set_={"value": new.value, "is_nan": new.is_nan, "step": new.step, "timestamp": new.timestamp},
        where=sa.or_(new.step > old.step, sa.and_(new.step == old.step, new.timestamp >= old.timestamp)),
    )


def write_points(conn: sa.Connection, dialect: str, latest: Any, points: Sequence[MetricPoint]) -> None:
    """Insert the points and move each (run, key)'s latest value forward (never backward) with ``latest``
    (the statement :func:`latest_upsert` made).

    The hot path of the batcher: SQLite gets multi-row ``INSERT`` statements of plain tuples (see
    :mod:`.sqlite_points`); PostgreSQL one statement of arrays (points and latest values in one round
    trip) for small batches, a ``COPY`` and the array upsert for large ones. Points are indexed by
    position (run_id, key, value, timestamp, step) for speed.
    """
    # (run_uuid, key, value, is_nan, step, timestamp); NaN is stored as NULL plus the flag
    rows = [
        (p[0], p[1], None, True, p[4], p[3]) if p[2] != p[2] else (p[0], p[1], p[2], False, p[4], p[3]) for p in points
    ]
    newest: dict[tuple[str, str], MetricPoint] = {}
    get = newest.get
    for point in points:
        slot = (point[0], point[1])
        best = get(slot)
        if best is None or point[4] > best[4] or (point[4] == best[4] and point[3] >= best[3]):
            newest[slot] = point
    if dialect == "sqlite":
        insert_points(conn.exec_driver_sql, rows)
        conn.execute(latest, [_latest_row(p) for p in newest.values()])
        return
    # in (run, key) order: concurrent transactions lock the rows they update in one order (no deadlock)
    latest_rows = [(p[0], p[1], stored_value(p[2]), p[2] != p[2], p[4], p[3]) for _, p in sorted(newest.items())]
    latest_columns = _columns(latest_rows)
    if len(rows) <= _PG_COPY_FROM:
        conn.exec_driver_sql(_PG_INSERT_POINTS_AND_LATEST, (*_columns(rows), *latest_columns))
    else:
        _copy_points(conn, rows)
        conn.exec_driver_sql(_PG_UPSERT_LATEST, latest_columns)


def _latest_row(p: MetricPoint) -> dict[str, Any]:
    return {
        "run_uuid": p.run_id,
        "key": p.key,
        "value": stored_value(p.value),
        "is_nan": p.value != p.value,
        "step": p.step,
        "timestamp": p.timestamp,
    }


def _columns(rows: list[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """Rows of ``(run_uuid, key, value, is_nan, step, timestamp)`` as six lists (PostgreSQL arrays)."""
    return tuple(list(column) for column in zip(*rows, strict=True))


def _copy_points(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
    """``COPY`` rows of ``(run_uuid, key, value or None, is_nan, step, timestamp)`` into ``metrics``."""
    driver_connection: Any = conn.connection.driver_connection  # psycopg, inside this transaction
    with (
        driver_connection.cursor() as cursor,
        cursor.copy(_PG_COPY_POINTS) as copy,
    ):
        copy.set_types(_PG_COPY_TYPES)
        for row in rows:
            copy.write_row(row)


def rebuild_latest(conn: sa.Connection, run_id: str) -> None:
    """Recompute a run's latest value per key from its points that are not superseded."""
    conn.execute(latest_metrics.delete().where(latest_metrics.c.run_uuid == run_id))
    ranked = (
        sa.select(
            metrics.c.run_uuid,
            metrics.c.key,
            metrics.c.value,
            metrics.c.is_nan,
            metrics.c.step,
            metrics.c.timestamp,
            sa.func.row_number()
            .over(
                partition_by=metrics.c.key,
                order_by=(metrics.c.step.desc(), metrics.c.timestamp.desc(), metrics.c.id.desc()),
            )
            .label("rank"),
        )
        .where(metrics.c.run_uuid == run_id, metrics.c.superseded == sa.false())
        .subquery()
    )
    newest = sa.select(
        ranked.c.run_uuid, ranked.c.key, ranked.c.value, ranked.c.is_nan, ranked.c.step, ranked.c.timestamp
    ).where(ranked.c.rank == 1)
    conn.execute(
        latest_metrics.insert().from_select(["run_uuid", "key", "value", "is_nan", "step", "timestamp"], newest)
    )


def insert_copied_points(conn: sa.Connection, dialect: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``(run_uuid, key, value or None, is_nan, step, timestamp, superseded)`` rows in bulk."""
    if dialect == "sqlite":
        conn.exec_driver_sql(_SQLITE_IMPORT_POINTS, rows)
        return
    driver_connection: Any = conn.connection.driver_connection  # psycopg, inside this transaction
    with driver_connection.cursor() as cursor, cursor.copy(_PG_COPY_IMPORT_POINTS) as copy:
        copy.set_types(_PG_COPY_IMPORT_TYPES)
        for row in rows:
            copy.write_row(row)


def supersede_equal(conn: sa.Connection, run_id: str, point: StoredMetricPoint, count: int) -> int:
    """Flag up to ``count`` live points equal to ``point`` as superseded (oldest first); return how many."""
    if count <= 0:
        return 0
    same_value = (
        metrics.c.is_nan == sa.true()
        if math.isnan(point.value)
        else sa.and_(metrics.c.is_nan == sa.false(), metrics.c.value == float(point.value))
    )
    ids = list(
        conn.scalars(
            sa.select(metrics.c.id)
            .where(
                metrics.c.run_uuid == run_id,
                metrics.c.key == point.key,
                metrics.c.step == int(point.step),
                metrics.c.timestamp == int(point.timestamp),
                metrics.c.superseded == sa.false(),
                same_value,
            )
            .order_by(metrics.c.id)
            .limit(count)
        )
    )
    if ids:
        conn.execute(metrics.update().where(metrics.c.id.in_(ids)).values(superseded=True))
    return len(ids)


def advance_latest(conn: sa.Connection, latest: Any, run_id: str, live: Sequence[StoredMetricPoint]) -> None:
    """Move each key's latest value forward to the newest of ``live`` (never backward)."""
    newest: dict[str, StoredMetricPoint] = {}
    for point in live:
        best = newest.get(point.key)
        if best is None or (point.step, point.timestamp) >= (best.step, best.timestamp):
            newest[point.key] = point
    if newest:
        conn.execute(
            latest,
            [
                {
                    "run_uuid": run_id,
                    "key": p.key,
                    "value": stored_value(float(p.value)),
                    "is_nan": math.isnan(p.value),
                    "step": int(p.step),
                    "timestamp": int(p.timestamp),
                }
                for p in newest.values()
            ],
        )
