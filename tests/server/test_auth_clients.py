"""Real clients against ``cairn server --auth``: the mlflow 3 client (token, and user name + password) and
cairn's own client (CAIRN_TRACKING_TOKEN)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.tracking.client import Client
from tests.server.auth_support import AuthServer, serve_auth
from tests.server.conftest import mlflow_tracking_at

CREDENTIAL_VARS = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "CAIRN_TRACKING_TOKEN",
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuthServer]:
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    artifact_root = str(tmp_path / "server-artifacts")
    with serve_auth(Client(f"sqlite:///{tmp_path}/server/cairn.db", artifact_root), artifact_root) as running:
        yield running


@pytest.fixture
def mlflow_at(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuthServer]:
    with mlflow_tracking_at(server.url, monkeypatch):
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield server


def _fluent_run(tmp_path: Path, experiment: str) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    notes = tmp_path / "notes.txt"
    notes.write_text("trained")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.01)
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.set_tag("team", "vision")
        mlflow.log_artifact(str(notes))
    return str(run.info.run_id)


@pytest.mark.parametrize("credentials", ["token", "password"])
def test_mlflow_fluent_tracking_as_an_edit_user(
    mlflow_at: AuthServer, credentials: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = mlflow_at
    experiment_id = server.client.create_experiment("team")
    token = server.user("trainer", experiments={experiment_id: "EDIT"})
    if credentials == "token":
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    else:
        server.users.set_password("trainer", "trainer-password")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "trainer-password")
    run_id = _fluent_run(tmp_path, "team")
    run = server.client.get_run(run_id)
    assert run.info.experiment_id == experiment_id and run.info.status.value == "FINISHED"
    assert run.data.params == {"lr": "0.01"} and run.data.tags["team"] == "vision"
    assert [m.value for m in server.client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert [f.path for f in server.client.list_artifacts(run_id)] == ["notes.txt"]


def test_mlflow_gets_an_mlflow_exception_on_a_read_experiment(
    mlflow_at: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException

    server = mlflow_at
    experiment_id = server.client.create_experiment("look-only")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", server.user("watcher", experiments={experiment_id: "READ"}))
    with pytest.raises(MlflowException, match="PERMISSION_DENIED") as caught:
        _fluent_run(tmp_path, "look-only")
    assert "'watcher' has READ" in str(caught.value) and "needs EDIT" in str(caught.value)
    assert server.client.search_runs([experiment_id]).items == []
    import mlflow

    mlflow.end_run()
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    with pytest.raises(MlflowException, match=r"UNAUTHENTICATED.*MLFLOW_TRACKING_TOKEN"):
        mlflow.MlflowClient().get_experiment(experiment_id)


def test_an_mlflow_user_creating_an_experiment_can_use_it_and_others_cannot_see_it(
    mlflow_at: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    server = mlflow_at
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", server.user("founder"))
    run_id = _fluent_run(tmp_path, "brand-new")  # set_experiment creates it: the creator gets MANAGE
    mlflow.MlflowClient().delete_run(run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", server.user("outsider"))
    assert [e.name for e in mlflow.search_experiments()] == []


def test_cairn_client_logs_a_run_with_its_token(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import cairn
    from cairn.store.rest.errors import AccessDenied, AuthenticationFailed
    from cairn.tracking import config

    experiment_id = server.client.create_experiment("cairn-team")
    monkeypatch.setenv("CAIRN_TRACKING_TOKEN", server.user("cairn-user", experiments={experiment_id: "EDIT"}))
    cairn.set_tracking_uri(server.url)
    cairn.set_experiment("cairn-team")
    with cairn.start_run() as run:
        cairn.log_params({"lr": 0.1})
        for step in range(5):
            cairn.log_metric("loss", 0.1 * step, step=step)
    assert [m.step for m in server.client.get_metric_history(run.info.run_id, "loss")] == list(range(5))
    client = Client(server.url)
    with pytest.raises(AccessDenied, match=r"denied the request.*needs MANAGE"):
        client.delete_run(run.info.run_id)
    monkeypatch.delenv("CAIRN_TRACKING_TOKEN")
    config.reset()  # stores (and their credentials) are cached per URI
    with pytest.raises(AuthenticationFailed, match=f"tracking server {server.url} .*set CAIRN_TRACKING_TOKEN"):
        Client(server.url).get_run(run.info.run_id)
