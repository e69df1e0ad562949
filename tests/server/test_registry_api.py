"""The model registry endpoints of ``cairn server``, driven by the real ``mlflow.MlflowClient``.

Runs and their artifacts are made with cairn's own client on the server's store (the registry is what is
under test); every registry call goes over HTTP, and what it wrote is read back through cairn's registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cairn.registry.uris import resolve_model_uri
from tests.server.conftest import RunningServer

pytestmark = pytest.mark.filterwarnings("ignore:.*model registry stages:FutureWarning")


def _run_with_model(server: RunningServer, path: str = "model") -> tuple[str, str]:
    """A run of the server's store holding a model directory at ``path``; returns (run id, its location)."""
    cairn = server.client
    experiment_id = cairn.create_experiment("registry-api")
    run_id = cairn.create_run(experiment_id).info.run_id
    cairn.log_text(run_id, "flavors: {}\n", f"{path}/MLmodel")
    return run_id, f"{cairn.get_run(run_id).info.artifact_uri}/{path}"


def _error_code(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(MlflowException) as caught:
        call(*args, **kwargs)
    return str(caught.value.error_code)


def test_registry_workflow_through_mlflow_client(server: RunningServer) -> None:
    client = MlflowClient(tracking_uri=server.url)
    run_id, location = _run_with_model(server)

    created = client.create_registered_model("churn", tags={"team": "ds"}, description="churn model")
    assert (created.name, created.description, created.tags) == ("churn", "churn model", {"team": "ds"})
    assert _error_code(client.create_registered_model, "churn") == "RESOURCE_ALREADY_EXISTS"

    v1 = client.create_model_version("churn", f"runs:/{run_id}/model", run_id=run_id, tags={"k": "v"})
    v2 = client.create_model_version("churn", f"runs:/{run_id}/model", run_id=run_id, description="second")
    assert (v1.version, v2.version) == ("1", "2")
    assert v1.run_id == run_id and v1.tags == {"k": "v"} and v1.status == "READY"
    relative = Path(location).relative_to(server.artifact_root).as_posix()
    assert v1.source == f"mlflow-artifacts:/{relative}"  # proxied form of the run's artifact location
    assert client.get_model_version_download_uri("churn", "1") == v1.source

    # aliases
    client.set_registered_model_alias("churn", "champion", "2")
    assert client.get_model_version_by_alias("churn", "champion").version == "2"
    assert client.get_registered_model("churn").aliases == {"champion": "2"}
    assert client.get_model_version("churn", "2").aliases == ["champion"]
    client.set_registered_model_alias("churn", "champion", "1")  # moves
    assert client.get_model_version_by_alias("churn", "champion").version == "1"

    # stages and latest versions
    client.transition_model_version_stage("churn", "1", "Production")
    moved = client.transition_model_version_stage("churn", "2", "production", archive_existing_versions=True)
    assert moved.current_stage == "Production"
    assert client.get_model_version("churn", "1").current_stage == "Archived"
    assert [v.version for v in client.get_latest_versions("churn", ["Production"])] == ["2"]
    assert {v.current_stage for v in client.get_latest_versions("churn")} == {"Production", "Archived"}

    # tags and descriptions
    client.set_registered_model_tag("churn", "owner", "ana")
    client.delete_registered_model_tag("churn", "team")
    client.set_model_version_tag("churn", "2", "validated", "yes")
    client.delete_model_version_tag("churn", "1", "k")
    client.update_registered_model("churn", description="updated")
    client.update_model_version("churn", "2", description="v2 desc")
    model = client.get_registered_model("churn")
    assert (model.tags, model.description) == ({"owner": "ana"}, "updated")
    assert client.get_model_version("churn", "2").tags == {"validated": "yes"}
    assert client.get_model_version("churn", "2").description == "v2 desc"
    assert client.get_model_version("churn", "1").tags == {}

    # the same data through cairn's own registry, from the same store
    cairn = server.client
    assert cairn.get_model_version_by_alias("churn", "champion").version == "1"
    assert cairn.get_registered_model("churn").tags == {"owner": "ana"}
    assert resolve_model_uri("models:/churn/Production", cairn).location == location
    assert cairn.get_model_version("churn", "2").run_id == run_id

    # rename and delete
    client.rename_registered_model("churn", "churn-v2")
    assert client.get_registered_model("churn-v2").aliases == {"champion": "1"}
    assert _error_code(client.get_registered_model, "churn") == "RESOURCE_DOES_NOT_EXIST"
    assert client.get_model_version_by_alias("churn-v2", "champion").version == "1"
    client.delete_model_version("churn-v2", "1")
    assert _error_code(client.get_model_version, "churn-v2", "1") == "RESOURCE_DOES_NOT_EXIST"
    assert client.create_model_version("churn-v2", f"runs:/{run_id}/model").version == "3"  # never reused
    client.delete_registered_model("churn-v2")
    assert _error_code(client.get_registered_model, "churn-v2") == "RESOURCE_DOES_NOT_EXIST"
    assert cairn.search_registered_models() == []


def test_search_and_pages(server: RunningServer) -> None:
    client = MlflowClient(tracking_uri=server.url)
    run_id, _ = _run_with_model(server)
    other_run = server.client.create_run(server.client.get_run(run_id).info.experiment_id).info.run_id
    server.client.log_text(other_run, "flavors: {}\n", "model/MLmodel")
    for name in ("alpha", "beta", "gamma", "Alphabet"):
        client.create_registered_model(name)
    client.create_model_version("alpha", f"runs:/{run_id}/model", run_id=run_id)
    client.create_model_version("alpha", f"runs:/{other_run}/model", run_id=other_run)
    client.create_model_version("beta", f"runs:/{run_id}/model", run_id=run_id)

    assert [m.name for m in client.search_registered_models(filter_string="name LIKE 'al%'")] == ["alpha"]
    assert [m.name for m in client.search_registered_models(filter_string="name ILIKE 'al%'")] == ["Alphabet", "alpha"]
    first = client.search_registered_models(max_results=3)
    assert [m.name for m in first] == ["Alphabet", "alpha", "beta"] and first.token
    rest = client.search_registered_models(max_results=3, page_token=first.token)
    assert [m.name for m in rest] == ["gamma"] and not rest.token
    newest_first = client.search_registered_models(order_by=["name DESC"])
    assert [m.name for m in newest_first] == ["gamma", "beta", "alpha", "Alphabet"]
    alpha = client.search_registered_models(filter_string="name = 'alpha'")[0]
    assert [v.version for v in alpha.latest_versions] == ["2"]

    by_run = client.search_model_versions(f"run_id = '{run_id}'")
    assert sorted((v.name, v.version) for v in by_run) == [("alpha", "1"), ("beta", "1")]
    assert [v.version for v in client.search_model_versions("name = 'alpha'")] == ["2", "1"]
    paged = client.search_model_versions("name = 'alpha'", max_results=1)
    assert [v.version for v in paged] == ["2"] and paged.token
    assert [
        v.version for v in client.search_model_versions("name = 'alpha'", max_results=1, page_token=paged.token)
    ] == ["1"]
    assert _error_code(client.search_model_versions, "tags.x = 'y'") == "INVALID_PARAMETER_VALUE"
    assert _error_code(client.search_registered_models, max_results=1001) == "INVALID_PARAMETER_VALUE"


def test_errors_are_mlflow_shaped(server: RunningServer, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=server.url)
    run_id, _ = _run_with_model(server)
    assert _error_code(client.get_registered_model, "nope") == "RESOURCE_DOES_NOT_EXIST"
    assert _error_code(client.get_latest_versions, "nope") == "RESOURCE_DOES_NOT_EXIST"
    assert _error_code(client.get_model_version_by_alias, "nope", "champion") == "RESOURCE_DOES_NOT_EXIST"
    client.create_registered_model("m")
    assert _error_code(client.get_model_version, "m", "7") == "RESOURCE_DOES_NOT_EXIST"
    client.create_model_version("m", f"runs:/{run_id}/model", run_id=run_id)
    assert _error_code(client.set_registered_model_alias, "m", "v1", "1") == "INVALID_PARAMETER_VALUE"
    assert _error_code(client.set_registered_model_alias, "m", "best", "9") == "RESOURCE_DOES_NOT_EXIST"
    assert _error_code(client.transition_model_version_stage, "m", "1", "Shipped") == "INVALID_PARAMETER_VALUE"
    assert _error_code(client.create_model_version, "m", f"runs:/{run_id}/missing") == "RESOURCE_DOES_NOT_EXIST"
    # a local path outside the artifact root cannot become a version (it would be downloadable via the proxy)
    outside = tmp_path / "secrets"
    outside.mkdir()
    assert _error_code(client.create_model_version, "m", str(outside)) == "INVALID_PARAMETER_VALUE"
    assert _error_code(client.create_model_version, "m", "mlflow-artifacts:/../../etc") == "INVALID_PARAMETER_VALUE"
    assert [v.version for v in server.client.search_model_versions("name = 'm'")] == ["1"]  # nothing half-written


def test_raw_requests_shapes(server: RunningServer) -> None:
    import httpx

    base = f"{server.url}/api/2.0/mlflow"
    missing = httpx.post(f"{base}/registered-models/create", json={})
    assert missing.status_code == 400 and missing.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    wrong_type = httpx.post(f"{base}/registered-models/create", json={"name": 3})
    assert wrong_type.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    created = httpx.post(f"{server.url}/ajax-api/2.0/mlflow/registered-models/create", json={"name": "raw"})
    assert created.status_code == 200 and created.json()["registered_model"]["name"] == "raw"
    got = httpx.get(f"{base}/registered-models/get", params={"name": "raw"})
    assert set(got.json()["registered_model"]) == {"name", "creation_timestamp", "last_updated_timestamp"}
    unknown = httpx.get(f"{base}/registered-models/get", params={"name": "none"})
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    wrong_method = httpx.get(f"{base}/registered-models/create")
    assert wrong_method.status_code in (404, 405)


def test_two_servers_number_versions_without_races(db_url: str, tmp_path: Path) -> None:
    """Two server processes' worth of apps on one database: concurrent registrations get 1..N once each."""
    from concurrent.futures import ThreadPoolExecutor

    from cairn.tracking.client import Client
    from tests.server.conftest import serve

    artifact_root = str(tmp_path / "artifacts")
    first_store, second_store = Client(db_url, artifact_root), Client(db_url, artifact_root)
    with serve(first_store, artifact_root) as one, serve(second_store, artifact_root) as two:
        run_id, _ = _run_with_model(one)
        clients = [MlflowClient(tracking_uri=one.url), MlflowClient(tracking_uri=two.url)]

        def create_model(index: int) -> str:
            try:
                clients[index % 2].create_registered_model("shared")
                return "created"
            except MlflowException as exc:
                return str(exc.error_code)

        def register(index: int) -> str:
            return str(
                clients[index % 2].create_model_version("shared", f"runs:/{run_id}/model", run_id=run_id).version
            )

        with ThreadPoolExecutor(max_workers=6) as pool:
            outcomes = sorted(pool.map(create_model, range(6)))
            versions = sorted(pool.map(register, range(12)), key=int)
    assert outcomes == ["RESOURCE_ALREADY_EXISTS"] * 5 + ["created"]
    assert versions == [str(n) for n in range(1, 13)]
    assert [v.version for v in first_store.search_model_versions("name = 'shared'")] == [
        str(n) for n in range(12, 0, -1)
    ]


def test_cairn_client_of_a_server_registers_a_proxied_run_model_whatever_the_global_tracking_uri(
    server: RunningServer,
) -> None:
    """``Client(url).create_model_version(name, "runs:/...")`` checks the source on that client's server,
    not on the process's default tracking URI (which here is a local store without the run)."""
    from cairn import Client

    remote = Client(server.url)
    experiment_id = remote.create_experiment("registry-remote-source")
    run_id = remote.create_run(experiment_id).info.run_id
    remote.log_text(run_id, "flavors: {}\n", "model/MLmodel")
    assert remote.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    remote.create_registered_model("remote-source")
    version = remote.create_model_version("remote-source", f"runs:/{run_id}/model")
    assert (str(version.version), version.run_id) == ("1", run_id)
    with pytest.raises(Exception, match="has no artifact at 'absent'"):
        remote.create_model_version("remote-source", f"runs:/{run_id}/absent")
