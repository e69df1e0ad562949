"""Fixtures of the UI tests: a populated store shared by a module, the app and an HTTP test client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the UI needs the 'ui' extra (starlette, uvicorn)")

from starlette.testclient import TestClient

from cairn.store._sql.store import SqlTrackingStore
from cairn.store.base import TrackingStore
from cairn.tracking.client import Client
from cairn.ui.app import create_app
from tests.ui._data import Populated, populate

HOST = "127.0.0.1"
PORT = 5000
ORIGIN = f"http://{HOST}:{PORT}"
TOKEN = "test-csrf-token-0123456789abcdefghij"
CSRF_COOKIE = f"cairn_csrf={TOKEN}"


class StoreClient(Client):
    """A client on a store object of its own, outside the process-wide store cache: tests that
    reset cairn's global state between them cannot close it under a module-scoped fixture."""

    def __init__(self, store: TrackingStore) -> None:
        self._store = store
        self._batcher_instance = None


@dataclass
class UiEnv:
    client: StoreClient
    data: Populated
    root: Path
    http: TestClient

    def write_headers(self, **extra: str) -> dict[str, str]:
        """Headers of a legitimate state-changing request from the UI page (the CSRF token twice:
        the cookie /api/session set and the header the page sends)."""
        return {"Origin": ORIGIN, "X-Cairn-Token": TOKEN, "Cookie": CSRF_COOKIE, **extra}


def make_store(root: Path, db_url: str | None = None) -> SqlTrackingStore:
    return SqlTrackingStore(db_url or f"sqlite:///{root}/cairn.db", str(root / "artifacts"))


@pytest.fixture(scope="module")
def ui_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiEnv]:
    root = tmp_path_factory.mktemp("ui-store")
    store = make_store(root)
    client = StoreClient(store)
    data = populate(client, root / "scratch")
    app = create_app(client, host=HOST, port=PORT)
    with TestClient(app, base_url=ORIGIN) as http:
        yield UiEnv(client, data, root, http)
    store.close()


@pytest.fixture(scope="module")
def pg_ui_env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[UiEnv]:
    """The same populated store and app on PostgreSQL."""
    from tests.conftest import PgServer

    server: PgServer = request.getfixturevalue("pg_server")
    root = tmp_path_factory.mktemp("ui-store-pg")
    with server.new_database(prefix="cairn_ui_test") as url:
        store = make_store(root, url)
        client = StoreClient(store)
        data = populate(client, root / "scratch")
        app = create_app(client, host=HOST, port=PORT)
        with TestClient(app, base_url=ORIGIN) as http:
            yield UiEnv(client, data, root, http)
        store.close()
