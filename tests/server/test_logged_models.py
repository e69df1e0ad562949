"""MLflow 3's logged models on ``cairn server``: the endpoints through ``MlflowClient``, and
``mlflow.sklearn.log_model(..., registered_model_name=...)`` end to end (tracking, artifact proxy, logged
model, registry), then loading the model back with mlflow and finding it in cairn's store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cairn.registry.uris import resolve_model_uri
from cairn.server.logged_models import RECORD_TAG_PREFIX
from tests.server.conftest import RunningServer


@pytest.fixture(autouse=True)
def _no_mlflow_model_state() -> Iterator[None]:
    """mlflow keeps the last logged and the active model id per thread; leave none behind for other tests."""
    yield
    import mlflow
    from mlflow.tracking import fluent

    mlflow.clear_active_model()
    fluent._reset_last_logged_model_id()


def _error_code(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(MlflowException) as caught:
        call(*args, **kwargs)
    return str(caught.value.error_code)


def test_sklearn_log_model_registers_and_loads(mlflow_tracking: RunningServer) -> None:
    import httpx
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.9], [0.9, 0.2]])
    y = np.array([0, 1, 0, 1])
    model = LogisticRegression().fit(X, y)
    with mlflow.start_run() as run:
        mlflow.log_param("C", 1.0)
        info = mlflow.sklearn.log_model(
            model, name="m", registered_model_name="churn", input_example=X[:2], pip_requirements=["scikit-learn"]
        )
    run_id = run.info.run_id
    assert info.model_id.startswith("m-") and str(info.registered_model_version) == "1"

    client = MlflowClient(tracking_uri=mlflow_tracking.url)
    logged = client.get_logged_model(info.model_id)
    assert (logged.name, logged.source_run_id, str(logged.status)) == ("m", run_id, "READY")
    assert logged.params == {"C": "1.0"}
    assert logged.artifact_location.startswith("mlflow-artifacts:/")
    version = client.get_model_version("churn", "1")
    assert version.run_id == run_id  # mlflow's ModelVersion.from_proto drops model_id; the JSON has it:
    raw = httpx.get(
        f"{mlflow_tracking.url}/api/2.0/mlflow/model-versions/get", params={"name": "churn", "version": "1"}
    )
    assert raw.json()["model_version"]["model_id"] == info.model_id

    expected = model.predict(X)
    for uri in ("models:/churn/1", f"models:/{info.model_id}", f"runs:/{run_id}/m"):
        assert (mlflow.pyfunc.load_model(uri).predict(X) == expected).all(), uri

    # cairn's store holds the same: the version's source is the logged model's files, under the artifact root
    cairn = mlflow_tracking.client
    location = resolve_model_uri("models:/churn/1", cairn).location
    assert location.endswith(f"/models/{info.model_id}/artifacts")
    assert (Path(location) / "MLmodel").is_file()
    assert Path(location).resolve().is_relative_to(Path(mlflow_tracking.artifact_root).resolve())
    assert RECORD_TAG_PREFIX + info.model_id in cairn.get_run(run_id).data.tags
    from cairn.flavors import sklearn as cairn_sklearn

    assert (cairn_sklearn.load_model(location, allow_pickle=True).predict(X) == expected).all()  # MLflow's model


def test_logged_model_endpoints(mlflow_tracking: RunningServer) -> None:
    client = MlflowClient(tracking_uri=mlflow_tracking.url)
    experiment_id = client.create_experiment("logged")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "lr", "0.1")
    first = client.create_logged_model(
        experiment_id, name="a", source_run_id=run_id, tags={"t": "1"}, params={"lr": "0.1", "k": "v"}, model_type="clf"
    )
    second = client.create_logged_model(experiment_id, name="b", source_run_id=run_id)
    assert first.model_id != second.model_id
    assert (str(first.status), first.model_type, first.tags, first.params) == (
        "PENDING",
        "clf",
        {"t": "1"},
        {"lr": "0.1", "k": "v"},
    )

    client.set_logged_model_tags(first.model_id, {"stage": "dev", "t": "2"})
    client.delete_logged_model_tag(first.model_id, "stage")
    client.log_model_params(first.model_id, {"depth": "3"})
    ready = client.finalize_logged_model(first.model_id, "READY")
    assert str(ready.status) == "READY"
    got = client.get_logged_model(first.model_id)
    assert got.tags == {"t": "2"} and got.params == {"lr": "0.1", "k": "v", "depth": "3"}
    assert got.last_updated_timestamp >= got.creation_timestamp

    assert [m.name for m in client.search_logged_models([experiment_id])] == ["b", "a"]  # newest first
    assert [m.model_id for m in client.search_logged_models([experiment_id], filter_string="name = 'a'")] == [
        first.model_id
    ]
    by_run = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = 'b'")
    assert [m.model_id for m in by_run] == [second.model_id]
    paged = client.search_logged_models([experiment_id], max_results=1)
    assert len(paged) == 1 and paged.token
    assert len(client.search_logged_models([experiment_id], max_results=1, page_token=paged.token)) == 1
    assert _error_code(client.search_logged_models, [experiment_id], filter_string="metrics.x > 1") == (
        "INVALID_PARAMETER_VALUE"
    )

    client.delete_logged_model(second.model_id)
    assert _error_code(client.get_logged_model, second.model_id) == "RESOURCE_DOES_NOT_EXIST"
    assert _error_code(client.get_logged_model, "m-" + "0" * 40) == "RESOURCE_DOES_NOT_EXIST"
    assert _error_code(client.get_logged_model, "no-such-id") == "RESOURCE_DOES_NOT_EXIST"
    assert _error_code(client.create_logged_model, "12345", name="x") == "RESOURCE_DOES_NOT_EXIST"


def test_model_logged_outside_a_run(mlflow_tracking: RunningServer) -> None:
    """MLflow 3 logs models without a run too: the record then lives on the experiment."""
    client = MlflowClient(tracking_uri=mlflow_tracking.url)
    experiment_id = client.create_experiment("runless")
    orphan = client.create_logged_model(experiment_id, name="orphan", params={"p": "1"})
    assert not orphan.source_run_id and orphan.params == {"p": "1"}
    client.set_logged_model_tags(orphan.model_id, {"t": "x"})
    assert client.get_logged_model(orphan.model_id).tags == {"t": "x"}
    assert str(client.finalize_logged_model(orphan.model_id, "READY").status) == "READY"
    assert [m.model_id for m in client.search_logged_models([experiment_id])] == [orphan.model_id]
    client.delete_logged_model(orphan.model_id)
    assert _error_code(client.get_logged_model, orphan.model_id) == "RESOURCE_DOES_NOT_EXIST"
    assert client.search_logged_models([experiment_id]) == []

    import mlflow
    import numpy as np
    from sklearn.linear_model import LinearRegression

    X = np.array([[0.0], [1.0], [2.0]])
    model = LinearRegression().fit(X, np.array([1.0, 3.0, 5.0]))
    mlflow.set_experiment(experiment_id=experiment_id)
    info = mlflow.sklearn.log_model(model, name="free", registered_model_name="free", pip_requirements=["scikit-learn"])
    assert mlflow.active_run() is None and info.model_id.startswith(f"m-e{experiment_id}-")
    assert mlflow.pyfunc.load_model("models:/free/1").predict(X).tolist() == model.predict(X).tolist()
