"""``cairn server``: refusing an unauthenticated public bind, and serving a store from a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cairn.cli import main
from cairn.tracking.client import Client
from tests.server.conftest import free_port, wait_until_up


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_refuses_public_host_without_insecure_flag(host: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--store", str(tmp_path / "store"), "server", "--host", host])
    assert result.exit_code == 2
    assert "no authentication" in result.output and "--insecure-no-auth" in result.output
    assert not (tmp_path / "store").exists()  # refused before opening anything


@pytest.mark.parametrize("variable", ["CAIRN_TRACKING_URI", "MLFLOW_TRACKING_URI"])
@pytest.mark.parametrize("command", ["server", "ui"])
def test_refuses_to_front_another_tracking_server(variable: str, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client machine's MLFLOW_TRACKING_URI=http://... must not make cairn server relay to (or call) itself."""
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    result = CliRunner().invoke(main, [command])
    assert result.exit_code != 0
    assert "is a tracking server" in result.output and "--store" in result.output


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_the_configured_store(workers: int, tmp_path: Path) -> None:
    port = free_port()
    store, artifacts = f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "artifacts")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CAIRN_TRACKING", "CAIRN_ARTIFACT"))}
    command = [sys.executable, "-m", "cairn.cli", "--store", store, "--artifact-root", artifacts]
    command += ["server", "--port", str(port), "--workers", str(workers)]
    out_log, err_log = tmp_path / "server.out", tmp_path / "server.err"
    with open(out_log, "wb") as out, open(err_log, "wb") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, process, err_log, timeout=40)
        response = httpx.post(f"{base}/api/2.0/mlflow/experiments/create", json={"name": "from-cli"})
        experiment_id = response.json()["experiment_id"]
        shown = httpx.get(f"{base}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment_id}).json()
        assert shown["experiment"]["artifact_location"] == f"mlflow-artifacts:/{experiment_id}"
    finally:
        process.terminate()
        process.wait(timeout=30)
    out, err = out_log.read_text(), err_log.read_text()
    assert f"http://127.0.0.1:{port}" in out and "cairn.db" in out and artifacts in out, (out, err)
    experiment = Client(store, artifacts).get_experiment_by_name("from-cli")
    assert experiment is not None and experiment.artifact_location == f"{artifacts}/{experiment.experiment_id}"
