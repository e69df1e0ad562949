"""The whole ``cairn server`` app (tracking, registry, artifacts, UI) serving one mlflow workflow."""

from __future__ import annotations

from pathlib import Path

import httpx
import mlflow

from tests.server.conftest import RunningServer


def test_mlflow_run_with_artifacts_through_the_whole_app(mlflow_tracking: RunningServer, tmp_path: Path) -> None:
    mlflow.set_experiment("whole-app")
    with mlflow.start_run() as run:
        mlflow.log_params({"lr": 0.1, "epochs": 2})
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_text("hello from mlflow", "notes/readme.txt")
    run_id = run.info.run_id
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/readme.txt") == "hello from mlflow"

    client = mlflow_tracking.client  # cairn, reading the server's store and artifact root directly
    assert client.get_run(run_id).data.params == {"lr": "0.1", "epochs": "2"}
    local = client.download_artifacts(run_id, "notes/readme.txt", tmp_path / "out")
    assert Path(local).read_text() == "hello from mlflow"

    registered = mlflow.MlflowClient().create_registered_model("whole-app-model")
    assert registered.name == "whole-app-model"
    assert httpx.get(f"{mlflow_tracking.url}/api/2.0/mlflow/unknown").json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert httpx.get(f"{mlflow_tracking.url}/").status_code == 200
