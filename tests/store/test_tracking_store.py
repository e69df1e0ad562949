"""The TrackingStore contract, run against SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import math
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from cairn.errors import (
    ExperimentNotFound,
    InvalidArgument,
    NotFound,
    ParamConflict,
    ResourceAlreadyExists,
    RunNotActive,
    RunNotFound,
    SchemaOutOfDate,
    StoreError,
)
from cairn.store._sql import HEAD_REVISION, SqlTrackingStore, current_revision, upgrade_schema
from cairn.store._sql import migrate as migrate_module
from cairn.store._sql.engine import normalize_url
from cairn.store._sql.schema import metadata
from cairn.store.base import MetricPoint
from cairn.tracking.entities import LifecycleStage, Metric, Param, RunStatus, RunTag, ViewType


def _run(store: SqlTrackingStore, experiment_id: str = "0", name: str = "r", start: int = 1000) -> str:
    return store.create_run(experiment_id, user_id="alice", start_time=start, run_name=name).info.run_id


def _count(store: SqlTrackingStore, table: str, run_id: str) -> int:
    with store._db.engine.connect() as conn:
        query = sa.text(f"SELECT count(*) FROM {table} WHERE run_uuid = :r")
        return int(conn.execute(query, {"r": run_id}).scalar_one())


# -- schema ------------------------------------------------------------------------------------


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    script = ScriptDirectory.from_config(migrate_module.alembic_config())
    assert script.get_current_head() == HEAD_REVISION


@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrations_create_exactly_the_declared_schema(store: SqlTrackingStore) -> None:
    with store._db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
        if conn.dialect.name == "sqlite":
            found = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
        else:
            found = conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_%'"))
        index_names = set(found.scalars())
    # Expression indexes are not reflected by every backend: their names are checked instead.
    diff = [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name.endswith("_key_value"))]
    assert diff == []
    assert index_names == {index.name for table in metadata.tables.values() for index in table.indexes}


def test_new_database_gets_head_revision_and_default_experiment(empty_db_url: str, artifact_root: str) -> None:
    assert current_revision(empty_db_url) is None
    store = SqlTrackingStore(empty_db_url, artifact_root)
    try:
        assert current_revision(empty_db_url) == HEAD_REVISION
        default = store.get_experiment("0")
        assert (default.name, default.artifact_location) == ("Default", f"{artifact_root}/0")
        assert store.create_experiment("first") == "1"
        assert store.create_experiment("second") == "2"
    finally:
        store.close()


def test_upgrade_schema_reports_revisions_and_store_adds_default(empty_db_url: str, artifact_root: str) -> None:
    assert upgrade_schema(empty_db_url) == (None, HEAD_REVISION)
    assert upgrade_schema(empty_db_url) == (HEAD_REVISION, HEAD_REVISION)
    store = SqlTrackingStore(empty_db_url, artifact_root)
    try:
        assert store.get_experiment("0").name == "Default"
    finally:
        store.close()


def test_out_of_date_schema_is_refused_with_upgrade_hint(
    store: SqlTrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate_module, "HEAD_REVISION", "0099")  # as if this cairn had a newer migration
    with pytest.raises(SchemaOutOfDate) as caught:
        SqlTrackingStore(store.db_uri, "/tmp/unused")
    message = str(caught.value)
    assert "`cairn db upgrade`" in message
    assert f"'{HEAD_REVISION}'" in message and "'0099'" in message


_NEXT = f"{int(HEAD_REVISION) + 1:04d}"
_NEXT_REVISION = f"""
import sqlalchemy as sa
from alembic import op

revision = "{_NEXT}"
down_revision = "{HEAD_REVISION}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("note", sa.Text))


def downgrade() -> None:
    op.drop_column("experiments", "note")
