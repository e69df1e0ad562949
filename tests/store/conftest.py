"""Backend fixtures for the store suite: every contract test runs on SQLite and on PostgreSQL.

PostgreSQL tests use databases created here (uniquely named, dropped afterwards) on the server of
``CAIRN_TEST_POSTGRES_URL`` (default: local trust auth). An unreachable server skips them, except
under ``CI=true`` where it fails them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from cairn.store._sql import SqlTrackingStore

PG_ADMIN_URL = os.environ.get("CAIRN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
_TABLES = "experiments, experiment_tags, runs, params, tags, metrics, latest_metrics"


def _driver_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@dataclass
class PgServer:
    """The test server: creates and drops throwaway databases."""

    admin: sa.Engine

    def database_url(self, name: str) -> str:
        return self.admin.url.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")

    @contextlib.contextmanager
    def new_database(self, prefix: str = "cairn_store_test") -> Iterator[str]:
        """Yield the URL of a new empty database; drop it afterwards."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield self.database_url(name)
        finally:
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    admin = sa.create_engine(
        _driver_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        admin.dispose()
        reason = f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {reason}")
        pytest.skip(reason)
    yield PgServer(admin)
    admin.dispose()


@pytest.fixture(scope="session")
def pg_store_url(pg_server: PgServer) -> Iterator[str]:
    """One database for the function-scoped PostgreSQL stores; emptied before each test."""
    with pg_server.new_database() as url:
        SqlTrackingStore(url, "/unused").close()  # create the schema once
        yield url


def _truncate(url: str) -> None:
    engine = sa.create_engine(_driver_url(url))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """URL of an empty-of-data store database (schema present on PostgreSQL, absent on SQLite)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/db/cairn.db"
    url: str = request.getfixturevalue("pg_store_url")
    _truncate(url)
    return url


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a database with no tables at all (a new PostgreSQL database per test)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/empty/cairn.db"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with server.new_database() as url:
        yield url


@pytest.fixture
def artifact_root(tmp_path: Path) -> str:
    return str(tmp_path / "artifacts")


@pytest.fixture
def store(db_url: str, artifact_root: str) -> Iterator[SqlTrackingStore]:
    """A fresh store with only the Default experiment, on each backend."""
    opened = SqlTrackingStore(db_url, artifact_root)
    yield opened
    opened.close()
