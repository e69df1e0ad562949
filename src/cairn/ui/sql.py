"""Read-only queries the UI runs directly on the SQL store, where the store API has no method for them.

The tracking store contract has no "distinct keys of an experiment", "count matching runs" or
"down-sampled series"; asking it for every run or point and reducing in Python would not meet the
UI's latency targets (10,000 runs, 1,000,000 points). These queries use the store's engine and
schema read-only, reuse its filter compiler, and every caller falls back to the plain store API
when the store is not a :class:`~cairn.store._sql.store.SqlTrackingStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cairn.store.base import TrackingStore
from cairn.tracking.entities import ViewType

if TYPE_CHECKING:
    from cairn.store._sql.engine import Database
    from cairn.ui.series import MetricSeries, XAxis, _Cache

__all__ = ["count_runs", "database_of", "downsampled_series", "experiment_keys", "run_counts"]

MAX_KEYS = 2000
"""Distinct param or metric keys listed per experiment (the column picker's limit)."""


def database_of(store: TrackingStore) -> Database | None:
    """The SQL database behind ``store``, or ``None`` for any other kind of store."""
    from cairn.store._sql.store import SqlTrackingStore

    if isinstance(store, SqlTrackingStore):
        return store._db
    return None


def _run_ids(experiment_ids: Sequence[str], view: ViewType) -> Any:
    from cairn.store._sql.schema import runs

    pks = [int(e) for e in experiment_ids if str(e).isdecimal()]
    return sa.select(runs.c.run_uuid).where(
        runs.c.experiment_id.in_(pks), runs.c.lifecycle_stage.in_([s.value for s in view.stages()])
    )


def experiment_keys(store: TrackingStore, experiment_id: str, view: ViewType) -> dict[str, list[str]]:
    """Sorted distinct param and metric keys over the runs of an experiment (``MAX_KEYS`` at most each)."""
    database = database_of(store)
    if database is None:
        found = store.search_runs([experiment_id], "", view, 1000)
        return {
            "params": sorted({k for run in found.items for k in run.data.params})[:MAX_KEYS],
            "metrics": sorted({k for run in found.items for k in run.data.metrics})[:MAX_KEYS],
        }
    from cairn.store._sql.schema import latest_metrics, params

    members = _run_ids([experiment_id], view)
    out: dict[str, list[str]] = {}
    with database.transaction() as conn:
        for name, table in (("params", params), ("metrics", latest_metrics)):
            query = (
                sa.select(table.c.key)
                .where(table.c.run_uuid.in_(members))
                .distinct()
                .order_by(table.c.key)
                .limit(MAX_KEYS)
            )
            out[name] = [row[0] for row in conn.execute(query)]
    return out


def count_runs(store: TrackingStore, experiment_ids: Sequence[str], filter_string: str, view: ViewType) -> int | None:
    """How many runs match ``filter_string``; ``None`` when the store cannot count cheaply.

    Raises:
        FilterSyntaxError: the filter does not parse.
    """
    database = database_of(store)
    if database is None:
        return None
    from cairn.store._sql import search
    from cairn.store._sql.schema import runs
    from cairn.tracking.search_filter import parse_filter

    conditions = [search.filter_clause(c, database.dialect) for c in parse_filter(filter_string)]
    pks = [int(e) for e in experiment_ids if str(e).isdecimal()]
    query = sa.select(sa.func.count()).where(
        runs.c.experiment_id.in_(pks),
        runs.c.lifecycle_stage.in_([s.value for s in view.stages()]),
        *conditions,
    )
    with database.transaction() as conn:
        return int(conn.execute(query).scalar_one())


def run_counts(store: TrackingStore) -> dict[str, dict[str, int]]:
    """Runs per experiment id and lifecycle stage (``{"1": {"active": 10, "deleted": 2}}``); ``{}`` if unknown."""
    database = database_of(store)
    if database is None:
        return {}
    from cairn.store._sql.schema import runs

    query = sa.select(runs.c.experiment_id, runs.c.lifecycle_stage, sa.func.count()).group_by(
        runs.c.experiment_id, runs.c.lifecycle_stage
    )
    counts: dict[str, dict[str, int]] = {}
    with database.transaction() as conn:
        for experiment_id, stage, count in conn.execute(query):
            counts.setdefault(str(experiment_id), {})[stage] = int(count)
    return counts


# -- down-sampled series ---------------------------------------------------------------------------
#
# Buckets: point x (step or timestamp) falls in bucket floor((x - lo) * n / span), span = hi - lo + 1,
# computed with integers everywhere (numpy, SQLite, PostgreSQL) so every path cuts the same buckets.

_WHERE = "run_uuid = :run AND key = :key AND superseded = :no AND value IS NOT NULL"

# SQLite, buckets along the step: one range scan of the (run_uuid, key, step) index per bucket and
# extreme, no sort. Bucket i holds steps lo + ceil(i * span / n) up to the next bucket's first step.
# A lone min()/max() makes SQLite take the bare ``id`` from the row holding the extreme; the count
# rides along with the minimum's scan as "id:count".
_SQLITE_STEP_BUCKETS = (
    "WITH RECURSIVE b(i, s0, s1) AS ("
    " SELECT 0, :lo, :lo + (:span + :n - 1) / :n"
    " UNION ALL SELECT i + 1, s1, :lo + ((i + 2) * :span + :n - 1) / :n FROM b WHERE i + 1 < :n"
    "), picks AS (SELECT"
    " (SELECT id || ':' || c FROM (SELECT id, min(value), count(*) AS c FROM metrics"
    "  WHERE " + _WHERE + " AND step >= b.s0 AND step < b.s1)) AS low,"
    " (SELECT id FROM (SELECT id, max(value) FROM metrics"
    "  WHERE " + _WHERE + " AND step >= b.s0 AND step < b.s1)) AS high"
    " FROM b) SELECT low, high FROM picks"
)
# SQLite, buckets along the timestamp (no index on it): one GROUP BY pass per extreme.
_SQLITE_GROUPED = (
    "SELECT id, {agg}(value), count(*) FROM metrics WHERE " + _WHERE + " GROUP BY ((timestamp - :lo) * :n) / :span"
)
# PostgreSQL: one pass; arrays compare element by element, so min(ARRAY[value, step, ...]) is the
# row of the minimum (the earliest step on ties; -step does the same for the maximum).
_PG_GROUPED = (
    "SELECT min(ARRAY[value, step, timestamp]), max(ARRAY[value, -step, timestamp]), count(*) FROM metrics "
    "WHERE " + _WHERE + " GROUP BY (({col} - :lo) * :n) / :span"
)


def downsampled_series(
    database: Database, run_id: str, key: str, max_points: int, x: XAxis, cache: _Cache
) -> MetricSeries:
    """See :func:`cairn.ui.series.metric_series`; the reduction runs in the database.

    Results are cached by the metric's latest point (which moves with every point logged at a new
    step and with every resume), so a finished run's series is computed once.
    """
    from cairn.errors import RunNotFound
    from cairn.store._sql.schema import latest_metrics, metrics, runs
    from cairn.ui.series import MetricSeries, _finite_or_none, buckets_for

    with database.transaction() as conn:
        if conn.execute(sa.select(runs.c.run_uuid).where(runs.c.run_uuid == run_id)).first() is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        latest = conn.execute(
            sa.select(latest_metrics.c.step, latest_metrics.c.timestamp, latest_metrics.c.value).where(
                latest_metrics.c.run_uuid == run_id, latest_metrics.c.key == key
            )
        ).first()
        if latest is None:
            return MetricSeries(key)
        cache_key = (database.description, run_id, key, max_points, x, *latest)
        cached = cache.get(cache_key)
        if cached is not None:
            return cached
        visible = sa.and_(metrics.c.run_uuid == run_id, metrics.c.key == key, metrics.c.superseded == sa.false())
        columns = (metrics.c.step, metrics.c.timestamp, metrics.c.value)
        rows = conn.execute(
            sa.select(*columns)
            .where(visible)
            .order_by(metrics.c.step, metrics.c.timestamp, metrics.c.id)
            .limit(max_points + 1)
        ).all()
        if len(rows) <= max_points:
            result = MetricSeries(
                key,
                [int(r[0]) for r in rows],
                [int(r[1]) for r in rows],
                [_finite_or_none(r[2]) for r in rows],
                len(rows),
            )
            cache.put(cache_key, result)
            return result
        finite = sa.and_(visible, metrics.c.value.is_not(None))
        ascending = (metrics.c.step, metrics.c.timestamp, metrics.c.id)
        descending = (metrics.c.step.desc(), metrics.c.timestamp.desc(), metrics.c.id.desc())
        first, last = (
            conn.execute(sa.select(*columns).where(finite).order_by(*order).limit(1)).first()
            for order in (ascending, descending)
        )
        if first is None or last is None:  # every visible point is NaN
            return MetricSeries(key, downsampled=True)
        column = "step"
        lo, hi = int(first[0]), int(last[0])
        if x == "time" or lo == hi:
            column = "timestamp"
            bounds = conn.execute(
                sa.select(sa.func.min(metrics.c.timestamp), sa.func.max(metrics.c.timestamp)).where(finite)
            ).one()
            lo, hi = int(bounds[0]), int(bounds[1])
        binds = {"run": run_id, "key": key, "no": False, "lo": lo, "span": hi - lo + 1, "n": buckets_for(max_points)}
        if database.dialect == "sqlite":
            points, total = _sqlite_extremes(conn, column, binds)
        else:
            points, total = _pg_extremes(conn, column, binds)
        for end in (first, last):
            points[(int(end[0]), int(end[1]))] = float(end[2])
    order_index = 1 if column == "timestamp" else 0
    ordered = sorted(points.items(), key=lambda item: (item[0][order_index], item[0]))
    result = MetricSeries(
        key,
        [p[0][0] for p in ordered],
        [p[0][1] for p in ordered],
        [_finite_or_none(p[1]) for p in ordered],
        total,
        True,
        column,
    )
    cache.put(cache_key, result)
    return result


Points = dict[tuple[int, int], float]
"""Kept points: (step, timestamp) -> value."""


def _sqlite_extremes(conn: sa.Connection, column: str, binds: dict[str, Any]) -> tuple[Points, int]:
    from cairn.store._sql.schema import metrics

    ids: list[int] = []
    total = 0
    if column == "step":
        for low, high in conn.execute(sa.text(_SQLITE_STEP_BUCKETS), binds):
            if low is None:  # an empty bucket (steps are sparse there)
                continue
            low_id, count = str(low).split(":")
            ids += [int(low_id), int(high)]
            total += int(count)
    else:
        for agg in ("min", "max"):
            for row_id, _value, count in conn.execute(sa.text(_SQLITE_GROUPED.format(agg=agg)), binds):
                ids.append(int(row_id))
                total += int(count) if agg == "min" else 0
    points: Points = {}
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        query = sa.select(metrics.c.step, metrics.c.timestamp, metrics.c.value).where(metrics.c.id.in_(chunk))
        for step, timestamp, value in conn.execute(query):
            points[(int(step), int(timestamp))] = float(value)
    return points, total


def _pg_extremes(conn: sa.Connection, column: str, binds: dict[str, Any]) -> tuple[Points, int]:
    points: Points = {}
    total = 0
    for low, high, count in conn.execute(sa.text(_PG_GROUPED.format(col=column)), binds):
        points[(int(low[1]), int(low[2]))] = float(low[0])
        points[(int(-high[1]), int(high[2]))] = float(high[0])
        total += int(count)
    return points, total
