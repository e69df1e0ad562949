"""Fixtures for ``cairn server`` tests: a real uvicorn server on a free loopback port, in a thread.

``server`` serves a fresh SQLite store; ``db_server`` the suite's ``db_url`` backends (SQLite and
PostgreSQL). ``mlflow_tracking`` points the real mlflow client at ``server`` and leaves no global
tracking URI, active run or env var behind (``mlflow_tracking_at`` does it for any server).

Server subprocesses: ``wait_until_up`` waits for one to answer; ``cairn_server_processes`` starts several
``cairn server`` processes on one store, waits for them all and always stops them.
"""

from __future__ import annotations

import os
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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
    with mlflow_tracking_at(server.url, monkeypatch):
        yield server


@contextmanager
def mlflow_tracking_at(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the real mlflow client at ``url`` for the block; then end its runs and restore mlflow and env."""
    import mlflow

    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(key, None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    try:
        yield
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


# -- server subprocesses -----------------------------------------------------------------------------


def wait_until_up(
    url: str, process: subprocess.Popen[Any], log: Path, *, timeout: float = 60.0, path: str = "/health"
) -> None:
    """Wait until the server ``process`` at ``url`` answers ``GET path`` with 200 (and, on ``/health``, ``OK``).

    Raises ``RuntimeError`` with the server's ``log`` if the process exits first or ``timeout`` seconds pass.
    Stopping the process is the caller's job.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server {url} exited with {process.returncode}:\n{log.read_text()}")
        try:
            answer = httpx.get(f"{url}{path}", timeout=1)
            if answer.status_code == 200 and (path != "/health" or answer.text == "OK"):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server {url} did not answer {path} within {timeout:.1f} s:\n{log.read_text()}")
        time.sleep(0.1)


@dataclass(frozen=True)
class ServerProcess:
    """A ``cairn server`` subprocess: its ``url``, the ``process``, and the ``log`` of its stdout and stderr."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def server_env(tmp_dir: Path) -> dict[str, str]:
    """The environment a server subprocess gets by default: no ``MLFLOW_*``/``CAIRN_*``, its own cache dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CAIRN_"))}
    env["CAIRN_CACHE_DIR"] = str(tmp_dir / "cache")
    return env


@contextmanager
def cairn_server_processes(
    store_url: str,
    artifact_root: str | None,
    tmp_dir: Path,
    servers: Sequence[Sequence[str]],
    env: dict[str, str] | None = None,
    *,
    timeout: float = 60.0,
) -> Iterator[list[ServerProcess]]:
    """Start one ``cairn server`` per entry of ``servers`` (its extra CLI args, e.g. ``["--workers", "2"]``).

    All serve ``store_url`` with ``artifact_root`` (``None``: no ``--artifact-root``), each on a free port, in
    ``tmp_dir`` (their working directory, and where ``server-a.log``, ``server-b.log``, ... go), with ``env``
    (default :func:`server_env`). Waits until every one is up (``timeout`` seconds for all), yields them, and
    on leaving the block, or if one fails to start, terminates them all, killing any still running after 20 s.
    """
    env = server_env(tmp_dir) if env is None else env
    started: list[ServerProcess] = []
    try:
        for index, args in enumerate(servers):
            port = free_port()
            log = tmp_dir / f"server-{string.ascii_lowercase[index]}.log"
            command = [sys.executable, "-m", "cairn.cli", "--store", store_url]
            if artifact_root is not None:
                command += ["--artifact-root", artifact_root]
            command += ["server", "--port", str(port), *args]
            with open(log, "wb") as out:
                process = subprocess.Popen(command, env=env, cwd=tmp_dir, stdout=out, stderr=subprocess.STDOUT)
            started.append(ServerProcess(f"http://127.0.0.1:{port}", process, log))
        deadline = time.monotonic() + timeout
        for server in started:
            wait_until_up(server.url, server.process, server.log, timeout=max(deadline - time.monotonic(), 0.0))
        yield started
    finally:
        for server in started:
            server.process.terminate()
        for server in started:
            try:
                server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
