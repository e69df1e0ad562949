"""The RegistryStore contract, run against SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cairn.errors import InvalidArgument, NotFound, ResourceAlreadyExists, SchemaOutOfDate
from cairn.registry.entities import ModelVersionStatus, Stage
from cairn.store._sql import SqlTrackingStore
from cairn.store._sql import migrate as migrate_module
from cairn.store._sql.registry import SqlRegistryStore

RUN_ID = "0123456789abcdef0123456789abcdef"


def _count(registry: SqlRegistryStore, table: str) -> int:
    with registry._db.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# -- opening -------------------------------------------------------------------------------------


def test_shares_the_tracking_engine(tracking: SqlTrackingStore, registry: SqlRegistryStore) -> None:
    assert registry._db is tracking._db
    registry.close()  # does not close the shared engine
    registry.create_registered_model("still-open")
    assert tracking.get_experiment("0").name == "Default"


def test_standalone_store_creates_the_schema_of_an_empty_database(db_url: str, backend: str) -> None:
    registry = SqlRegistryStore(db_url)
    try:
        assert registry.create_model_version("m", "s3://b/m").version == "1"
    finally:
        registry.close()
    assert migrate_module.current_revision(db_url) == migrate_module.HEAD_REVISION


def test_standalone_store_refuses_an_out_of_date_schema(
    tracking: SqlTrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate_module, "HEAD_REVISION", "0099")
    with pytest.raises(SchemaOutOfDate, match="cairn db upgrade"):
        SqlRegistryStore(tracking.db_uri)


# -- registered models ---------------------------------------------------------------------------


def test_create_and_get_registered_model(registry: SqlRegistryStore) -> None:
    created = registry.create_registered_model("churn", tags={"team": "growth"}, description="churn model")
    assert (created.name, created.description, created.tags) == ("churn", "churn model", {"team": "growth"})
    got = registry.get_registered_model("churn")
    assert got.tags == {"team": "growth"} and got.description == "churn model"
    assert got.creation_timestamp == created.creation_timestamp > 0
    assert got.latest_versions == [] and got.aliases == {}


def test_duplicate_name_is_refused(registry: SqlRegistryStore) -> None:
    registry.create_registered_model("churn")
    with pytest.raises(ResourceAlreadyExists, match="'churn' already exists"):
        registry.create_registered_model("churn")


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "must not be empty"), ("  ", "must not be empty"), ("a/b", "'/'"), ("a@b", "'@'"), (3, "must be a string")],
)
def test_invalid_names_are_refused(registry: SqlRegistryStore, name: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        registry.create_registered_model(name)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=message):
        registry.create_model_version(name, "s3://b/m")  # type: ignore[arg-type]


def test_unknown_model_is_not_found(registry: SqlRegistryStore) -> None:
    for call in (
        lambda: registry.get_registered_model("nope"),
        lambda: registry.delete_registered_model("nope"),
        lambda: registry.rename_registered_model("nope", "other"),
        lambda: registry.update_registered_model("nope", "d"),
        lambda: registry.set_registered_model_tag("nope", "k", "v"),
        lambda: registry.get_model_version("nope", 1),
        lambda: registry.get_latest_versions("nope"),
        lambda: registry.get_model_version_by_alias("nope", "champion"),
    ):
        with pytest.raises(NotFound, match="'nope' does not exist"):
            call()


def test_search_registered_models_by_pattern_and_name(registry: SqlRegistryStore) -> None:
    for name in ("churn-a", "churn-b", "Churn-C", "fraud", "100%_sure"):
        registry.create_registered_model(name)
    assert [m.name for m in registry.search_registered_models()] == sorted(
        ["churn-a", "churn-b", "Churn-C", "fraud", "100%_sure"]
    )
    assert [m.name for m in registry.search_registered_models("churn%")] == ["churn-a", "churn-b"]
    assert [m.name for m in registry.search_registered_models("churn%", case_sensitive=False)] == [
        "Churn-C",
        "churn-a",
        "churn-b",
    ]
    assert [m.name for m in registry.search_registered_models("100\\%\\_%")] == ["100%_sure"]
    assert [m.name for m in registry.search_registered_models(name="fraud")] == ["fraud"]
    assert [m.name for m in registry.search_registered_models("churn%", max_results=1)] == ["churn-a"]
    with pytest.raises(InvalidArgument, match="max_results"):
        registry.search_registered_models(max_results=0)


def test_search_results_carry_tags_aliases_and_latest_versions(registry: SqlRegistryStore) -> None:
    registry.create_model_version("a", "s3://b/a1")
    registry.create_model_version("a", "s3://b/a2")
    registry.create_model_version("b", "s3://b/b1")
    registry.transition_model_version_stage("a", 1, Stage.PRODUCTION)
    registry.set_registered_model_alias("a", "champion", 1)
    registry.set_registered_model_tag("b", "team", "x")
    a, b = registry.search_registered_models()
    assert {(v.version, v.current_stage) for v in a.latest_versions} == {("1", "Production"), ("2", "None")}
    assert a.aliases == {"champion": "1"}
    assert b.tags == {"team": "x"} and [v.version for v in b.latest_versions] == ["1"]


def test_update_and_tags_of_registered_model(registry: SqlRegistryStore) -> None:
    registry.create_registered_model("m")
    before = registry.get_registered_model("m").last_updated_timestamp
    updated = registry.update_registered_model("m", "new description")
    assert updated.description == "new description" and updated.last_updated_timestamp >= before
    registry.set_registered_model_tag("m", "k", "v1")
    registry.set_registered_model_tag("m", "k", "v2")
    registry.set_registered_model_tag("m", "other", "x")
    assert registry.get_registered_model("m").tags == {"k": "v2", "other": "x"}
    registry.delete_registered_model_tag("m", "k")
    registry.delete_registered_model_tag("m", "never-set")  # ignored, as in MLflow
    assert registry.get_registered_model("m").tags == {"other": "x"}
    with pytest.raises(InvalidArgument, match="tag key"):
        registry.set_registered_model_tag("m", "", "v")


def test_rename_carries_versions_tags_and_aliases(registry: SqlRegistryStore) -> None:
    registry.create_registered_model("old", tags={"team": "t"})
    registry.create_model_version("old", "s3://b/1", tags={"k": "v"})
    registry.create_model_version("old", "s3://b/2")
    registry.set_registered_model_alias("old", "champion", 2)
    renamed = registry.rename_registered_model("old", "new")
    assert renamed.name == "new" and renamed.tags == {"team": "t"} and renamed.aliases == {"champion": "2"}
    assert [v.name for v in renamed.latest_versions] == ["new"]
    assert registry.get_model_version("new", 1).tags == {"k": "v"}
    assert registry.get_model_version_by_alias("new", "champion").source == "s3://b/2"
    with pytest.raises(NotFound):
        registry.get_registered_model("old")
    assert registry.create_model_version("new", "s3://b/3").version == "3"  # numbering continues
    registry.create_registered_model("taken")
    with pytest.raises(ResourceAlreadyExists, match="'taken' already exists"):
        registry.rename_registered_model("new", "taken")


def test_delete_registered_model_removes_everything(registry: SqlRegistryStore) -> None:
    registry.create_registered_model("m", tags={"a": "b"})
    registry.create_model_version("m", "s3://b/1", tags={"k": "v"})
    registry.set_registered_model_alias("m", "champion", 1)
    registry.delete_registered_model("m")
    for table in (
        "registered_models",
        "registered_model_tags",
        "model_versions",
        "model_version_tags",
        "registered_model_aliases",
    ):
        assert _count(registry, table) == 0, table
    assert registry.create_model_version("m", "s3://b/again").version == "1"  # a new model starts at 1


# -- versions ------------------------------------------------------------------------------------


def test_create_model_version_records_source_run_and_status(registry: SqlRegistryStore) -> None:
    created = registry.create_model_version(
        "m", "s3://b/model", run_id=RUN_ID, tags={"k": "v"}, description="d", user_id="alice", run_link="http://x"
    )
    assert (created.name, created.version, created.source, created.run_id) == ("m", "1", "s3://b/model", RUN_ID)
    assert created.status == ModelVersionStatus.READY.value and created.current_stage == "None"
    got = registry.get_model_version("m", "1")
    assert got == created
    assert registry.get_model_version("m", 1) == created
    assert got.creation_timestamp > 0 and got.user_id == "alice" and got.run_link == "http://x"


def test_versions_count_up_and_numbers_are_not_reused(registry: SqlRegistryStore) -> None:
    assert [registry.create_model_version("m", f"s3://b/{i}").version for i in range(3)] == ["1", "2", "3"]
    registry.delete_model_version("m", 3)
    assert registry.create_model_version("m", "s3://b/x").version == "4"
    assert registry.create_model_version("other", "s3://b/o").version == "1"


def test_create_model_version_validates_its_arguments(registry: SqlRegistryStore) -> None:
    with pytest.raises(InvalidArgument, match="source"):
        registry.create_model_version("m", "")
    with pytest.raises(InvalidArgument, match="run_id"):
        registry.create_model_version("m", "s3://b/m", run_id="x" * 33)
    assert _count(registry, "registered_models") == 0  # nothing was created by the failed calls


@pytest.mark.parametrize("version", ["abc", 0, -1, "1.5", True, 2**31])
def test_invalid_version_numbers(registry: SqlRegistryStore, version: object) -> None:
    registry.create_model_version("m", "s3://b/m")
    with pytest.raises(InvalidArgument, match="model version"):
        registry.get_model_version("m", version)  # type: ignore[arg-type]


def test_unknown_version_is_not_found(registry: SqlRegistryStore) -> None:
    registry.create_model_version("m", "s3://b/m")
    for call in (
        lambda: registry.get_model_version("m", 7),
        lambda: registry.update_model_version("m", 7, "d"),
        lambda: registry.delete_model_version("m", 7),
        lambda: registry.set_model_version_tag("m", 7, "k", "v"),
        lambda: registry.transition_model_version_stage("m", 7, "Staging"),
        lambda: registry.set_registered_model_alias("m", "champion", 7),
    ):
        with pytest.raises(NotFound, match="'m' has no version 7"):
            call()


def test_search_model_versions(registry: SqlRegistryStore) -> None:
    other_run = "f" * 32
    registry.create_model_version("a", "s3://b/a1", run_id=RUN_ID)
    registry.create_model_version("a", "s3://b/a2", run_id=other_run)
    registry.create_model_version("b", "s3://b/b1", run_id=RUN_ID)

    def versions(**kwargs: object) -> list[tuple[str, str]]:
        return [(v.name, v.version) for v in registry.search_model_versions(**kwargs)]  # type: ignore[arg-type]

    assert versions() == [("a", "2"), ("a", "1"), ("b", "1")]
    assert versions(name="a") == [("a", "2"), ("a", "1")]
    assert versions(run_id=RUN_ID) == [("a", "1"), ("b", "1")]
    assert versions(run_id=[RUN_ID, other_run]) == [("a", "2"), ("a", "1"), ("b", "1")]
    assert versions(run_id=[]) == []
    assert versions(name="a", run_id=RUN_ID) == [("a", "1")]
    assert versions(name_like="A", case_sensitive=False) == [("a", "2"), ("a", "1")]
    assert versions(max_results=1) == [("a", "2")]


def test_update_and_tags_of_versions(registry: SqlRegistryStore) -> None:
    registry.create_model_version("m", "s3://b/1")
    assert registry.update_model_version("m", 1, "better").description == "better"
    registry.set_model_version_tag("m", "1", "k", "v")
    registry.set_model_version_tag("m", 1, "k", "v2")
    registry.set_model_version_tag("m", 1, "n", 3)  # type: ignore[arg-type]
    assert registry.get_model_version("m", 1).tags == {"k": "v2", "n": "3"}
    registry.delete_model_version_tag("m", 1, "k")
    registry.delete_model_version_tag("m", 1, "absent")
    assert registry.get_model_version("m", 1).tags == {"n": "3"}


def test_delete_version_removes_its_tags_and_aliases_only(registry: SqlRegistryStore) -> None:
    registry.create_model_version("m", "s3://b/1", tags={"k": "v"})
    registry.create_model_version("m", "s3://b/2", tags={"k": "w"})
    registry.set_registered_model_alias("m", "champion", 1)
    registry.set_registered_model_alias("m", "challenger", 2)
    registry.delete_model_version("m", 1)
    assert registry.get_registered_model("m").aliases == {"challenger": "2"}
    with pytest.raises(NotFound, match="no alias 'champion'"):
        registry.get_model_version_by_alias("m", "champion")
    assert registry.get_model_version("m", 2).tags == {"k": "w"}
    assert _count(registry, "model_version_tags") == 1


# -- stages --------------------------------------------------------------------------------------


def test_transition_stage_without_archiving(registry: SqlRegistryStore) -> None:
    for i in range(3):
        registry.create_model_version("m", f"s3://b/{i}")
    registry.transition_model_version_stage("m", 1, "production")
    moved = registry.transition_model_version_stage("m", 2, Stage.PRODUCTION)
    assert moved.current_stage == "Production"
    stages = {v.version: v.current_stage for v in registry.search_model_versions("m")}
    assert stages == {"1": "Production", "2": "Production", "3": "None"}


def test_transition_with_archive_existing_versions(registry: SqlRegistryStore) -> None:
    for i in range(4):
        registry.create_model_version("m", f"s3://b/{i}")
    registry.create_model_version("other", "s3://b/o")
    registry.transition_model_version_stage("other", 1, "Production")
    registry.transition_model_version_stage("m", 1, "Production")
    registry.transition_model_version_stage("m", 2, "Production")
    registry.transition_model_version_stage("m", 3, "Staging")
    registry.transition_model_version_stage("m", 4, "Production", archive_existing_versions=True)
    stages = {v.version: v.current_stage for v in registry.search_model_versions("m")}
    assert stages == {"1": "Archived", "2": "Archived", "3": "Staging", "4": "Production"}
    assert registry.get_model_version("other", 1).current_stage == "Production"  # other models untouched
    with pytest.raises(InvalidArgument, match="Staging or Production"):
        registry.transition_model_version_stage("m", 3, "Archived", archive_existing_versions=True)
    with pytest.raises(InvalidArgument, match="unknown stage 'Prod'"):
        registry.transition_model_version_stage("m", 3, "Prod")


def test_get_latest_versions(registry: SqlRegistryStore) -> None:
    for i in range(5):
        registry.create_model_version("m", f"s3://b/{i}")
    registry.transition_model_version_stage("m", 1, "Production")
    registry.transition_model_version_stage("m", 2, "Production")
    registry.transition_model_version_stage("m", 3, "Staging")

    def latest(stages: list[str] | None) -> list[tuple[str, str]]:
        return [(v.current_stage, v.version) for v in registry.get_latest_versions("m", stages)]

    assert latest(None) == [("None", "5"), ("Staging", "3"), ("Production", "2")]
    assert latest(["production", "Staging"]) == [("Production", "2"), ("Staging", "3")]
    assert latest(["Archived"]) == []
    registry.create_registered_model("empty")
    assert registry.get_latest_versions("empty") == []


# -- aliases -------------------------------------------------------------------------------------


def test_alias_moves_between_versions(registry: SqlRegistryStore) -> None:
    registry.create_model_version("m", "s3://b/1")
    registry.create_model_version("m", "s3://b/2")
    registry.set_registered_model_alias("m", "champion", 1)
    assert registry.get_model_version_by_alias("m", "champion").version == "1"
    assert registry.get_model_version("m", 1).aliases == ["champion"]
    registry.set_registered_model_alias("m", "champion", "2")
    registry.set_registered_model_alias("m", "best", 2)
    assert registry.get_model_version_by_alias("m", "champion").version == "2"
    assert registry.get_model_version("m", 1).aliases == []
    assert registry.get_model_version("m", 2).aliases == ["best", "champion"]
    assert registry.get_registered_model("m").aliases == {"best": "2", "champion": "2"}
    registry.delete_registered_model_alias("m", "champion")
    registry.delete_registered_model_alias("m", "never-set")  # ignored, as in MLflow
    assert registry.get_registered_model("m").aliases == {"best": "2"}
    with pytest.raises(NotFound, match="'m' has no alias 'champion'"):
        registry.get_model_version_by_alias("m", "champion")


@pytest.mark.parametrize("alias", ["latest", "LATEST", "v3", "V12", "42", "has space", "a/b", "", "x" * 256])
def test_reserved_or_malformed_aliases_are_refused(registry: SqlRegistryStore, alias: str) -> None:
    registry.create_model_version("m", "s3://b/1")
    with pytest.raises(InvalidArgument, match="alias"):
        registry.set_registered_model_alias("m", alias, 1)
