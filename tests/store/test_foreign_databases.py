"""Databases that are not cairn's: cairn creates its schema only in an empty database or its own.

An application's database, an MLflow tracking database, or a database (PostgreSQL: default schema)
with an alembic revision of someone else is refused with :class:`ForeignStore` and left untouched;
every revision cairn ever shipped keeps opening (at head) or upgrading.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from cairn.errors import ForeignStore, SchemaOutOfDate, StoreError
from cairn.store._sql import HEAD_REVISION, SqlTrackingStore, current_revision, upgrade_schema
from cairn.store._sql import migrate as migrate_module
from cairn.store._sql.registry import SqlRegistryStore
from cairn.store._sql.schema import TABLE_NAMES
from tests.conftest import PgServer, driver_url

_MLFLOW_SCRIPT = """
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
experiment_id = client.create_experiment("from-mlflow")
run = client.create_run(experiment_id)
client.log_metric(run.info.run_id, "loss", 0.5, step=1)
"""


def _engine(url: str) -> sa.Engine:
    parsed = sa.make_url(driver_url(url))
    if parsed.get_backend_name() == "sqlite":
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(parsed)


def _execute(url: str, *statements: str) -> None:
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def _snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every table with its rows: what must not change when cairn refuses a database."""
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            names = sa.inspect(connection).get_table_names()
            return {
                name: sorted((tuple(row) for row in connection.execute(sa.text(f'SELECT * FROM "{name}"'))), key=repr)
                for name in names
            }
    finally:
        engine.dispose()


def _refusals(url: str) -> list[StoreError]:
    """What each way of opening the database raises (tracking store, registry store, `cairn db upgrade`)."""
    errors: list[StoreError] = []
    for open_it in (
        lambda: SqlTrackingStore(url, "/tmp/unused").close(),
        lambda: SqlRegistryStore(url).close(),
        lambda: upgrade_schema(url),
    ):
        with pytest.raises(StoreError) as caught:
            open_it()
        errors.append(caught.value)
    return errors


# -- an application's database -----------------------------------------------------------------------


def test_an_application_database_is_refused_naming_its_tables_and_left_untouched(empty_db_url: str) -> None:
    _execute(
        empty_db_url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(100))",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)",
        "INSERT INTO users VALUES (1, 'a@example.com')",
    )
    before = _snapshot(empty_db_url)
    for error in _refusals(empty_db_url):
        assert type(error) is ForeignStore
        assert "not created by cairn" in str(error) and "orders, users" in str(error)
        assert "newer cairn" not in str(error)
    assert _snapshot(empty_db_url) == before
    assert current_revision(empty_db_url) is None
    if empty_db_url.startswith("sqlite"):  # WAL is a persistent setting of the file: not cairn's to change here
        path = Path(str(sa.make_url(empty_db_url).database))
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert not path.with_name(path.name + "-wal").exists()


def test_an_application_database_with_its_own_alembic_revision_is_not_taken_for_a_newer_cairn(
    empty_db_url: str,
) -> None:
    _execute(
        empty_db_url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY)",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
        "INSERT INTO alembic_version VALUES ('3f2a9c1b7d4e')",
    )
    before = _snapshot(empty_db_url)
    for error in _refusals(empty_db_url):
        assert type(error) is ForeignStore
        assert "users" in str(error) and "'3f2a9c1b7d4e'" in str(error) and "newer cairn" not in str(error)
    assert _snapshot(empty_db_url) == before


def test_an_application_table_next_to_cairn_tables_without_revision_is_refused(empty_db_url: str) -> None:
    SqlTrackingStore(empty_db_url, "/tmp/unused").close()
    _execute(empty_db_url, "DROP TABLE alembic_version", "CREATE TABLE users (id INTEGER PRIMARY KEY)")
    with pytest.raises(ForeignStore, match="users"):
        SqlTrackingStore(empty_db_url, "/tmp/unused")


