"""Fixtures: the registry store on SQLite and PostgreSQL, and a client with the registry methods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.registry.client import RegistryMethods
from cairn.store._sql import SqlTrackingStore
from cairn.store._sql.registry import SqlRegistryStore
from cairn.tracking.client import Client
from tests.conftest import PgServer, truncate_all

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class RegistryTestClient(Client, RegistryMethods):
    """The tracking client with the registry mixin: what ``cairn.Client`` is once the mixin is wired in
    (this composition stays valid afterwards, when ``Client`` already derives from the mixin)."""


def make_client(tracking_uri: str | None = None, artifact_root: str | None = None) -> RegistryTestClient:
    return RegistryTestClient(tracking_uri, artifact_root)


@pytest.fixture(scope="session")
def pg_registry_url(pg_server: PgServer) -> Iterator[str]:
    """One PostgreSQL database for the registry tests, emptied before each test."""
    with pg_server.new_database(prefix="cairn_registry_test") as url:
        SqlTrackingStore(url, "/unused").close()  # create the schema once
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty-of-data cairn database on each backend (no file yet on SQLite)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/db/cairn.db"
    url: str = request.getfixturevalue("pg_registry_url")
    truncate_all(url)
    return url


@pytest.fixture
def tracking(db_url: str, tmp_path: Path) -> Iterator[SqlTrackingStore]:
    opened = SqlTrackingStore(db_url, str(tmp_path / "artifacts"))
    yield opened
    opened.close()


@pytest.fixture
def registry(tracking: SqlTrackingStore) -> SqlRegistryStore:
    """A registry store sharing the tracking store's engine."""
    return SqlRegistryStore.from_tracking_store(tracking)


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> RegistryTestClient:
    """A client with tracking and registry methods on each backend."""
    return make_client(db_url, str(tmp_path / "artifacts"))
