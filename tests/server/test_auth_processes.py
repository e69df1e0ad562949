"""``cairn server --auth`` as real processes: two servers (one with ``--workers 2``) on one PostgreSQL database
agree on users at once (a user removed, or a token rotated, through one is refused by all), and a server
started before any user exists says how to create one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PgServer
from tests.server.conftest import free_port


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CAIRN_"))}
    env["CAIRN_CACHE_DIR"] = str(tmp / "cache")
    return env


def _cairn(database_url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cairn.cli", "--store", database_url, *args]
    return subprocess.run(command, env=_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=60, check=False)


def _up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server {url} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).text == "OK":
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server {url} did not come up:\n{log.read_text()}")
        time.sleep(0.1)


@pytest.fixture
def two_servers(pg_server: PgServer, tmp_path: Path) -> Iterator[tuple[str, list[str], list[Path]]]:
    processes: list[subprocess.Popen[bytes]] = []
    with pg_server.new_database("cairn_auth_processes") as database_url:
        try:
            urls, logs = [], []
            for name, workers in (("a", 1), ("b", 2)):
                port = free_port()
                log = tmp_path / f"server-{name}.log"
                command = [sys.executable, "-m", "cairn.cli", "--store", database_url, "--artifact-root"]
                command += [
                    str(tmp_path / "artifacts"),
                    "server",
                    "--auth",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                ]
                with open(log, "wb") as out:
                    processes.append(
                        subprocess.Popen(
                            command, env=_env(tmp_path), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
                        )
                    )
                urls.append(f"http://127.0.0.1:{port}")
                logs.append(log)
            for url, process, log in zip(urls, processes, logs, strict=True):
                _up(url, process, log)
            yield database_url, urls, logs
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _get(url: str, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{url}/api/2.0/mlflow/experiments/search", json={}, headers=headers, timeout=30)


def test_servers_on_one_database_agree_on_users_at_once(
    two_servers: tuple[str, list[str], list[Path]], tmp_path: Path
) -> None:
    database_url, urls, logs = two_servers
    assert "cairn users add admin --admin" in logs[0].read_text()  # started with no users: says what to do
    added = _cairn(database_url, tmp_path, "users", "add", "alice")
    assert added.returncode == 0, added.stderr
    match = re.search(r"^token: (\S+)$", added.stdout, re.MULTILINE)
    assert match is not None
    token = match.group(1)
    for url in urls:
        for _ in range(4):  # several requests, so both workers of the second server answer some
            assert _get(url, token).status_code == 200
    rotated = _cairn(database_url, tmp_path, "users", "token", "alice")
    new = rotated.stdout.split("token: ")[1].strip()
    for url in urls:
        for _ in range(4):
            assert _get(url, token).status_code == 401
            assert _get(url, new).status_code == 200
    assert _cairn(database_url, tmp_path, "users", "remove", "alice").returncode == 0
    for url in urls:
        for _ in range(4):
            answer = _get(url, new)
            assert answer.status_code == 401 and answer.json()["error_code"] == "UNAUTHENTICATED"
        assert httpx.get(f"{url}/health", timeout=5).text == "OK"  # and the server keeps serving


def test_cairn_ui_with_auth_asks_for_credentials(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/cairn.db"
    port = free_port()
    log = tmp_path / "ui.log"
    command = [sys.executable, "-m", "cairn.cli", "--store", store, "ui", "--auth", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=_env(tmp_path), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_page(url, process, log)  # the UI alone has no /health
        assert "cairn users add NAME --admin --password" in log.read_text()
        assert httpx.get(f"{url}/api/experiments", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/session", timeout=10).json()["user"] is None
        added = _cairn(store, tmp_path, "users", "add", "root", "--admin")
        token = added.stdout.split("token: ")[1].strip()
        answer = httpx.get(f"{url}/api/experiments", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200, answer.text
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_for_page(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"cairn ui exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"cairn ui did not come up:\n{log.read_text()}")
        time.sleep(0.1)
