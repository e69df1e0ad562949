"""A live ``cairn server --auth`` for the auth tests: users with tokens, and an HTTP helper."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from cairn.server.app import create_server_app
from cairn.server.auth.permissions import Permission, ResourceKind
from cairn.server.auth.users import UserStore, user_store_for
from cairn.tracking.client import Client
from tests.server.conftest import free_port, run_app


@dataclass
class AuthServer:
    """A live server with auth on: its ``url``, the cairn ``client`` of its store, its ``users`` and an admin token."""

    url: str
    client: Client
    users: UserStore
    admin: str
    artifact_root: str

    def user(
        self, name: str, *, experiments: dict[str, str] | None = None, models: dict[str, str] | None = None
    ) -> str:
        """Create a (non-admin) user with grants ({id: "READ"}, {name: "EDIT"}); returns its token."""
        token = self.users.add(name)
        for experiment_id, level in (experiments or {}).items():
            self.users.grant(name, ResourceKind.EXPERIMENT, experiment_id, Permission.parse(level))
        for model, level in (models or {}).items():
            self.users.grant(name, ResourceKind.REGISTERED_MODEL, model, Permission.parse(level))
        return token

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        json: Any = None,
        params: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """One request to ``path`` (``/api/2.0/mlflow/`` is prepended to a path without a leading ``/``)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        url = self.url + (path if path.startswith("/") else "/api/2.0/mlflow/" + path)
        return httpx.request(
            method, url, json=json, params=params, content=content, headers=sent, auth=auth, timeout=30
        )


@contextmanager
def serve_auth(client: Client, artifact_root: str) -> Iterator[AuthServer]:
    """``client``'s store served with ``auth=True`` in a uvicorn thread, with an admin ``root``."""
    port = free_port()
    app = create_server_app(client, artifact_root=artifact_root, port=port, auth=True)
    users = user_store_for(client)
    admin = users.add("root", admin=True)
    try:
        with run_app(app, port):
            yield AuthServer(f"http://127.0.0.1:{port}", client, users, admin, artifact_root)
    finally:
        client.flush()
        client.store.close()
