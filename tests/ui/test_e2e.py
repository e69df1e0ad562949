"""End-to-end: the real ``cairn ui`` command serves a prepared store and headless Chromium (Debian's
``/usr/bin/chromium``, driven by ``playwright-core`` from npm) uses every page.

Needs node, ``/usr/bin/chromium`` and ``npm ci`` run in ``tests/ui/e2e``. Without them the test
skips with the reason, except under ``CI=true`` where it fails. Screenshots go to
``test-artifacts/ui/``; with ``CAIRN_UPDATE_SCREENSHOTS=1`` the README ones are copied to
``docs/screenshots/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.tracking.client import Client
from tests.ui._data import Populated, populate

REPO = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).parent / "e2e"
CHROMIUM = os.environ.get("CAIRN_E2E_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "ui"
README_SHOTS = {"runs-table.png": "ui-runs-table.png", "metric-chart.png": "ui-metric-chart.png"}


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    if not (E2E_DIR / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core is not installed: run `npm ci` in {E2E_DIR}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def browser_ready() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires the browser tests to run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def served_store(tmp_path: Path, browser_ready: None) -> Iterator[tuple[str, Path, Populated]]:
    """`cairn ui` (the click command, in a subprocess) on a free loopback port over a populated store."""
    home = tmp_path / "store"
    client = Client(str(home))
    data = populate(client, tmp_path / "scratch")
    port = _free_port()
    env = {**os.environ, "CAIRN_TRACKING_URI": str(home)}
    env.pop("CAIRN_ARTIFACT_ROOT", None)
    command = [sys.executable, "-c", "from cairn.ui.cli import ui; ui()", "--port", str(port)]
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/session", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.stdout.read().decode() if server.stdout else ""
                    pytest.fail(f"cairn ui did not start on port {port}: {output}")
                time.sleep(0.1)
        yield url, home, data
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_every_page_in_headless_chromium(served_store: tuple[str, Path, Populated], tmp_path: Path) -> None:
    url, home, data = served_store
    live_update = (
        "import sys\n"
        "from cairn.tracking.client import Client\n"
        "client = Client(sys.argv[1])\n"
        "client.log_metric(sys.argv[2], 'loss', 0.01, step=99, synchronous=True)\n"
        "client.set_terminated(sys.argv[2], 'FINISHED')\n"
    )
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"live_command": [sys.executable, "-c", live_update, str(home), data.live]}))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        ["node", str(E2E_DIR / "run.mjs"), url, str(ARTIFACTS), str(scenario)],
        cwd=E2E_DIR,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON result from run.mjs:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    result = json.loads(lines[-1])
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert failed == [], "\n".join(failed)
    names = {c["name"] for c in result["checks"]}
    for expected in (
        "runs table shows every run",
        "an invalid filter shows an inline error with a caret at the position",
        "the table refreshes by itself when a running run ends",
        "the loss chart draws its line (canvas not blank)",
        "MLmodel preview shows the signature and the input example",
        "parallel coordinates draw one polyline per run",
        "restore brings it back",
        "lineage links to the source run",
    ):
        assert expected in names, f"check {expected!r} did not run"
    assert result["console_errors"] == [], result["console_errors"]
    assert result["dialogs"] == []
    for shot in README_SHOTS:
        assert (ARTIFACTS / shot).stat().st_size > 5_000
    if os.environ.get("CAIRN_UPDATE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        for source, name in README_SHOTS.items():
            shutil.copyfile(ARTIFACTS / source, target / name)
