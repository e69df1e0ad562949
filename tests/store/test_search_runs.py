"""search_runs on SQLite and PostgreSQL: filters, ordering, pagination, query count."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cairn.errors import FilterSyntaxError, InvalidArgument
from cairn.store._sql import SqlTrackingStore
from cairn.tracking.entities import Metric, Param, RunStatus, RunTag, ViewType

# One table of runs used by every test below (runs "e" is deleted, "x" is in another experiment).
RUNS: dict[str, dict[str, Any]] = {
    "a": {
        "start": 100,
        "user": "alice",
        "status": RunStatus.FINISHED,
        "metrics": {"acc": 0.9, "loss": 0.5},
        "params": {"lr": "0.01", "model": "ResNet_50"},
        "tags": {"team": "vision"},
    },
    "b": {
        "start": 200,
        "user": "bob",
        "status": RunStatus.RUNNING,
        "metrics": {"acc": 0.7, "loss": math.nan},
        "params": {"lr": "0.1", "model": "resnet18"},
        "tags": {"team": "Vision"},
    },
    "c": {
        "start": 300,
        "user": "alice",
        "status": RunStatus.FAILED,
        "metrics": {"acc": 0.8},
        "params": {"lr": "0.01", "model": "vit%"},
        "tags": {"team": "nlp"},
    },
    "d": {
        "start": 400,
        "user": "carol",
        "status": RunStatus.FINISHED,
        "metrics": {"loss": -math.inf},
        "params": {},
        "tags": {},
    },
    "e": {
        "start": 500,
        "user": "alice",
        "status": RunStatus.RUNNING,
        "metrics": {"acc": 1.0},
        "params": {},
        "tags": {},
    },
}


@dataclass
class Populated:
    store: SqlTrackingStore
    experiment_id: str
    other_experiment_id: str
    ids: dict[str, str]  # run name -> run id

    def names(self, **kwargs: Any) -> list[str]:
        experiment_ids = kwargs.pop("experiment_ids", [self.experiment_id])
        found = self.store.search_runs(experiment_ids, **kwargs)
        return [run.info.run_name for run in found.items]


def _populate(store: SqlTrackingStore) -> Populated:
    experiment_id = store.create_experiment("search")
    other = store.create_experiment("other")
    ids = {}
    for name, spec in RUNS.items():
        run_id = store.create_run(experiment_id, user_id=spec["user"], start_time=spec["start"], run_name=name).run_id
        store.log_batch(
            run_id,
            metrics=[Metric(k, v, spec["start"], 0) for k, v in spec["metrics"].items()],
            params=[Param(k, v) for k, v in spec["params"].items()],
            tags=[RunTag(k, v) for k, v in spec["tags"].items()],
        )
        store.update_run_info(run_id, status=spec["status"])
        ids[name] = run_id
    store.delete_run(ids["e"])
    x = store.create_run(other, user_id="alice", start_time=50, run_name="x").run_id
    store.log_batch(x, metrics=[Metric("acc", 0.95, 50, 0)])
    ids["x"] = x
    return Populated(store, experiment_id, other, ids)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def populated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Populated]:
    if request.param == "sqlite":
        root: Path = tmp_path_factory.mktemp("search")
        store = SqlTrackingStore(f"sqlite:///{root}/cairn.db", str(root / "artifacts"))
        yield _populate(store)
        store.close()
        return
    server = request.getfixturevalue("pg_server")
    with server.new_database("cairn_search_test") as url:
        store = SqlTrackingStore(url, "/tmp/artifacts")
        yield _populate(store)
        store.close()


@pytest.mark.parametrize(
    ("filter_string", "expected"),
    [
        ("", ["d", "c", "b", "a"]),
        ("metrics.acc > 0.75", ["c", "a"]),
        ("metrics.acc >= 0.7", ["c", "b", "a"]),
        ("metrics.acc = 0.9", ["a"]),
        ("metrics.acc != 0.9", ["c", "b"]),
        ("metrics.loss < 1", ["d", "a"]),  # -inf matches, NaN never does
        ("metrics.loss > -1e308", ["a"]),
        ("metrics.loss != 0.5", ["d"]),
        ("params.lr = '0.01'", ["c", "a"]),
        ("params.lr != '0.01'", ["b"]),
        ("params.lr IN ('0.1', '0.5')", ["b"]),
        ("params.lr NOT IN ('0.1')", ["c", "a"]),
        ("params.model LIKE 'res%'", ["b"]),  # LIKE is case-sensitive on both backends
        ("params.model ILIKE 'RES%'", ["b", "a"]),
        ("params.model LIKE 'resnet_8'", ["b"]),  # _ is one character
        ("params.model LIKE 'resnet\\_8'", []),  # \_ is a literal underscore
        ("params.model LIKE 'ResNet\\_50'", ["a"]),
        ("params.model LIKE '%\\%'", ["c"]),
        ("params.model LIKE 'vit*'", []),  # GLOB characters are literal
        ("params.model ILIKE '%[%'", []),
        ("tags.team = 'vision'", ["a"]),
        ("tags.team ILIKE 'VISION'", ["b", "a"]),
        ("tags.mlflow.runName = 'c'", ["c"]),
        ("attributes.status = 'FINISHED'", ["d", "a"]),
        ("status != 'running'", ["d", "c", "a"]),
        ("attributes.run_name = 'b'", ["b"]),
        ("run_name IN ('a', 'd')", ["d", "a"]),
        ("attributes.start_time >= 300", ["d", "c"]),
        ("attributes.user_id = 'alice' and metrics.acc > 0.85", ["a"]),
        ("metrics.acc > 0.5 and params.lr = '0.01' and tags.team = 'nlp'", ["c"]),
    ],
)
def test_filters(populated: Populated, filter_string: str, expected: list[str]) -> None:
    assert populated.names(filter_string=filter_string) == expected


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        (None, ["d", "c", "b", "a"]),
        (["metrics.acc DESC"], ["a", "c", "b", "d"]),  # runs without the metric come last
        (["metrics.acc"], ["b", "c", "a", "d"]),
        (["metrics.loss"], ["d", "a", "b", "c"]),  # -inf first, NaN after numbers, missing last
        (["metrics.loss DESC"], ["a", "d", "b", "c"]),
        (["params.lr"], ["c", "a", "b", "d"]),  # ties: newest first
        (["params.lr DESC", "start_time ASC"], ["b", "a", "c", "d"]),
        (["attributes.start_time"], ["a", "b", "c", "d"]),
        (["run_name DESC"], ["d", "c", "b", "a"]),
    ],
)
def test_order_by(populated: Populated, order_by: list[str] | None, expected: list[str]) -> None:
    assert populated.names(order_by=order_by) == expected


def test_experiments_and_view_types(populated: Populated) -> None:
    assert populated.names(experiment_ids=[populated.other_experiment_id]) == ["x"]
    both = [populated.experiment_id, populated.other_experiment_id]
    assert populated.names(experiment_ids=both, filter_string="metrics.acc > 0.85") == ["a", "x"]
    assert populated.names(experiment_ids=["0"]) == []
    assert populated.names(experiment_ids=["not-an-id"]) == []
    assert populated.names(run_view_type=ViewType.DELETED_ONLY) == ["e"]
    assert populated.names(run_view_type=ViewType.ALL) == ["e", "d", "c", "b", "a"]


def test_run_id_filter_and_loaded_data(populated: Populated) -> None:
    ids = populated.ids
    found = populated.store.search_runs(
        [populated.experiment_id], filter_string=f"attributes.run_id IN ('{ids['a']}', '{ids['b']}')"
    )
    assert [run.info.run_name for run in found.items] == ["b", "a"]
    for run in found.items:
        expected = populated.store.get_run(run.info.run_id)
        assert run.info == expected.info
        assert run.data.params == expected.data.params and run.data.tags == expected.data.tags
        assert run.data.metrics.keys() == expected.data.metrics.keys()
    b = found.items[0].data.metrics
    assert b["acc"] == 0.7 and math.isnan(b["loss"])


def test_pagination(populated: Populated) -> None:
    store, experiment = populated.store, [populated.experiment_id]
    first = store.search_runs(experiment, max_results=3)
    assert [r.info.run_name for r in first.items] == ["d", "c", "b"]
    assert first.next_page_token
    second = store.search_runs(experiment, max_results=3, page_token=first.next_page_token)
    assert [r.info.run_name for r in second.items] == ["a"]
    assert second.next_page_token is None
    exact = store.search_runs(experiment, max_results=4)
    assert len(exact.items) == 4 and exact.next_page_token is None
    assert len(store.search_runs(experiment, max_results=50_000).items) == 4


def test_bad_arguments(populated: Populated) -> None:
    store, experiment = populated.store, [populated.experiment_id]
    with pytest.raises(InvalidArgument, match="50000"):
        store.search_runs(experiment, max_results=50_001)
    with pytest.raises(InvalidArgument, match="max_results"):
        store.search_runs(experiment, max_results=0)
    with pytest.raises(InvalidArgument, match="page_token"):
        store.search_runs(experiment, page_token="garbage!")
    with pytest.raises(FilterSyntaxError):
        store.search_runs(experiment, filter_string="metrics.acc >")
    with pytest.raises(FilterSyntaxError):
        store.search_runs(experiment, order_by=["bogus.acc"])


def test_loading_a_page_costs_a_constant_number_of_queries(populated: Populated) -> None:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = populated.store._db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        populated.names(filter_string="attributes.run_name = 'a'")
        one = len(statements)
        statements.clear()
        populated.names(run_view_type=ViewType.ALL)
        five = len(statements)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert one == five
    assert five <= 5  # BEGIN (SQLite), the search, latest metrics, params, tags
