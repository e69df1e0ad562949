"""Fixtures of the store suite: stores on each backend (``backend`` and ``db_url`` are in ``tests/conftest.py``).

``empty_db_url`` is a database with no tables at all: a new PostgreSQL database per test, created on the
server of ``CAIRN_TEST_POSTGRES_URL`` (default: local trust auth) and dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.store._sql import SqlTrackingStore
from tests.conftest import PgServer


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
