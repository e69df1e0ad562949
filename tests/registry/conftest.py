"""Fixtures: the registry store on SQLite and PostgreSQL, and a client with the registry methods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.registry.client import RegistryMethods
from cairn.store._sql import SqlTrackingStore
from cairn.store._sql.registry import SqlRegistryStore
from cairn.tracking.client import Client


class RegistryTestClient(Client, RegistryMethods):
    """The tracking client with the registry mixin: what ``cairn.Client`` is once the mixin is wired in
    (this composition stays valid afterwards, when ``Client`` already derives from the mixin)."""


def make_client(tracking_uri: str | None = None, artifact_root: str | None = None) -> RegistryTestClient:
    return RegistryTestClient(tracking_uri, artifact_root)


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
