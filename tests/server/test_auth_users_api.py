"""Admins manage users over HTTP with MLflow's basic-auth paths (MLflow's own ``AuthServiceClient`` included);
other users get 403 and learn only who they are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.server.auth.permissions import Permission, Principal
from cairn.tracking.client import Client
from tests.server.auth_support import AuthServer, serve_auth


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[AuthServer]:
    artifact_root = str(tmp_path / "server-artifacts")
    with serve_auth(Client(db_url, artifact_root), artifact_root) as running:
        yield running


def test_mlflow_rest_calls_of_its_auth_client_manage_cairn_users(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requests MLflow's ``AuthServiceClient`` sends (its module needs Flask-WTF, not installed here), made
    with mlflow's own REST helpers and host credentials (MLFLOW_TRACKING_TOKEN)."""
    from mlflow.exceptions import RestException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", server.admin)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    creds = get_default_host_creds(server.url)

    def request(endpoint: str, method: str, **kwargs: object) -> dict[str, object]:
        response = http_request(creds, "/api/2.0/mlflow/" + endpoint, method, max_retries=0, **kwargs)
        body = verify_rest_response(response, endpoint).json()
        assert isinstance(body, dict)
        return body

    created = request("users/create", "POST", json={"username": "nina", "password": "nina-password"})["user"]
    assert isinstance(created, dict) and (created["username"], created["is_admin"]) == ("nina", False)
    assert isinstance(created["id"], int)  # what mlflow's User.from_json reads: id, username, is_admin
    assert server.users.by_login("nina", "nina-password") == Principal("nina", False, {}, {})
    request("users/update-admin", "PATCH", json={"username": "nina", "is_admin": True})
    assert request("users/get", "GET", params={"username": "nina"})["user"]["is_admin"] is True  # type: ignore[index]
    request("users/update-password", "PATCH", json={"username": "nina", "password": "nina-new-password"})
    assert server.users.by_login("nina", "nina-new-password") is not None
    with pytest.raises(RestException, match="RESOURCE_ALREADY_EXISTS"):
        request("users/create", "POST", json={"username": "nina", "password": "whatever-pw"})
    request("users/delete", "DELETE", json={"username": "nina"})
    assert server.users.by_name("nina") is None
    with pytest.raises(RestException, match="RESOURCE_DOES_NOT_EXIST"):
        request("users/get", "GET", params={"username": "nina"})


def test_admins_grant_over_http_and_the_answer_carries_the_token(server: AuthServer) -> None:
    experiment_id = server.client.create_experiment("granted")
    created = server.call("POST", "users/create", server.admin, json={"username": "omar"}).json()
    token = created["token"]
    assert created["user"]["username"] == "omar" and token.startswith("cairn_")
    grant = {"username": "omar", "experiment_id": experiment_id, "permission": "EDIT"}
    answer = server.call("POST", "experiments/permissions/create", server.admin, json=grant).json()
    assert answer["experiment_permission"]["permission"] == "EDIT"
    model = {"username": "omar", "name": "churn", "permission": "READ"}
    assert server.call("POST", "registered-models/permissions/create", server.admin, json=model).status_code == 200
    assert server.users.by_token(token) == Principal(
        "omar", False, {experiment_id: Permission.EDIT}, {"churn": Permission.READ}
    )
    update = {**grant, "permission": "MANAGE"}
    assert server.call("PATCH", "experiments/permissions/update", server.admin, json=update).status_code == 200
    got = server.call("GET", "experiments/permissions/get", server.admin, params=grant).json()
    assert got["experiment_permission"]["permission"] == "MANAGE"
    me = server.call("GET", "users/current", token).json()["user"]
    assert me["username"] == "omar" and me["experiment_permissions"][0]["experiment_id"] == experiment_id
    # not an admin: every management call is refused, before anything changes
    for method, path, body in [
        ("POST", "users/create", {"username": "mallory"}),
        ("PATCH", "users/update-admin", {"username": "omar", "is_admin": True}),
        ("POST", "experiments/permissions/create", {**grant, "experiment_id": "0"}),
        ("GET", "users/list", None),
    ]:
        response = server.call(method, path, token, json=body)
        assert response.status_code == 403 and response.json()["error_code"] == "PERMISSION_DENIED"
    assert server.users.by_name("mallory") is None and server.users.by_name("omar").is_admin is False  # type: ignore[union-attr]
    delete = {"username": "omar", "experiment_id": experiment_id}
    assert server.call("DELETE", "experiments/permissions/delete", server.admin, json=delete).status_code == 200
    missing = server.call("GET", "experiments/permissions/get", server.admin, params=delete)
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    listed = server.call("GET", "users/list", server.admin).json()["users"]
    assert {u["username"] for u in listed} == {"root", "omar"}


def test_without_auth_there_is_no_user_api(tmp_path: Path) -> None:
    import httpx

    from tests.server.conftest import serve

    artifact_root = str(tmp_path / "artifacts")
    with serve(Client(f"sqlite:///{tmp_path}/cairn.db", artifact_root), artifact_root) as running:
        response = httpx.post(f"{running.url}/api/2.0/mlflow/users/create", json={"username": "x"})
    assert response.status_code == 404 and response.json()["error_code"] == "ENDPOINT_NOT_FOUND"
