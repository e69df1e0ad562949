"""The `ui` click command: binds loopback by default, refuses a public bind without --insecure-no-auth,
derives the accepted Host names, warns on a public bind. uvicorn.run is replaced, so nothing listens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import uvicorn
from click.testing import CliRunner

from cairn.ui.cli import ui
from cairn.ui.security import allowed_hosts_for


@click.group()
@click.option("--store")
@click.pass_context
def _root(ctx: click.Context, store: str | None) -> None:
    """Stands in for `cairn` (whose group passes --store / --artifact-root the same way)."""
    ctx.obj = {"store": store, "artifact_root": None}


_root.add_command(ui)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.update(app=app, **kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def test_defaults_bind_loopback_port_5000(served: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(_root, ["--store", str(tmp_path / "runs"), "ui"])
    assert result.exit_code == 0, result.output
    assert served["host"] == "127.0.0.1" and served["port"] == 5000
    app = served["app"]
    assert app.state.allowed_hosts == allowed_hosts_for("127.0.0.1", 5000)
    assert app.state.store_label == str(tmp_path / "runs" / "cairn.db")
    assert "http://127.0.0.1:5000/" in result.output and "warning" not in result.output


def test_ui_serves_mlflow_rest_api_to_api_clients(served: dict[str, Any], tmp_path: Path) -> None:
    """`cairn ui` is the server app: an MLflow client (no cookies, no Origin) can create an experiment."""
    from starlette.testclient import TestClient

    result = CliRunner().invoke(_root, ["--store", str(tmp_path / "runs"), "ui"])
    assert result.exit_code == 0, result.output
    with TestClient(served["app"], base_url="http://127.0.0.1:5000") as http:
        created = http.post("/api/2.0/mlflow/experiments/create", json={"name": "from-mlflow-client"})
        assert created.status_code == 200, created.text
        got = http.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "from-mlflow-client"})
        assert got.json()["experiment"]["experiment_id"] == created.json()["experiment_id"]


def test_public_bind_warns_and_accepts_extra_host_names(served: dict[str, Any], tmp_path: Path) -> None:
    args = ["--store", str(tmp_path / "runs"), "ui", "--host", "0.0.0.0", "--port", "8123", "--allow-host", "ml-box"]
    result = CliRunner().invoke(_root, [*args, "--insecure-no-auth"])
    assert result.exit_code == 0, result.output
    assert "no authentication" in result.output
    hosts = served["app"].state.allowed_hosts
    assert {"ml-box:8123", "localhost:8123", "127.0.0.1:8123"} <= hosts and "0.0.0.0:8123" not in hosts


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "ml-box.example.org"])
def test_refuses_public_host_without_insecure_flag(host: str, served: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(_root, ["--store", str(tmp_path / "runs"), "ui", "--host", host])
    assert result.exit_code == 2, result.output
    assert f"refusing to bind to {host}" in result.output and "--insecure-no-auth" in result.output
    assert not served  # nothing served
    assert not (tmp_path / "runs").exists()  # refused before the store was opened


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_flag(host: str, served: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(_root, ["--store", str(tmp_path / "runs"), "ui", "--host", host, "--port", "8124"])
    assert result.exit_code == 0, result.output
    assert served["host"] == host and "warning" not in result.output


def test_port_zero_picks_a_free_port(served: dict[str, Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(_root, ["--store", str(tmp_path / "runs"), "ui", "--port", "0"])
    assert result.exit_code == 0, result.output
    port = served["port"]
    assert port > 0 and f"127.0.0.1:{port}" in served["app"].state.allowed_hosts


def test_help_names_the_options() -> None:
    result = CliRunner().invoke(_root, ["ui", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--allow-host", "--open", "--insecure-no-auth"):
        assert option in result.output
