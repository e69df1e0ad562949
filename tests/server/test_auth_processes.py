"""``cairn server --auth`` as real processes: two servers (one with ``--workers 2``) on one PostgreSQL database
agree on users at once (a user removed, or a token rotated, through one is refused by all), and a server
started before any user exists says how to create one."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PgServer
from tests.server.conftest import cairn_server_processes, free_port, server_env, wait_until_up


def _cairn(database_url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cairn.cli", "--store", database_url, *args]
    return subprocess.run(
        command, env=server_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def two_servers(pg_server: PgServer, tmp_path: Path) -> Iterator[tuple[str, list[str], list[Path]]]:
    servers = [["--auth", "--workers", "1"], ["--auth", "--workers", "2"]]
    with (
        pg_server.new_database("cairn_auth_processes") as database_url,
        cairn_server_processes(database_url, str(tmp_path / "artifacts"), tmp_path, servers) as running,
    ):
        yield database_url, [s.url for s in running], [s.log for s in running]


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
        process = subprocess.Popen(
            command, env=server_env(tmp_path), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log, path="/")  # the UI alone has no /health
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