def test_a_view_counts_as_content(empty_db_url: str) -> None:
    _execute(empty_db_url, "CREATE VIEW answer AS SELECT 42 AS value")
    with pytest.raises(ForeignStore, match="answer"):
        SqlTrackingStore(empty_db_url, "/tmp/unused")


# -- MLflow ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow tracking database (SQLite), made once by the mlflow package in a subprocess."""
    pytest.importorskip("mlflow")
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    subprocess.run([sys.executable, "-c", _MLFLOW_SCRIPT, f"sqlite:///{path}"], check=True, capture_output=True)
    return path


@pytest.fixture
def mlflow_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An MLflow tracking database on each backend (PostgreSQL: a new database, dropped afterwards)."""
    if backend == "sqlite":
        copy = tmp_path / "mlflow.db"
        shutil.copy(request.getfixturevalue("mlflow_sqlite_file"), copy)
        yield f"sqlite:///{copy}"
        return
    pytest.importorskip("mlflow")
    server: PgServer = request.getfixturevalue("pg_server")
    with server.new_database("cairn_mlflow_test") as url:
        subprocess.run([sys.executable, "-c", _MLFLOW_SCRIPT, driver_url(url)], check=True, capture_output=True)
        yield url


def test_an_mlflow_database_is_refused_with_a_pointer_to_import_mlflow(mlflow_url: str) -> None:
    before = _snapshot(mlflow_url)
    assert "runs" in before and "experiments" in before
    for error in _refusals(mlflow_url):
        message = str(error)
        assert type(error) is ForeignStore
        assert "MLflow tracking database" in message and "newer cairn" not in message
        assert f"`cairn import-mlflow --from {mlflow_url} --to " in message
    assert _snapshot(mlflow_url) == before


# -- PostgreSQL schemas ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_schema_with_foreign_tables_is_refused_and_an_empty_schema_next_to_it_is_used(
    pg_server: PgServer,
) -> None:
    with pg_server.new_database("cairn_schema_test") as url:
        app, own = f"app_{uuid.uuid4().hex[:6]}", f"cairn_{uuid.uuid4().hex[:6]}"
        _execute(url, f"CREATE SCHEMA {app}", f"CREATE SCHEMA {own}", f"CREATE TABLE {app}.users (id INTEGER)")
        in_app = f"{url}?options=-csearch_path%3D{app}"
        with pytest.raises(ForeignStore, match="default schema holds tables users"):
            SqlTrackingStore(in_app, "/tmp/unused")
        assert _snapshot(in_app) == {"users": []}
        store = SqlTrackingStore(f"{url}?options=-csearch_path%3D{own}", "/tmp/artifacts")
        try:
            assert store.get_experiment("0").name == "Default"
        finally:
            store.close()
        engine = _engine(url)
        try:
            with engine.connect() as connection:
                inspector = sa.inspect(connection)
                assert inspector.get_table_names(schema=app) == ["users"]
                assert set(inspector.get_table_names(schema=own)) == TABLE_NAMES | {"alembic_version"}
        finally:
            engine.dispose()


# -- cairn's own databases, at every revision it shipped ---------------------------------------------


def _revisions() -> list[str]:
    script = migrate_module._script()
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


@pytest.mark.parametrize("revision", _revisions())
def test_a_store_of_every_shipped_revision_opens_or_upgrades(
    empty_db_url: str, artifact_root: str, revision: str
) -> None:
    engine = _engine(empty_db_url)
    try:
        with engine.begin() as connection:
            command.upgrade(migrate_module.alembic_config(connection), revision)
    finally:
        engine.dispose()
    if revision != HEAD_REVISION:
        with pytest.raises(SchemaOutOfDate, match="cairn db upgrade"):
            SqlTrackingStore(empty_db_url, artifact_root)
        assert upgrade_schema(empty_db_url) == (revision, HEAD_REVISION)
    store = SqlTrackingStore(empty_db_url, artifact_root)
    try:
        assert store.get_experiment("0").name == "Default"
    finally:
        store.close()
    SqlRegistryStore(empty_db_url).close()
    assert current_revision(empty_db_url) == HEAD_REVISION
