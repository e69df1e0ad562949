"""Fixtures for ``cairn server`` tests: a real uvicorn server on a free loopback port, in a thread.

``server`` serves a fresh SQLite store; ``db_server`` the suite's ``db_url`` backends (SQLite and
PostgreSQL). ``mlflow_tracking`` points the real mlflow client at ``server`` and leaves no global
tracking URI, active run or env var behind.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from cairn.server.app import API_MODULES, create_server_app
from cairn.tracking.client import Client


@dataclass
class RunningServer:
    """A live server: ``url`` (``http://127.0.0.1:PORT``), the cairn ``client`` of its store, its ``artifact_root``."""

    url: str
    client: Client
    artifact_root: str
    app: Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    client: Client,
    artifact_root: str,
    *,
    serve_artifacts: bool = True,
    api_modules: Sequence[str] = API_MODULES,
) -> Iterator[RunningServer]:
    """Run the server app over ``client`` in a uvicorn thread until the block ends."""
    port = free_port()
    app = create_server_app(
        client, serve_artifacts=serve_artifacts, artifact_root=artifact_root, port=port, api_modules=api_modules
    )
    try:
        with run_app(app, port):
            yield RunningServer(f"http://127.0.0.1:{port}", client, artifact_root, app)
    finally:
        client.flush()
        client.store.close()


@contextmanager
def run_app(app: Any, port: int) -> Iterator[None]:
    """Serve the ASGI ``app`` on 127.0.0.1:``port`` in a uvicorn thread until the block ends."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"cairn-test-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server over a fresh SQLite store under ``tmp_path/server``."""
    root = tmp_path / "server"
    artifact_root = str(root / "artifacts")
    client = Client(f"sqlite:///{root}/cairn.db", artifact_root)
    with serve(client, artifact_root) as running:
        yield running


@pytest.fixture
def db_server(db_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """A server over the suite's ``db_url`` store (SQLite and PostgreSQL)."""
    artifact_root = str(tmp_path / "server-artifacts")
    client = Client(db_url, artifact_root)
    with serve(client, artifact_root) as running:
        yield running


@pytest.fixture
def mlflow_tracking(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    """The real mlflow client (fluent and MlflowClient) pointed at ``server``; reset afterwards."""
    import mlflow

    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(key, None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mlflow.set_tracking_uri(server.url)
    try:
        yield server
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        _reset_mlflow()
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:  # mlflow.set_experiment sets some itself
            if key not in before:
                del os.environ[key]
        os.environ.update(before)


def _reset_mlflow() -> None:
    import mlflow
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets the URI and MLFLOW_TRACKING_URI
