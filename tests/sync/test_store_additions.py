"""The store methods a sync relies on, on SQLite and PostgreSQL; and the point difference itself."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.errors import ParamConflict, ResourceAlreadyExists, RunNotFound
from cairn.registry.entities import ModelVersion
from cairn.store._sql.registry import SqlRegistryStore
from cairn.store._sql.store import SqlTrackingStore
from cairn.store.base import StoredMetricPoint as P
from cairn.sync.points import plan_points
from cairn.tracking.entities import Metric, Param, RunTag
from tests.conftest import PgServer


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlTrackingStore]:
    if request.param == "sqlite":
        opened = SqlTrackingStore(f"sqlite:///{tmp_path / 'cairn.db'}", str(tmp_path / "artifacts"))
        yield opened
        opened.close()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with server.new_database("cairn_sync_store") as url:
        opened = SqlTrackingStore(url, str(tmp_path / "artifacts"))
        yield opened
        opened.close()


def _run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="u", start_time=1, run_name="r").info.run_id


def test_counts_and_points_include_superseded_ones(store: SqlTrackingStore) -> None:
    run, other = _run(store), _run(store)
    store.log_batch(run, metrics=[Metric("a", float(s), 10 + s, s) for s in range(5)] + [Metric("b", math.nan, 1, 0)])
    store.supersede_metrics_after(run, 2)
    assert store.metric_point_counts([run, other, "f" * 32]) == {run: {"a": (5, 2), "b": (1, 0)}}
    points = store.get_metric_points(run)
    assert [(p.key, p.step, p.superseded) for p in points] == [
        ("a", 0, False),
        ("a", 1, False),
        ("a", 2, False),
        ("a", 3, True),
        ("a", 4, True),
        ("b", 0, False),
    ]
    assert math.isnan(points[-1].value)
    assert [p.key for p in store.get_metric_points(run, ["b"])] == ["b"]
    with pytest.raises(RunNotFound):
        store.get_metric_points("e" * 32)


def test_import_run_data_keeps_flags_and_latest_values(store: SqlTrackingStore) -> None:
    run = _run(store)
    store.delete_run(run)  # copying history into a deleted run is allowed (logging is not)
    store.import_run_data(
        run,
        params=[Param("lr", "0.1")],
        tags=[RunTag("mlflow.runName", "renamed"), RunTag("t", "v")],
        points=[P("loss", 1.0, 100, 1), P("loss", 0.5, 200, 2), P("loss", 9.0, 300, 3, True), P("x", math.inf, 5, 0)],
    )
    copied = store.get_run(run)
    assert copied.info.run_name == "renamed" and copied.data.params == {"lr": "0.1"}
    assert copied.data.metrics == {"loss": 0.5, "x": math.inf}  # the superseded step 3 is not the latest
    assert [p.superseded for p in store.get_metric_points(run, ["loss"])] == [False, False, True]

    # flag two of three equal live points, add one: exactly the requested count changes
    store.import_run_data(run, points=[P("d", 7.0, 1, 1)] * 3)
    store.import_run_data(
        run, points=[P("loss", 0.1, 400, 4)], supersede=[(P("d", 7.0, 1, 1), 2), (P("loss", 0.5, 200, 2), 1)]
    )
    assert [p.superseded for p in store.get_metric_points(run, ["d"])] == [True, True, False]
    assert store.get_run(run).data.metrics["loss"] == 0.1
    assert store.metric_point_counts([run])[run]["loss"] == (4, 2)

    with pytest.raises(ParamConflict, match="lr"):
        store.import_run_data(run, params=[Param("lr", "0.2")], points=[P("loss", 3.0, 1, 9)])
    assert store.metric_point_counts([run])[run]["loss"] == (4, 2)  # nothing of the failed call was written
    with pytest.raises(RunNotFound):
        store.import_run_data("e" * 32, params=[Param("a", "b")])


def test_import_model_version_keeps_its_number(store: SqlTrackingStore) -> None:
    registry = SqlRegistryStore.from_tracking_store(store)
    copied = registry.import_model_version(
        ModelVersion(
            name="clf",
            version="5",
            creation_timestamp=111,
            last_updated_timestamp=222,
            source="/models/clf",
            run_id="a" * 32,
            description="five",
            current_stage="Production",
            tags={"k": "v"},
        )
    )
    assert (copied.version, copied.current_stage, copied.creation_timestamp, copied.tags) == (
        "5",
        "Production",
        111,
        {"k": "v"},
    )
    assert registry.create_model_version("clf", "/models/next").version == "6"  # never reuses a copied number
    registry.import_model_version(ModelVersion("clf", "2", 1, 1, "/models/two"))
    assert registry.create_model_version("clf", "/models/later").version == "7"
    with pytest.raises(ResourceAlreadyExists, match="version 5"):
        registry.import_model_version(ModelVersion("clf", "5", 1, 1, "/elsewhere"))


def test_plan_points_is_a_multiset_difference() -> None:
    nan = math.nan
    source = [P("a", 1.0, 1, 1), P("a", 1.0, 1, 1), P("a", nan, 2, 2), P("a", 3.0, 3, 3, True), P("b", 0.0, 1, 1)]
    assert [p for p in plan_points(source, []).inserts] == source
    # the destination has one of the two equal points, the NaN, and the step-3 point still live
    partial = plan_points(source, [P("a", 1.0, 1, 1), P("a", nan, 2, 2), P("a", 3.0, 3, 3)])
    assert partial.inserts == [P("a", 1.0, 1, 1), P("b", 0.0, 1, 1)]
    assert partial.supersede == [(P("a", 3.0, 3, 3, True), 1)]
    assert partial.extra == 0
    done = plan_points(source, source)
    assert done.empty and done.extra == 0
    extra = plan_points(source[:1], [P("a", 1.0, 1, 1), P("z", 5.0, 1, 1)])
    assert extra.empty and extra.extra == 1
    # the later occurrences are the ones inserted, in source order
    ordered = plan_points([P("k", 1.0, 1, 1), P("k", 2.0, 2, 2), P("k", 1.0, 1, 1)], [P("k", 1.0, 1, 1)])
    assert ordered.inserts == [P("k", 2.0, 2, 2), P("k", 1.0, 1, 1)]
