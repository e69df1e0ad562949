"""Backend fixtures for the store suite: every contract test runs on SQLite and on PostgreSQL.

PostgreSQL tests use databases created here (uniquely named, dropped afterwards) on the server of
``CAIRN_TEST_POSTGRES_URL`` (default: local trust auth). An unreachable server skips them, except
under ``CI=true`` where it fails them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.store._sql import SqlTrackingStore
from tests.conftest import PgServer, truncate_all

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_store_url(pg_server: PgServer) -> Iterator[str]:
    """One database for the function-scoped PostgreSQL stores; emptied before each test."""
    with pg_server.new_database() as url:
        SqlTrackingStore(url, "/unused").close()  # create the schema once
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """URL of an empty-of-data store database (schema present on PostgreSQL, absent on SQLite)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/db/cairn.db"
    url: str = request.getfixturevalue("pg_store_url")
    truncate_all(url)
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