"""


def test_a_new_revision_is_refused_until_cairn_db_upgrade(
    empty_db_url: str, artifact_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqlTrackingStore(empty_db_url, artifact_root).close()  # a database made by "the previous cairn"
    migrations = tmp_path / "migrations"
    shutil.copytree(migrate_module.MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / f"{_NEXT}_note.py").write_text(_NEXT_REVISION)
    monkeypatch.setattr(migrate_module, "MIGRATIONS_DIR", migrations)
    monkeypatch.setattr(migrate_module, "HEAD_REVISION", _NEXT)

    with pytest.raises(SchemaOutOfDate) as caught:
        SqlTrackingStore(empty_db_url, artifact_root)
    message = str(caught.value)
    assert "`cairn db upgrade`" in message and f"'{HEAD_REVISION}'" in message and f"'{_NEXT}'" in message
    assert upgrade_schema(empty_db_url) == (HEAD_REVISION, _NEXT)
    store = SqlTrackingStore(empty_db_url, artifact_root)
    try:
        assert store.get_experiment("0").name == "Default"  # data survived the migration
    finally:
        store.close()
    assert current_revision(empty_db_url) == _NEXT


def _open_and_run_sql(url: str, sql: str) -> None:
    opened = SqlTrackingStore(url, "/tmp/unused")
    try:
        with opened._db.engine.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        opened.close()


def test_unknown_revision_is_refused_as_newer(empty_db_url: str) -> None:
    _open_and_run_sql(empty_db_url, "UPDATE alembic_version SET version_num = 'ffff'")
    with pytest.raises(SchemaOutOfDate, match="newer cairn") as caught:
        SqlTrackingStore(empty_db_url, "/tmp/unused")
    assert "'ffff'" in str(caught.value)
    with pytest.raises(SchemaOutOfDate):
        upgrade_schema(empty_db_url)


def test_cairn_tables_without_revision_are_refused(empty_db_url: str) -> None:
    _open_and_run_sql(empty_db_url, "DROP TABLE alembic_version")
    with pytest.raises(StoreError, match="no schema revision"):
        SqlTrackingStore(empty_db_url, "/tmp/unused")
    with pytest.raises(StoreError, match="no schema revision"):
        upgrade_schema(empty_db_url)


def test_concurrent_first_opens_create_the_schema_once(empty_db_url: str, artifact_root: str) -> None:
    errors: list[BaseException] = []
    stores: list[SqlTrackingStore] = []

    def open_store() -> None:
        try:
            stores.append(SqlTrackingStore(empty_db_url, artifact_root))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [e.experiment_id for e in stores[0].search_experiments()] == ["0"]
    for opened in stores:
        opened.close()


def test_database_urls() -> None:
    assert normalize_url("postgresql://u@h:5432/d").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/d").drivername == "postgresql+psycopg"
    with pytest.raises(InvalidArgument, match="SQLite or PostgreSQL"):
        normalize_url("mysql://u@h/d")
    with pytest.raises(InvalidArgument, match="not a database URI"):
        normalize_url("not a uri")


# -- experiments -------------------------------------------------------------------------------


def test_create_and_get_experiment(store: SqlTrackingStore, artifact_root: str) -> None:
    experiment_id = store.create_experiment("exp", tags={"team": "vision"})
    experiment = store.get_experiment(experiment_id)
    assert experiment.name == "exp"
    assert experiment.artifact_location == f"{artifact_root}/{experiment_id}"
    assert experiment.tags == {"team": "vision"}
    assert experiment.lifecycle_stage is LifecycleStage.ACTIVE
    assert experiment.creation_time and experiment.creation_time == experiment.last_update_time
    assert store.get_experiment_by_name("exp") == experiment
    assert store.get_experiment_by_name("missing") is None
    custom = store.create_experiment("custom", artifact_location="s3://bucket/custom")
    assert store.get_experiment(custom).artifact_location == "s3://bucket/custom"


def test_experiment_errors(store: SqlTrackingStore) -> None:
    store.create_experiment("exp")
    with pytest.raises(ResourceAlreadyExists, match="'exp' already exists"):
        store.create_experiment("exp")
    with pytest.raises(InvalidArgument):
        store.create_experiment("  ")
    for bad in ("42", "abc", "-1", "99999999999"):
        with pytest.raises(ExperimentNotFound):
            store.get_experiment(bad)
    with pytest.raises(ExperimentNotFound):
        store.set_experiment_tag("42", "k", "v")
    with pytest.raises(InvalidArgument, match="default experiment"):
        store.delete_experiment("0")


def test_experiment_tags_overwrite(store: SqlTrackingStore) -> None:
    experiment_id = store.create_experiment("exp", tags={"a": "1"})
    store.set_experiment_tag(experiment_id, "a", "2")
    store.set_experiment_tag(experiment_id, "b", "3")
    assert store.get_experiment(experiment_id).tags == {"a": "2", "b": "3"}
    with pytest.raises(InvalidArgument):
        store.set_experiment_tag(experiment_id, "bad key!", "x")


def test_rename_experiment(store: SqlTrackingStore) -> None:
    first = store.create_experiment("first")
    store.create_experiment("taken")
    store.rename_experiment(first, "renamed")
    assert store.get_experiment(first).name == "renamed"
    with pytest.raises(ResourceAlreadyExists, match="'taken' already exists"):
        store.rename_experiment(first, "taken")
    with pytest.raises(ExperimentNotFound):
        store.rename_experiment("77", "x")


def test_delete_and_restore_experiment_takes_its_runs_along(store: SqlTrackingStore) -> None:
    experiment_id = store.create_experiment("exp")
    kept, deleted_before = _run(store, experiment_id), _run(store, experiment_id)
    store.delete_run(deleted_before)
    time.sleep(0.002)  # the experiment's deletion time must be after the run's
    store.delete_experiment(experiment_id)
    assert store.get_experiment(experiment_id).lifecycle_stage is LifecycleStage.DELETED
    assert store.get_run(kept).info.lifecycle_stage is LifecycleStage.DELETED
    assert [e.name for e in store.search_experiments()] == ["Default"]
    assert [e.name for e in store.search_experiments(ViewType.DELETED_ONLY)] == ["exp"]
    with pytest.raises(RunNotActive, match="deleted"):
        _run(store, experiment_id)
    with pytest.raises(ResourceAlreadyExists):  # names stay reserved by deleted experiments
        store.create_experiment("exp")
    store.restore_experiment(experiment_id)
    assert store.get_experiment(experiment_id).lifecycle_stage is LifecycleStage.ACTIVE
    assert store.get_run(kept).info.lifecycle_stage is LifecycleStage.ACTIVE
    assert store.get_run(deleted_before).info.lifecycle_stage is LifecycleStage.DELETED
    with pytest.raises(ExperimentNotFound):
        store.restore_experiment("55")


def test_search_experiments(store: SqlTrackingStore) -> None:
    for name in ("alpha", "Alphabet", "beta"):
        store.create_experiment(name)
    assert [e.experiment_id for e in store.search_experiments()] == ["0", "1", "2", "3"]
    assert [e.name for e in store.search_experiments(name_like="alpha%")] == ["alpha"]
    assert [e.name for e in store.search_experiments(name_like="%ph%")] == ["alpha", "Alphabet"]
    assert [e.name for e in store.search_experiments(max_results=2)] == ["Default", "alpha"]
    assert [e.name for e in store.search_experiments(ViewType.ALL)] == ["Default", "alpha", "Alphabet", "beta"]
    with pytest.raises(InvalidArgument, match="max_results"):
        store.search_experiments(max_results=0)


# -- runs --------------------------------------------------------------------------------------


def test_create_and_get_run(store: SqlTrackingStore, artifact_root: str) -> None:
    experiment_id = store.create_experiment("exp")
    run = store.create_run(experiment_id, user_id="alice", start_time=123, run_name="first", tags=[RunTag("k", "v")])
    assert len(run.info.run_id) == 32
    assert run.info.artifact_uri == f"{artifact_root}/{experiment_id}/{run.info.run_id}/artifacts"
    assert run.info.status is RunStatus.RUNNING
    assert run.data.tags == {"k": "v", "mlflow.runName": "first"}
    fetched = store.get_run(run.info.run_id)
    assert fetched.info == run.info
    assert fetched.data.tags == run.data.tags
    assert (fetched.data.metrics, fetched.data.params) == ({}, {})


def test_create_run_with_id_and_errors(store: SqlTrackingStore) -> None:
    run_id = uuid.uuid4().hex
    assert store.create_run("0", user_id="u", start_time=1, run_name="x", run_id=run_id).info.run_id == run_id
    with pytest.raises(ResourceAlreadyExists, match=run_id):
        store.create_run("0", user_id="u", start_time=1, run_name="x", run_id=run_id)
    with pytest.raises(InvalidArgument, match="32 lowercase hex"):
        store.create_run("0", user_id="u", start_time=1, run_name="x", run_id="not-an-id")
    with pytest.raises(ExperimentNotFound):
        store.create_run("9", user_id="u", start_time=1, run_name="x")
    with pytest.raises(RunNotFound):
        store.get_run(uuid.uuid4().hex)
    with pytest.raises(RunNotFound):
        store.get_run_info(uuid.uuid4().hex)
    assert store.get_run_info(run_id) == store.get_run(run_id).info


def test_update_run_info(store: SqlTrackingStore) -> None:
    run_id = _run(store, name="before")
    info = store.update_run_info(run_id, status=RunStatus.FINISHED, end_time=5000)
    assert (info.status, info.end_time) == (RunStatus.FINISHED, 5000)
    assert store.get_run(run_id).info == info
    info = store.update_run_info(run_id, run_name="after")
    assert info.run_name == "after"
    run = store.get_run(run_id)
    assert (run.info.run_name, run.data.tags["mlflow.runName"], run.info.status) == (
        "after",
        "after",
        RunStatus.FINISHED,
    )
    info = store.update_run_info(run_id, status=RunStatus.RUNNING)
    assert (info.status, info.end_time) == (RunStatus.RUNNING, None)
    assert store.get_run(run_id).info.end_time is None
    with pytest.raises(RunNotFound):
        store.update_run_info(uuid.uuid4().hex, status=RunStatus.FAILED)


def test_delete_restore_and_list_deleted_runs(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    before = int(time.time() * 1000)
    store.delete_run(run_id)
    assert store.get_run(run_id).info.lifecycle_stage is LifecycleStage.DELETED
    assert store.deleted_run_ids() == [run_id]
    assert store.deleted_run_ids(older_than=before - 60_000) == []
    assert store.deleted_run_ids(older_than=int(time.time() * 1000) + 60_000) == [run_id]
    with pytest.raises(RunNotActive):
        store.log_batch(run_id, params=[Param("p", "1")])
    with pytest.raises(RunNotActive):
        store.log_metric_points([MetricPoint(run_id, "m", 1.0, 1, 0)])
    store.restore_run(run_id)
    assert store.get_run(run_id).info.lifecycle_stage is LifecycleStage.ACTIVE
    assert store.deleted_run_ids() == []
    for method in (store.delete_run, store.restore_run):
        with pytest.raises(RunNotFound):
            method(uuid.uuid4().hex)


def test_purge_run_removes_every_row(store: SqlTrackingStore) -> None:
    run_id, other = _run(store), _run(store)
    for target in (run_id, other):
        store.log_batch(target, [Metric("m", 1.0, 1, 0)], [Param("p", "1")], [RunTag("t", "1")])
    tables = ("metrics", "latest_metrics", "params", "tags")
    assert [_count(store, table, other) for table in tables] == [1, 1, 1, 2]  # tags: t and mlflow.runName
    with pytest.raises(RunNotActive, match="not deleted"):
        store.purge_run(run_id)
    store.delete_run(run_id)
    store.purge_run(run_id)
    with pytest.raises(RunNotFound):
        store.get_run(run_id)
    assert [_count(store, table, run_id) for table in tables] == [0, 0, 0, 0]
    assert [_count(store, table, other) for table in tables] == [1, 1, 1, 2]
    with pytest.raises(RunNotFound):
        store.purge_run(run_id)


# -- run data ----------------------------------------------------------------------------------


def test_log_batch_writes_everything(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_batch(
        run_id,
        metrics=[Metric("loss", 0.5, 10, 1), Metric("loss", 0.25, 20, 2), Metric("acc", 0.9, 20, 2)],
        params=[Param("lr", "0.01"), Param("layers", "3")],
        tags=[RunTag("team", "vision")],
    )
    data = store.get_run(run_id).data
    assert data.metrics == {"loss": 0.25, "acc": 0.9}
    assert data.params == {"lr": "0.01", "layers": "3"}
    assert data.tags["team"] == "vision"
    assert store.get_metric_history(run_id, "loss") == [Metric("loss", 0.5, 10, 1), Metric("loss", 0.25, 20, 2)]


def test_param_relog_same_value_is_noop_and_conflict_names_both_values(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_batch(run_id, params=[Param("lr", "0.01")])
    store.log_batch(run_id, params=[Param("lr", "0.01")])
    with pytest.raises(ParamConflict) as caught:
        store.log_batch(run_id, metrics=[Metric("m", 1.0, 1, 0)], params=[Param("lr", "0.02")], tags=[RunTag("t", "x")])
    message = str(caught.value)
    assert "'lr'" in message and "'0.01'" in message and "'0.02'" in message
    run = store.get_run(run_id)  # the failed batch wrote nothing
    assert run.data.params == {"lr": "0.01"}
    assert "t" not in run.data.tags and run.data.metrics == {}
    with pytest.raises(ParamConflict, match="twice"):
        store.log_batch(run_id, params=[Param("x", "1"), Param("x", "2")])


def test_log_batch_validates_before_writing(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    with pytest.raises(InvalidArgument, match="metric key"):
        store.log_batch(run_id, metrics=[Metric("bad/../key", 1.0, 1, 0)], params=[Param("p", "1")])
    with pytest.raises(InvalidArgument, match="limit"):
        store.log_batch(run_id, params=[Param("long", "x" * 7000)])
    assert store.get_run(run_id).data.params == {}
    with pytest.raises(RunNotFound):
        store.log_batch(uuid.uuid4().hex, params=[Param("p", "1")])


def test_logging_to_a_finished_run_is_allowed(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.update_run_info(run_id, status=RunStatus.FINISHED, end_time=2000)
    store.log_batch(run_id, metrics=[Metric("eval", 0.7, 3000, 0)])
    store.log_metric_points([MetricPoint(run_id, "eval2", 0.8, 3000, 0)])
    assert store.get_run(run_id).data.metrics == {"eval": 0.7, "eval2": 0.8}


def test_nan_and_infinities_round_trip(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    values = [math.nan, math.inf, -math.inf, 1.5, -0.0, 1e308]
    store.log_batch(run_id, metrics=[Metric("m", v, 100 + i, i) for i, v in enumerate(values)])
    store.log_metric_points(
        [MetricPoint(run_id, "nan_last", math.nan, 1, 0), MetricPoint(run_id, "inf", math.inf, 1, 0)]
    )
    history = store.get_metric_history(run_id, "m")
    assert math.isnan(history[0].value)
    assert [p.value for p in history[1:]] == values[1:]
    assert [p.step for p in history] == list(range(len(values)))
    latest = store.get_run(run_id).data.metrics
    assert latest["m"] == 1e308 and latest["inf"] == math.inf
    assert isinstance(latest["nan_last"], float) and math.isnan(latest["nan_last"])


def test_latest_metric_only_moves_forward(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_metric_points([MetricPoint(run_id, "m", 5.0, 100, 5), MetricPoint(run_id, "m", 3.0, 200, 3)])
    assert store.get_run(run_id).data.metrics["m"] == 5.0
    store.log_metric_points([MetricPoint(run_id, "m", 4.0, 300, 4)])  # older step, newer timestamp
    assert store.get_run(run_id).data.metrics["m"] == 5.0
    store.log_metric_points([MetricPoint(run_id, "m", 6.0, 50, 5)])  # same step, older timestamp
    assert store.get_run(run_id).data.metrics["m"] == 5.0
    store.log_metric_points([MetricPoint(run_id, "m", 7.0, 100, 5)])  # same step and timestamp: latest write
    assert store.get_run(run_id).data.metrics["m"] == 7.0
    store.log_metric_points([MetricPoint(run_id, "m", 8.0, 1, 6)])
    assert store.get_run(run_id).data.metrics["m"] == 8.0
    history = store.get_metric_history(run_id, "m")
    assert [(p.step, p.timestamp) for p in history] == [(3, 200), (4, 300), (5, 50), (5, 100), (5, 100), (6, 1)]


def test_log_metric_points_many_runs_atomic(store: SqlTrackingStore) -> None:
    first, second = _run(store), _run(store)
    points = [MetricPoint(run, "m", float(i), i, i) for i in range(1000) for run in (first, second)]
    store.log_metric_points(points)
    assert len(store.get_metric_history(first, "m")) == 1000
    assert store.get_run(second).data.metrics == {"m": 999.0}
    missing = uuid.uuid4().hex
    with pytest.raises(RunNotFound, match=missing):
        store.log_metric_points([MetricPoint(first, "n", 1.0, 1, 0), MetricPoint(missing, "n", 1.0, 1, 0)])
    store.delete_run(second)
    with pytest.raises(RunNotActive, match=second):
        store.log_metric_points([MetricPoint(first, "n", 1.0, 1, 0), MetricPoint(second, "n", 1.0, 1, 0)])
    assert store.get_metric_history(first, "n") == []
    store.log_metric_points([])


def test_metric_history_order_and_superseded(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_metric_points([MetricPoint(run_id, "m", float(s), t, s) for s, t in [(2, 5), (1, 9), (2, 1), (0, 0)]])
    assert [(p.step, p.timestamp) for p in store.get_metric_history(run_id, "m")] == [(0, 0), (1, 9), (2, 1), (2, 5)]
    with store._db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE metrics SET superseded = :t WHERE run_uuid = :r AND step = 2"), {"t": True, "r": run_id}
        )
    assert [p.step for p in store.get_metric_history(run_id, "m")] == [0, 1]
    assert [p.step for p in store.get_metric_history(run_id, "m", include_superseded=True)] == [0, 1, 2, 2]
    assert store.get_metric_history(run_id, "other") == []
    with pytest.raises(RunNotFound):
        store.get_metric_history(uuid.uuid4().hex, "m")


def test_tags_set_overwrite_delete(store: SqlTrackingStore) -> None:
    run_id = _run(store, name="old")
    store.log_batch(run_id, tags=[RunTag("t", "1")])
    store.log_batch(run_id, tags=[RunTag("t", "2"), RunTag("mlflow.runName", "renamed")])
    run = store.get_run(run_id)
    assert run.data.tags["t"] == "2"
    assert run.info.run_name == "renamed"
    store.delete_tag(run_id, "t")
    assert "t" not in store.get_run(run_id).data.tags
    with pytest.raises(NotFound, match="'t'"):
        store.delete_tag(run_id, "t")
    store.delete_run(run_id)
    with pytest.raises(RunNotActive):
        store.delete_tag(run_id, "mlflow.runName")


def test_user_thread_and_batcher_thread_share_the_store(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    errors: list[BaseException] = []

    def batcher() -> None:
        try:
            for batch in range(20):
                store.log_metric_points([MetricPoint(run_id, "loss", 1.0, batch, batch * 100 + i) for i in range(100)])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=batcher)
    thread.start()
    for i in range(30):
        store.log_batch(run_id, params=[Param(f"p{i}", str(i))], tags=[RunTag("progress", str(i))])
        store.get_run(run_id)
    thread.join()
    assert errors == []
    run = store.get_run(run_id)
    assert len(run.data.params) == 30 and run.data.tags["progress"] == "29"
    assert len(store.get_metric_history(run_id, "loss")) == 2000
