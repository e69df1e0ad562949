"""Server-side down-sampling of metric series: bounded size, shape kept (global extremes, every
bucket's min and max), on SQLite and PostgreSQL (SQL path) and on the numpy path."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cairn.store._sql.store import SqlTrackingStore
from cairn.store.base import MetricPoint
from cairn.ui import series as series_module
from cairn.ui.series import MetricSeries, buckets_for, downsample_minmax, metric_series
from tests.conftest import PgServer

N_POINTS = 30_000


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sql_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlTrackingStore]:
    """One store per backend for the module; each test logs into runs of its own."""
    tmp_path = tmp_path_factory.mktemp("series")
    if request.param == "sqlite":
        store = SqlTrackingStore(f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "artifacts"))
        yield store
        store.close()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with server.new_database(prefix="cairn_ui_test") as url:
        store = SqlTrackingStore(url, str(tmp_path / "artifacts"))
        yield store
        store.close()


def _curve(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.normal(size=n)) + 3 * np.sin(np.arange(n) / 500)
    values[n // 3] = 1e6  # a lone spike, the global maximum
    values[2 * n // 3] = -1e6  # and a lone dip, the global minimum
    return values


def _log(
    store: SqlTrackingStore, run_id: str, key: str, values: np.ndarray, *, steps: np.ndarray | None = None
) -> None:
    steps = np.arange(len(values)) if steps is None else steps
    points = [
        MetricPoint(run_id, key, float(v), 1_000_000 + 10 * i, int(s))
        for i, (v, s) in enumerate(zip(values, steps, strict=True))
    ]
    for start in range(0, len(points), 10_000):
        store.log_metric_points(points[start : start + 10_000])


def _new_run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="u", start_time=0, run_name="r").info.run_id


def _check_shape(result: MetricSeries, values: np.ndarray, max_points: int) -> None:
    assert result.downsampled is True
    assert len(result.values) <= max_points
    assert len(result.steps) == len(result.timestamps) == len(result.values)
    assert result.steps == sorted(result.steps)
    assert max(v for v in result.values if v is not None) == values.max()
    assert min(v for v in result.values if v is not None) == values.min()
    assert values.argmax() in result.steps  # at its own step
    assert values.argmin() in result.steps
    assert result.steps[0] == 0 and result.steps[-1] == len(values) - 1  # first and last points kept
    for step, value in zip(result.steps, result.values, strict=True):
        assert value == values[step]  # every kept point is a real point, at its own step


def test_sql_downsampling_keeps_the_shape(sql_store: SqlTrackingStore) -> None:
    run_id = _new_run(sql_store)
    values = _curve(N_POINTS)
    _log(sql_store, run_id, "loss", values)
    result = metric_series(sql_store, run_id, "loss", max_points=500)
    _check_shape(result, values, 500)
    assert result.total == N_POINTS and result.bucket_by == "step"
    # Each bucket's own min and max survive: compare with a brute-force reduction.
    n = buckets_for(500)
    bucket = (np.arange(N_POINTS) * n) // N_POINTS
    kept = dict(zip(result.steps, result.values, strict=True))
    for b in range(n):
        members = values[bucket == b]
        assert members.min() in kept.values() and members.max() in kept.values()
    assert len(result.values) >= n  # not more lossy than needed


def test_sql_downsampling_by_time_and_when_every_step_is_zero(sql_store: SqlTrackingStore) -> None:
    run_id = _new_run(sql_store)
    values = _curve(5000, seed=3)
    _log(sql_store, run_id, "flat", values, steps=np.zeros(5000, dtype=int))
    result = metric_series(sql_store, run_id, "flat", max_points=200)
    assert result.bucket_by == "timestamp" and len(result.values) <= 200
    assert max(v for v in result.values if v is not None) == values.max()
    assert min(v for v in result.values if v is not None) == values.min()
    assert result.timestamps == sorted(result.timestamps)
    _log(sql_store, run_id, "stepped", values)
    by_time = metric_series(sql_store, run_id, "stepped", max_points=200, x="time")
    assert by_time.bucket_by == "timestamp" and len(by_time.values) <= 200
    assert values.max() in by_time.values and values.min() in by_time.values


def test_short_series_are_exact_and_keep_nan_as_gaps(sql_store: SqlTrackingStore) -> None:
    run_id = _new_run(sql_store)
    values = np.array([1.0, math.nan, 3.0, math.inf, 2.0])
    _log(sql_store, run_id, "m", values)
    result = metric_series(sql_store, run_id, "m", max_points=10)
    assert result.downsampled is False and result.total == 5
    assert result.steps == [0, 1, 2, 3, 4] and result.values == [1.0, None, 3.0, None, 2.0]


def test_nan_points_are_dropped_when_downsampling(sql_store: SqlTrackingStore) -> None:
    run_id = _new_run(sql_store)
    values = _curve(2000, seed=5)
    values[::7] = math.nan
    _log(sql_store, run_id, "m", values)
    result = metric_series(sql_store, run_id, "m", max_points=100)
    assert len(result.values) <= 100 and None not in result.values
    assert max(result.values) == np.nanmax(values)  # type: ignore[type-var]
    assert result.total == int(np.sum(~np.isnan(values)))


def test_superseded_points_are_left_out(sql_store: SqlTrackingStore) -> None:
    run_id = _new_run(sql_store)
    _log(sql_store, run_id, "m", _curve(3000, seed=1))
    sql_store.supersede_metrics_after(run_id, 999)  # a resume from step 999 hides the later points
    result = metric_series(sql_store, run_id, "m", max_points=100)
    assert max(result.steps) <= 999 and result.total == 1000


def test_series_cache_notices_new_points(sql_store: SqlTrackingStore) -> None:
    run_id = _new_run(sql_store)
    _log(sql_store, run_id, "m", _curve(500, seed=2))
    before = metric_series(sql_store, run_id, "m", max_points=100)
    assert metric_series(sql_store, run_id, "m", max_points=100) is before  # served from the cache
    sql_store.log_metric_points([MetricPoint(run_id, "m", 5e6, 9_999_999, 500)])
    after = metric_series(sql_store, run_id, "m", max_points=100)
    assert after.steps[-1] == 500 and after.values[-1] == 5e6


def test_numpy_downsampling_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    n = 20_000
    steps = np.sort(rng.choice(10 * n, size=n, replace=False))
    timestamps = steps * 3
    values = rng.normal(size=n)
    s, t, v = downsample_minmax(steps, timestamps, values, 300)
    assert len(v) <= 300 and list(s) == sorted(s)
    assert v.max() == values.max() and v.min() == values.min()
    buckets = buckets_for(300)
    bucket_of = ((steps - steps[0]) * buckets) // (steps[-1] - steps[0] + 1)
    for b in np.unique(bucket_of):
        members = values[bucket_of == b]
        assert members.min() in v and members.max() in v
    assert s[0] == steps[0] and s[-1] == steps[-1]
    assert np.all(t == s * 3)
    short = downsample_minmax(steps[:50], timestamps[:50], values[:50], 300)
    assert len(short[0]) == 50


def test_the_history_fallback_for_other_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that is not the SQL store goes through get_metric_history and numpy."""
    store = SqlTrackingStore(f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "artifacts"))
    run_id = _new_run(store)
    values = _curve(4000, seed=9)
    _log(store, run_id, "m", values)
    from cairn.ui import sql

    monkeypatch.setattr(sql, "database_of", lambda _store: None)
    result = metric_series(store, run_id, "m", max_points=100)
    _check_shape(result, values, 100)
    assert series_module.DEFAULT_MAX_POINTS >= 1000
    store.close()


def test_max_points_is_bounded(tmp_path: Path) -> None:
    from cairn.errors import InvalidArgument

    store = SqlTrackingStore(f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "artifacts"))
    with pytest.raises(InvalidArgument, match="max_points"):
        metric_series(store, _new_run(store), "m", max_points=1_000_000)
    store.close()
