"""The tracking REST API of ``cairn server``, driven by the real mlflow client over real HTTP."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag as MlflowRunTag
from mlflow.exceptions import MlflowException

from cairn.tracking.client import Client
from cairn.tracking.entities import ViewType
from tests.server.conftest import RunningServer, serve

TRACKING_ONLY = ("cairn.server.tracking_api",)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """This file tests the tracking API alone (the registry and artifact modules have their own tests)."""
    root = tmp_path / "server"
    client = Client(f"sqlite:///{root}/cairn.db", str(root / "artifacts"))
    with serve(client, str(root / "artifacts"), api_modules=TRACKING_ONLY) as running:
        yield running


@pytest.fixture
def db_server(db_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    client = Client(db_url, str(tmp_path / "server-artifacts"))
    with serve(client, str(tmp_path / "server-artifacts"), api_modules=TRACKING_ONLY) as running:
        yield running


def test_fluent_tracking_lands_in_cairn_store(mlflow_tracking: RunningServer) -> None:
    mlflow.set_experiment("fluent")
    with mlflow.start_run(run_name="baseline") as run:
        mlflow.log_param("lr", 0.001)
        mlflow.log_params({"layers": 3, "opt": "adam"})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8}, step=4)
        mlflow.set_tag("team", "vision")
        mlflow.log_metric("nan_metric", float("nan"))
    run_id = run.info.run_id

    cairn_run = mlflow_tracking.client.get_run(run_id)
    assert cairn_run.info.status.value == "FINISHED"
    assert cairn_run.info.run_name == "baseline"
    assert cairn_run.data.params == {"lr": "0.001", "layers": "3", "opt": "adam"}
    assert cairn_run.data.metrics["loss"] == pytest.approx(0.2)
    assert math.isnan(cairn_run.data.metrics["nan_metric"])
    assert cairn_run.data.tags["team"] == "vision"
    assert cairn_run.data.tags["mlflow.runName"] == "baseline"
    assert [m.step for m in mlflow_tracking.client.get_metric_history(run_id, "loss")] == [0, 1, 2, 3, 4]

    got = mlflow.get_run(run_id)
    assert got.info.run_id == run_id and got.info.lifecycle_stage == "active"
    assert got.info.artifact_uri == f"mlflow-artifacts:/{got.info.experiment_id}/{run_id}/artifacts"
    assert got.data.metrics["loss"] == pytest.approx(0.2)
    assert got.data.params["layers"] == "3"
    loss_latest = [m for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")]
    assert [(m.step, m.value) for m in loss_latest][-1] == (4, pytest.approx(0.2))


def test_search_runs_as_pandas(mlflow_tracking: RunningServer) -> None:
    experiment_id = mlflow.create_experiment("search")
    for lr in (0.1, 0.01, 0.001):
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.log_param("lr", lr)
            mlflow.log_metric("loss", lr * 10)
    frame = mlflow.search_runs([experiment_id], filter_string="metrics.loss < 0.5", order_by=["metrics.loss ASC"])
    assert list(frame["params.lr"]) == ["0.001", "0.01"]
    assert list(frame["metrics.loss"]) == pytest.approx([0.01, 0.1])

    client = mlflow.MlflowClient()
    page = client.search_runs([experiment_id], max_results=2, order_by=["metrics.loss DESC"])
    assert len(page) == 2 and page.token
    rest = client.search_runs([experiment_id], max_results=2, order_by=["metrics.loss DESC"], page_token=page.token)
    assert [r.data.params["lr"] for r in [*page, *rest]] == ["0.1", "0.01", "0.001"]


def test_log_batch_and_metric_history_paging(mlflow_tracking: RunningServer) -> None:
    client = mlflow.MlflowClient()
    run = client.create_run("0", run_name="batch")
    metrics = [MlflowMetric("x", float(i), 1000 + i, i) for i in range(1000)]
    client.log_batch(run.info.run_id, metrics=metrics, params=[MlflowParam("p", "1")], tags=[MlflowRunTag("t", "v")])
    history = client.get_metric_history(run.info.run_id, "x")
    assert [m.step for m in history] == list(range(1000))
    assert history[10].timestamp == 1010

    url = f"{mlflow_tracking.url}/api/2.0/mlflow/metrics/get-history"
    first = httpx.get(url, params={"run_id": run.info.run_id, "metric_key": "x", "max_results": 600}).json()
    assert len(first["metrics"]) == 600 and first["next_page_token"]
    second = httpx.get(
        url,
        params={
            "run_id": run.info.run_id,
            "metric_key": "x",
            "max_results": 600,
            "page_token": first["next_page_token"],
        },
    ).json()
    assert [m["step"] for m in second["metrics"]] == list(range(600, 1000)) and "next_page_token" not in second

    bulk = httpx.get(
        f"{mlflow_tracking.url}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
        params={"run_ids": [run.info.run_id], "metric_key": "x", "max_results": 11},
    ).json()["metrics"]
    assert len(bulk) == 11 and bulk[0]["step"] == 0 and bulk[-1]["step"] == 999
    assert {m["run_id"] for m in bulk} == {run.info.run_id}

    stored = mlflow_tracking.client.get_run(run.info.run_id)
    assert stored.data.params == {"p": "1"} and stored.data.tags["t"] == "v"


def test_experiment_lifecycle(mlflow_tracking: RunningServer) -> None:
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("lifecycle", tags={"owner": "ana"})
    experiment = client.get_experiment_by_name("lifecycle")
    assert experiment is not None and experiment.experiment_id == experiment_id
    assert experiment.tags == {"owner": "ana"}
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment_id}"
    assert client.get_experiment_by_name("missing") is None

    client.set_experiment_tag(experiment_id, "stage", "dev")
    client.rename_experiment(experiment_id, "lifecycle-2")
    assert client.get_experiment(experiment_id).name == "lifecycle-2"
    assert client.get_experiment(experiment_id).tags["stage"] == "dev"

    client.delete_experiment(experiment_id)
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"
    assert mlflow_tracking.client.get_experiment(experiment_id).lifecycle_stage.value == "deleted"
    active = [e.name for e in client.search_experiments()]
    assert "lifecycle-2" not in active
    assert "lifecycle-2" in [e.name for e in client.search_experiments(view_type=ViewType.DELETED_ONLY.value)]
    client.restore_experiment(experiment_id)
    assert "lifecycle-2" in [e.name for e in client.search_experiments(filter_string="name = 'lifecycle-2'")]

    with pytest.raises(MlflowException) as err:
        client.create_experiment("lifecycle-2")
    assert err.value.error_code == "RESOURCE_ALREADY_EXISTS"


def test_run_lifecycle_tags_and_inputs(mlflow_tracking: RunningServer) -> None:
    client = mlflow.MlflowClient()
    run = client.create_run("0", tags={"a": "1"})
    run_id = run.info.run_id
    client.set_tag(run_id, "b", "2")
    client.delete_tag(run_id, "a")
    client.set_tag(run_id, "mlflow.runName", "renamed")
    client.update_run(run_id, status="KILLED")
    got = client.get_run(run_id)
    assert got.info.status == "KILLED" and got.info.end_time is not None
    assert got.info.run_name == "renamed"
    assert "a" not in got.data.tags and got.data.tags["b"] == "2"

    dataset = mlflow.entities.Dataset(name="train", digest="abc123", source_type="local", source="/data/train")
    client.log_inputs(
        run_id,
        [mlflow.entities.DatasetInput(dataset, tags=[mlflow.entities.InputTag("mlflow.data.context", "training")])],
    )
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("train", "abc123")]
    assert inputs[0].tags[0].value == "training"

    client.delete_run(run_id)
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    client.restore_run(run_id)
    assert mlflow_tracking.client.get_run(run_id).info.lifecycle_stage.value == "active"


def test_unknown_run_is_resource_does_not_exist(mlflow_tracking: RunningServer) -> None:
    with pytest.raises(MlflowException) as err:
        mlflow.MlflowClient().get_run("0" * 32)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    response = httpx.post(
        f"{mlflow_tracking.url}/api/2.0/mlflow/runs/log-metric",
        json={"run_id": "f" * 32, "key": "m", "value": 1, "timestamp": 1, "step": 0},
    )
    assert response.status_code == 404 and response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_oversized_log_batch_is_refused_and_writes_nothing(server: RunningServer) -> None:
    run = server.client.create_run("0")
    url = f"{server.url}/api/2.0/mlflow/runs/log-batch"
    too_many = {
        "run_id": run.info.run_id,
        "params": [{"key": "ok", "value": "1"}],
        "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": i} for i in range(1001)],
    }
    response = httpx.post(url, json=too_many)
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "1000 metrics" in response.json()["message"]

    too_big = {  # every count and value within its limit, the whole request over 1 MB
        "run_id": run.info.run_id,
        "params": [{"key": f"p{i}", "value": "x" * 6000} for i in range(100)],
        "tags": [{"key": f"t{i}", "value": "y" * 8000} for i in range(100)],
    }
    response = httpx.post(url, content=json.dumps(too_big))
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "1000000 bytes" in response.json()["message"]

    one_bad = {
        "run_id": run.info.run_id,
        "params": [{"key": "good", "value": "1"}],
        "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": 0}, {"key": "m", "value": "nope"}],
    }
    response = httpx.post(url, json=one_bad)
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    stored = server.client.get_run(run.info.run_id)
    assert stored.data.params == {} and stored.data.metrics == {}
    assert not any(key.startswith("t") for key in stored.data.tags)


def test_malformed_requests_and_unknown_endpoints(server: RunningServer) -> None:
    url = f"{server.url}/api/2.0/mlflow/experiments/create"
    response = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    response = httpx.post(url, json=["a list"])
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    response = httpx.post(url, json={"name": 5})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    response = httpx.get(
        f"{server.url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": "r", "metric_key": "m", "max_results": "--5"},
    )
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    response = httpx.post(url, json={"name": "x", "artifact_location": "/etc"})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    for path in ("/api/2.0/mlflow/no/such/thing", "/ajax-api/2.0/mlflow/gateway/routes", "/api/2.0/mlflow/runs/get"):
        response = httpx.post(server.url + path, json={})
        assert response.status_code == 404, path
        assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND", path

    assert httpx.get(server.url + "/health").text == "OK"
    assert httpx.get(server.url + "/version").status_code == 200
    assert httpx.get(server.url + "/").status_code == 200  # the cairn UI, same origin


def test_postgres_and_sqlite_serve_the_same_api(db_server: RunningServer) -> None:
    base = f"{db_server.url}/api/2.0/mlflow"
    experiment_id = httpx.post(f"{base}/experiments/create", json={"name": "pg"}).json()["experiment_id"]
    run = httpx.post(f"{base}/runs/create", json={"experiment_id": experiment_id, "start_time": 5}).json()["run"]
    assert run["info"]["run_uuid"] == run["info"]["run_id"] and run["info"]["status"] == "RUNNING"
    batch = {"run_id": run["info"]["run_id"], "metrics": [{"key": "m", "value": "Infinity", "timestamp": 7, "step": 1}]}
    assert httpx.post(f"{base}/runs/log-batch", json=batch).status_code == 200
    got = httpx.get(f"{base}/runs/get", params={"run_id": run["info"]["run_id"]}).json()["run"]
    assert got["data"]["metrics"] == [{"key": "m", "value": "Infinity", "timestamp": 7, "step": 1}]
    assert math.isinf(db_server.client.get_run(run["info"]["run_id"]).data.metrics["m"])
    found = httpx.post(f"{base}/runs/search", json={"experiment_ids": [experiment_id]}).json()["runs"]
    assert [r["info"]["run_id"] for r in found] == [run["info"]["run_id"]]


# -- latest metrics, model outputs, experiment search -------------------------------------------


def _api(server: RunningServer, path: str) -> str:
    return f"{server.url}/api/2.0/mlflow/{path}"


def test_runs_get_and_search_give_latest_step_and_timestamp_without_reading_histories(
    db_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cairn.store.rest import RestTrackingStore

    server = db_server
    client = mlflow.MlflowClient(tracking_uri=server.url)
    run_id = client.create_run("0", run_name="latest").info.run_id
    points = [MlflowMetric("loss", 0.5, 3000, 5), MlflowMetric("loss", 0.9, 4000, 3), MlflowMetric("acc", 0.7, 10, 0)]
    client.log_batch(run_id, metrics=points)
    client.log_metric(run_id, "nan", float("nan"), timestamp=77, step=2)

    # the TrackingStore default (reading histories), here over HTTP, agrees with the SQL store's table
    rest = RestTrackingStore(server.url)
    try:
        assert rest.latest_metrics([run_id, "f" * 32]) == server.client.store.latest_metrics([run_id, "f" * 32])
    finally:
        rest.close()
    assert server.client.store.latest_metrics(["f" * 32]) == {"f" * 32: {}}

    def no_history(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server read a metric history")

    monkeypatch.setattr(server.client.store, "get_metric_history", no_history)
    expected = {
        "loss": {"key": "loss", "value": 0.5, "timestamp": 3000, "step": 5},  # highest step, not last written
        "acc": {"key": "acc", "value": 0.7, "timestamp": 10, "step": 0},
        "nan": {"key": "nan", "value": "NaN", "timestamp": 77, "step": 2},
    }
    got = httpx.get(_api(server, "runs/get"), params={"run_id": run_id}).json()["run"]["data"]["metrics"]
    assert {m["key"]: m for m in got} == expected
    found = httpx.post(_api(server, "runs/search"), json={"experiment_ids": ["0"]}).json()["runs"]
    assert [{m["key"]: m for m in r["data"]["metrics"]} for r in found] == [expected]
    # what the mlflow client makes of it
    metric_objects = {m.key: m for m in client.get_run(run_id).data._metric_objs}
    assert (metric_objects["loss"].step, metric_objects["loss"].timestamp) == (5, 3000)
    searched = client.search_runs(["0"])[0].data._metric_objs
    assert {(m.key, m.step, m.timestamp) for m in searched} == {("loss", 5, 3000), ("acc", 0, 10), ("nan", 2, 77)}


def test_runs_get_returns_the_runs_logged_models_as_outputs(tmp_path: Path) -> None:
    root = tmp_path / "full"
    cairn_client = Client(f"sqlite:///{root}/cairn.db", str(root / "artifacts"))
    with serve(cairn_client, str(root / "artifacts")) as running:  # with the logged-model endpoints
        client = mlflow.MlflowClient(tracking_uri=running.url)
        run_id = client.create_run("0").info.run_id
        assert client.get_run(run_id).outputs.model_outputs == []
        first = client.create_logged_model("0", name="a", source_run_id=run_id)
        second = client.create_logged_model("0", name="b", source_run_id=run_id)
        client.create_logged_model("0", name="elsewhere")  # no run: not an output of this one
        outputs = client.get_run(run_id).outputs.model_outputs
        assert sorted(o.model_id for o in outputs) == sorted([first.model_id, second.model_id])
        assert {o.step for o in outputs} == {0}
        client.delete_logged_model(first.model_id)
        assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [second.model_id]
        raw = httpx.get(_api(running, "runs/get"), params={"run_id": run_id}).json()["run"]
        assert raw["outputs"] == {"model_outputs": [{"model_id": second.model_id, "step": 0}]}
    from mlflow.tracking import fluent

    fluent._reset_last_logged_model_id()  # mlflow keeps it per thread; leave none behind


def _experiments(server: RunningServer, **body: object) -> httpx.Response:
    return httpx.post(_api(server, "experiments/search"), json=body)


def test_experiment_search_filters_like_mlflow(server: RunningServer) -> None:
    from mlflow.entities import Experiment as MlflowExperiment
    from mlflow.utils.search_utils import SearchExperimentsUtils

    client = mlflow.MlflowClient(tracking_uri=server.url)
    specs = [
        ("churn-model", {"team": "growth", "owner": "Ana"}),
        ("Churn-Baseline", {"team": "growth"}),
        ("vision_resnet", {"team": "vision", "owner": "bo"}),
        ("vision-vit", {}),
        ("it's quoted", {"team": "Vision"}),
    ]
    for name, tags in specs:
        client.create_experiment(name, tags=tags)
    everything = client.search_experiments()
    assert len(everything) == 6  # and Default
    filters = [
        "name = 'churn-model'",
        "name != 'churn-model'",
        "name LIKE 'churn%'",
        "name ILIKE 'churn%'",
        "name LIKE 'vision_%'",
        "name ILIKE '%S QUOTED'",
        "tags.team = 'growth'",
        "tags.team != 'growth'",
        "tags.team LIKE 'vis%'",
        "tags.team ILIKE 'vis%'",
        "tags.`owner` = 'Ana' and name LIKE '%model'",
        "tags.owner IS NULL",
        "tags.owner IS NOT NULL AND tags.team = 'vision'",
        "attributes.name LIKE '%-%' AND tags.team ILIKE 'GROWTH'",
        "experiment_id IN ('1', '3')",
        "creation_time > 0 and name != 'Default'",
    ]
    for text in filters:
        response = client.search_experiments(filter_string=text)
        expected = SearchExperimentsUtils.filter([MlflowExperiment.from_proto(e.to_proto()) for e in everything], text)
        assert sorted(e.name for e in response) == sorted(e.name for e in expected), text
    # a few by hand, so the oracle is not the only judge; a doubled quote is a quote (MLflow's parser keeps both)
    assert [e.name for e in client.search_experiments(filter_string="name = 'it''s quoted'")] == ["it's quoted"]
    assert [e.name for e in client.search_experiments(filter_string="name ILIKE 'churn%'", order_by=["name"])] == [
        "Churn-Baseline",
        "churn-model",
    ]
    assert [e.name for e in client.search_experiments(filter_string="name LIKE 'churn%'")] == ["churn-model"]
    assert {e.name for e in client.search_experiments(filter_string="tags.team ILIKE 'vision'")} == {
        "vision_resnet",
        "it's quoted",
    }


def test_experiment_search_orders_and_pages_like_mlflow(server: RunningServer) -> None:
    client = mlflow.MlflowClient(tracking_uri=server.url)
    for name in ("delta", "alpha", "charlie", "bravo", "echo"):
        client.create_experiment(name, tags={"kind": "x"})
    everything = client.search_experiments()
    # default: creation_time DESC, then experiment_id ASC
    expected = sorted(everything, key=lambda e: (-e.creation_time, int(e.experiment_id)))
    assert [e.experiment_id for e in everything] == [e.experiment_id for e in expected]
    by_name = client.search_experiments(filter_string="tags.kind = 'x'", order_by=["name DESC"])
    assert [e.name for e in by_name] == ["echo", "delta", "charlie", "bravo", "alpha"]
    first = client.search_experiments(max_results=2, order_by=["name ASC"], filter_string="tags.kind = 'x'")
    rest = client.search_experiments(
        max_results=2, order_by=["name ASC"], filter_string="tags.kind = 'x'", page_token=first.token
    )
    last = client.search_experiments(
        max_results=2, order_by=["name ASC"], filter_string="tags.kind = 'x'", page_token=rest.token
    )
    assert [e.name for e in [*first, *rest, *last]] == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert last.token is None
    by_id = client.search_experiments(order_by=["experiment_id DESC"])
    assert [int(e.experiment_id) for e in by_id] == [5, 4, 3, 2, 1, 0]
    by_update = client.search_experiments(order_by=["`last_update_time` ASC", "attributes.name"])
    assert [e.name for e in by_update] == [
        e.name for e in sorted(everything, key=lambda e: (e.last_update_time, e.name))
    ]


def test_experiment_search_rejects_what_mlflow_rejects(server: RunningServer) -> None:
    for body in (
        {"filter": "name > 'a'"},
        {"filter": "tags.team > 'a'"},
        {"filter": "owner = 'x'"},
        {"filter": "params.lr = '1'"},
        {"filter": "name = 'a' OR name = 'b'"},
        {"filter": "name IS NULL"},
        {"filter": "creation_time > 'yesterday'"},
        {"filter": "name = 'unterminated"},
        {"order_by": ["tags.team"]},
        {"order_by": ["owner DESC"]},
        {"order_by": ["name sideways"]},
    ):
        response = _experiments(server, **body)
        assert response.status_code == 400, body
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE", body


@pytest.mark.parametrize(
    ("metric", "accepted"),
    [
        ({"key": "m", "value": 0.5, "timestamp": 7, "step": 1}, True),
        ({"key": "m", "value": 1, "timestamp": "7", "step": 1.0}, True),  # other spellings of numbers
        ({"key": "m", "value": 0.5, "timestamp": 7, "step": 2**63}, False),
        ({"key": "m", "value": 0.5, "timestamp": -(2**63) - 1, "step": 1}, False),
        ({"key": "m", "value": 0.5, "timestamp": True, "step": 1}, False),
        ({"key": "m", "value": 0.5, "timestamp": 7, "step": 1.5}, False),
        ({"key": "m", "value": True, "timestamp": 7, "step": 1}, False),
        ({"key": "m", "value": "x", "timestamp": 7, "step": 1}, False),
        ({"key": "../m", "value": 0.5, "timestamp": 7, "step": 1}, False),
        ({"key": "m\x00", "value": 0.5, "timestamp": 7, "step": 1}, False),
        ({"key": 5, "value": 0.5, "timestamp": 7, "step": 1}, False),
        ({"key": "m", "timestamp": 7, "step": 1}, False),
    ],
)
def test_log_batch_checks_every_metric_field(server: RunningServer, metric: dict[str, object], accepted: bool) -> None:
    run_id = server.client.store.create_run("0", user_id="t", start_time=1, run_name="r").info.run_id
    response = httpx.post(_api(server, "runs/log-batch"), json={"run_id": run_id, "metrics": [metric]})
    assert response.status_code == (200 if accepted else 400), response.text
    assert len(server.client.get_metric_history(run_id, "m")) == (1 if accepted else 0)
