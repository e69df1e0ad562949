"""``cairn server --auth`` over HTTP, on SQLite and PostgreSQL: 401 without (valid) credentials, 403 without the
permission, searches that show only what a user may read (pages included), creators getting MANAGE."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.server.auth.permissions import Permission, Principal, ResourceKind
from cairn.tracking.client import Client
from tests.server.auth_support import AuthServer, serve_auth


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[AuthServer]:
    artifact_root = str(tmp_path / "server-artifacts")
    with serve_auth(Client(db_url, artifact_root), artifact_root) as running:
        yield running


def _error(response: object, status: int, code: str) -> str:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["error_code"] == code
    return str(body["message"])


def _run(server: AuthServer, experiment_id: str) -> str:
    return server.client.create_run(experiment_id).info.run_id


def test_without_credentials_every_api_answers_401_and_public_pages_stay_open(server: AuthServer) -> None:
    run_id = _run(server, "0")
    for method, path, params in [
        ("GET", "experiments/get", {"experiment_id": "0"}),
        ("POST", "experiments/search", None),
        ("GET", "runs/get", {"run_id": run_id}),
        ("GET", "registered-models/search", None),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/0/x.txt", None),
        ("POST", "/api/2.0/cairn/runs/lease/get", None),
        ("GET", "/api/2.0/mlflow/no-such-endpoint", None),
    ]:
        response = server.call(method, path, params=params)
        message = _error(response, 401, "UNAUTHENTICATED")
        assert "CAIRN_TRACKING_TOKEN" in message and "MLFLOW_TRACKING_USERNAME" in message
        assert response.headers["www-authenticate"] == 'Basic realm="cairn"'
    ui = server.call("GET", "/api/experiments")
    _error(ui, 401, "UNAUTHENTICATED")
    assert "www-authenticate" not in ui.headers  # no browser login dialog over the UI
    for path in ("/health", "/version", "/"):
        assert server.call("GET", path).status_code == 200
    assert server.call("GET", "/api/3.0/mlflow/server-info").status_code == 200


def test_bad_removed_and_rotated_credentials_get_401_and_the_server_keeps_serving(server: AuthServer) -> None:
    token = server.user("alice", experiments={"0": "READ"})
    assert server.call("GET", "experiments/get", token, params={"experiment_id": "0"}).status_code == 200
    new = server.users.rotate_token("alice")
    _error(server.call("GET", "experiments/get", token, params={"experiment_id": "0"}), 401, "UNAUTHENTICATED")
    assert server.call("GET", "experiments/get", new, params={"experiment_id": "0"}).status_code == 200
    server.users.remove("alice")
    message = _error(server.call("GET", "experiments/get", new, params={"experiment_id": "0"}), 401, "UNAUTHENTICATED")
    assert "removed" in message
    for headers in ({"Authorization": "Bearer"}, {"Authorization": "Digest x"}, {"Authorization": "Basic !!!"}):
        _error(server.call("GET", "experiments/search", headers=headers), 401, "UNAUTHENTICATED")
    _error(server.call("GET", "experiments/search", auth=("root", "wrong")), 401, "UNAUTHENTICATED")
    assert server.call("GET", "experiments/search", server.admin).status_code == 200


def test_basic_auth_takes_a_password_or_the_token(server: AuthServer) -> None:
    token = server.user("bob", experiments={"0": "READ"})
    server.users.set_password("bob", "bob-password")
    for secret in ("bob-password", token):
        response = server.call("GET", "experiments/get", params={"experiment_id": "0"}, auth=("bob", secret))
        assert response.status_code == 200, response.text
    raw = base64.b64encode(b"bob:bob-password").decode()
    assert server.call("GET", "experiments/search", headers={"Authorization": f"basic {raw}"}).status_code == 200


def test_a_read_user_reads_and_gets_403_on_every_write(server: AuthServer) -> None:
    experiment_id = server.client.create_experiment("shared")
    run_id = _run(server, experiment_id)
    token = server.user("reader", experiments={experiment_id: "READ"})
    assert server.call("GET", "runs/get", token, params={"run_id": run_id}).status_code == 200
    assert server.call("GET", "experiments/get", token, params={"experiment_id": experiment_id}).status_code == 200
    writes = [
        ("runs/create", {"experiment_id": experiment_id}),
        ("runs/log-batch", {"run_id": run_id, "metrics": [{"key": "m", "value": 1, "timestamp": 1, "step": 0}]}),
        ("runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
        ("runs/update", {"run_id": run_id, "status": "FINISHED"}),
        ("runs/delete", {"run_id": run_id}),
        ("experiments/set-experiment-tag", {"experiment_id": experiment_id, "key": "k", "value": "v"}),
        ("experiments/delete", {"experiment_id": experiment_id}),
    ]
    for path, body in writes:
        message = _error(server.call("POST", path, token, json=body), 403, "PERMISSION_DENIED")
        assert "'reader' has READ on experiment" in message and "cairn users grant reader" in message
    put = server.call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/a.txt", token)
    _error(put, 403, "PERMISSION_DENIED")
    assert server.client.get_run(run_id).data.tags.get("k") is None  # nothing was written
    # an experiment without a grant is not even readable
    _error(server.call("GET", "experiments/get", token, params={"experiment_id": "0"}), 403, "PERMISSION_DENIED")


def test_edit_logs_and_uploads_but_deleting_needs_manage(server: AuthServer) -> None:
    experiment_id = server.client.create_experiment("work")
    editor = server.user("editor", experiments={experiment_id: "EDIT"})
    run = server.call("POST", "runs/create", editor, json={"experiment_id": experiment_id}).json()["run"]["info"]
    run_id = run["run_id"]
    batch = {"run_id": run_id, "metrics": [{"key": "loss", "value": 0.5, "timestamp": 1, "step": 0}]}
    assert server.call("POST", "runs/log-batch", editor, json=batch).status_code == 200
    artifact = f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/notes.txt"
    assert server.call("PUT", artifact, editor, content=b"hello").status_code == 200
    assert server.call("GET", artifact, editor).content == b"hello"
    _error(server.call("DELETE", artifact, editor), 403, "PERMISSION_DENIED")
    _error(server.call("POST", "runs/delete", editor, json={"run_id": run_id}), 403, "PERMISSION_DENIED")
    manager = server.user("manager", experiments={experiment_id: "MANAGE"})
    assert server.call("DELETE", artifact, manager).status_code == 200
    assert server.call("POST", "runs/delete", manager, json={"run_id": run_id}).status_code == 200
    assert server.call("POST", "runs/restore", manager, json={"run_id": run_id}).status_code == 200
    assert server.client.get_metric_history(run_id, "loss")[0].value == 0.5


def test_searches_show_only_readable_experiments_page_by_page(server: AuthServer) -> None:
    ids = [server.client.create_experiment(f"exp-{i}") for i in range(5)]
    runs = {e: _run(server, e) for e in ids}
    visible = ids[1:4]
    token = server.user("viewer", experiments={e: "READ" for e in visible})
    seen: list[str] = []
    page_token = None
    pages = 0
    while True:
        body = {"max_results": 2, **({"page_token": page_token} if page_token else {})}
        answer = server.call("POST", "experiments/search", token, json=body).json()
        seen += [e["experiment_id"] for e in answer.get("experiments", [])]
        pages += 1
        page_token = answer.get("next_page_token")
        if not page_token:
            break
    assert sorted(seen) == sorted(visible) and pages == 2
    admin_seen = server.call("GET", "experiments/search", server.admin, params={"max_results": 100}).json()
    assert len(admin_seen["experiments"]) == 6  # the 5 and Default
    found = server.call("POST", "runs/search", token, json={"experiment_ids": [*ids, "0"], "max_results": 1})
    first = found.json()
    assert len(first["runs"]) == 1 and first["runs"][0]["info"]["experiment_id"] in visible
    second = server.call(
        "POST",
        "runs/search",
        token,
        json={"experiment_ids": ids, "max_results": 5, "page_token": first["next_page_token"]},
    ).json()
    got = {r["info"]["run_id"] for r in first["runs"] + second["runs"]}
    assert got == {runs[e] for e in visible} and "next_page_token" not in second
    hidden = server.call("POST", "runs/search", token, json={"experiment_ids": [ids[0]]}).json()
    assert hidden.get("runs", []) == []


def test_registry_searches_show_only_readable_models_page_by_page(server: AuthServer) -> None:
    names = [f"model-{i}" for i in range(4)]
    run_id = _run(server, "0")
    for name in names:
        server.client.create_registered_model(name)
        server.client.registry_store.create_model_version(
            name, f"{server.artifact_root}/0/{run_id}/artifacts/m", run_id=run_id
        )
    token = server.user("modeler", models={"model-1": "READ", "model-3": "EDIT"})
    first = server.call("GET", "registered-models/search", token, params={"max_results": 1}).json()
    second = server.call(
        "GET", "registered-models/search", token, params={"max_results": 1, "page_token": first["next_page_token"]}
    ).json()
    assert [m["name"] for m in first["registered_models"] + second["registered_models"]] == ["model-1", "model-3"]
    assert "next_page_token" not in second
    versions = server.call("GET", "model-versions/search", token, params={"max_results": 10}).json()
    assert sorted(v["name"] for v in versions["model_versions"]) == ["model-1", "model-3"]
    assert len(server.call("GET", "registered-models/search", server.admin).json()["registered_models"]) == 4
    _error(server.call("GET", "registered-models/get", token, params={"name": "model-0"}), 403, "PERMISSION_DENIED")
    latest = server.call("POST", "registered-models/get-latest-versions", token, json={"name": "model-1"})
    assert latest.status_code == 200 and latest.json()["model_versions"][0]["version"] == "1"
    _error(
        server.call(
            "POST",
            "model-versions/transition-stage",
            token,
            json={"name": "model-1", "version": "1", "stage": "Production", "archive_existing_versions": False},
        ),
        403,
        "PERMISSION_DENIED",
    )


def test_get_by_name_of_an_unreadable_experiment_is_403_and_of_a_missing_one_404(server: AuthServer) -> None:
    server.client.create_experiment("secret")
    token = server.user("eve")
    message = _error(
        server.call("GET", "experiments/get-by-name", token, params={"experiment_name": "secret"}),
        403,
        "PERMISSION_DENIED",
    )
    assert "experiment 'secret'" in message
    _error(
        server.call("GET", "experiments/get-by-name", token, params={"experiment_name": "nope"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )


def test_the_creator_of_an_experiment_or_model_gets_manage(server: AuthServer) -> None:
    token = server.user("maker")
    other = server.user("other")
    experiment_id = server.call("POST", "experiments/create", token, json={"name": "mine"}).json()["experiment_id"]
    assert server.users.by_name("maker") == Principal("maker", False, {experiment_id: Permission.MANAGE}, {})
    run_id = server.call("POST", "runs/create", token, json={"experiment_id": experiment_id}).json()["run"]["info"][
        "run_id"
    ]
    assert server.call("POST", "runs/delete", token, json={"run_id": run_id}).status_code == 200
    _error(server.call("GET", "runs/get", other, params={"run_id": run_id}), 403, "PERMISSION_DENIED")
    assert server.call("POST", "experiments/search", other, json={}).json().get("experiments", []) == []
    assert server.call("POST", "registered-models/create", token, json={"name": "churn"}).status_code == 200
    assert server.users.by_name("maker").models == {"churn": Permission.MANAGE}  # type: ignore[union-attr]
    renamed = server.call("POST", "registered-models/rename", token, json={"name": "churn", "new_name": "churn-2"})
    assert renamed.status_code == 200
    assert server.users.by_name("maker").models == {"churn-2": Permission.MANAGE}  # type: ignore[union-attr]
    assert server.call("DELETE", "registered-models/delete", token, json={"name": "churn-2"}).status_code == 200
    assert server.users.by_name("maker").models == {}  # type: ignore[union-attr]
    # a name taken by another user's model is not the creator's: create fails, nothing is granted
    server.client.create_registered_model("taken")
    _error(
        server.call("POST", "registered-models/create", other, json={"name": "taken"}), 400, "RESOURCE_ALREADY_EXISTS"
    )
    assert server.users.by_name("other").models == {}  # type: ignore[union-attr]


def test_registering_a_version_needs_read_on_the_run_it_comes_from(server: AuthServer) -> None:
    hidden = server.client.create_experiment("hidden")
    run_id = _run(server, hidden)
    server.client.create_registered_model("reg")
    token = server.user("registrar", models={"reg": "EDIT"})
    body = {"name": "reg", "source": f"runs:/{run_id}/model", "run_id": run_id}
    message = _error(server.call("POST", "model-versions/create", token, json=body), 403, "PERMISSION_DENIED")
    assert f"of run {run_id}" in message
    source = f"mlflow-artifacts:/{hidden}/{run_id}/artifacts/model"
    _error(
        server.call("POST", "model-versions/create", token, json={"name": "reg", "source": source}),
        403,
        "PERMISSION_DENIED",
    )


def test_logged_models_resolve_to_their_experiment(server: AuthServer) -> None:
    experiment_id = server.client.create_experiment("lm")
    run_id = _run(server, experiment_id)
    editor = server.user("lm-editor", experiments={experiment_id: "EDIT"})
    stranger = server.user("lm-stranger", experiments={"0": "MANAGE"})
    created = server.call(
        "POST", "logged-models", editor, json={"experiment_id": experiment_id, "source_run_id": run_id, "name": "m"}
    )
    model_id = created.json()["model"]["info"]["model_id"]
    assert server.call("GET", f"logged-models/{model_id}", editor).status_code == 200
    _error(server.call("GET", f"logged-models/{model_id}", stranger), 403, "PERMISSION_DENIED")
    _error(server.call("DELETE", f"logged-models/{model_id}", editor), 403, "PERMISSION_DENIED")
    search = {"experiment_ids": [experiment_id, "0"]}
    assert len(server.call("POST", "logged-models/search", editor, json=search).json()["models"]) == 1
    assert server.call("POST", "logged-models/search", stranger, json=search).json()["models"] == []


def test_bad_bodies_still_answer_mlflow_errors(server: AuthServer) -> None:
    experiment_id = server.client.create_experiment("bodies")
    run_id = _run(server, experiment_id)
    token = server.user("sloppy", experiments={experiment_id: "EDIT"})
    headers = {"Content-Type": "application/json"}
    for content, expected in [
        (b"{not json", "Malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"run_id": ["a", "b"]}', "given once"),
        (b'{"run_id": {"a": 1}}', "expected a string"),
        (b"{}", "Missing value for required parameter 'run_id'"),
    ]:
        response = server.call("POST", "runs/log-batch", token, content=content, headers=headers)
        assert expected in _error(response, 400, "INVALID_PARAMETER_VALUE")
    too_big = server.call("POST", "runs/set-tag", token, content=b" " * (10 * 1024 * 1024 + 1), headers=headers)
    assert "exceeds the limit" in _error(too_big, 400, "INVALID_PARAMETER_VALUE")
    over_batch_limit = {"run_id": run_id, "params": [{"key": "p", "value": "x" * 1_100_000}]}
    response = server.call("POST", "runs/log-batch", token, json=over_batch_limit)
    assert "exceeds the limit" in _error(response, 400, "INVALID_PARAMETER_VALUE")
    unsafe = server.call("GET", f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/%2E%2E/0/x", token)
    assert "'..'" in _error(unsafe, 400, "INVALID_PARAMETER_VALUE")  # not a way into experiment 0
    _error(server.call("GET", "/api/2.0/mlflow-artifacts/artifacts/shared/x.txt", token), 403, "PERMISSION_DENIED")
    assert (
        server.call("POST", "runs/set-tag", token, json={"run_id": run_id, "key": "k", "value": "v"}).status_code == 200
    )


def test_paths_without_a_rule_are_for_admins_and_unknown_endpoints_stay_404(server: AuthServer) -> None:
    token = server.user("plain")
    _error(server.call("GET", "no-such-endpoint", token), 404, "ENDPOINT_NOT_FOUND")
    _error(server.call("GET", "no-such-endpoint", server.admin), 404, "ENDPOINT_NOT_FOUND")
    assert "only admins" in _error(server.call("GET", "/favicon.ico", token), 403, "PERMISSION_DENIED")
    assert server.call("GET", "/favicon.ico", server.admin).status_code == 404
    _error(
        server.call("POST", "/api/2.0/mlflow-artifacts/mpu/create", token, json={"path": "x"}), 403, "PERMISSION_DENIED"
    )


def test_grants_apply_to_the_next_request_without_a_restart(server: AuthServer) -> None:
    token = server.user("late")
    _error(server.call("GET", "experiments/get", token, params={"experiment_id": "0"}), 403, "PERMISSION_DENIED")
    server.users.grant("late", ResourceKind.EXPERIMENT, "0", Permission.READ)
    assert server.call("GET", "experiments/get", token, params={"experiment_id": "0"}).status_code == 200
    server.users.revoke("late", ResourceKind.EXPERIMENT, "0")
    _error(server.call("GET", "experiments/get", token, params={"experiment_id": "0"}), 403, "PERMISSION_DENIED")


def test_a_browser_write_from_another_site_is_refused_even_with_cached_basic_credentials(server: AuthServer) -> None:
    experiment_id = server.client.create_experiment("csrf")
    run_id = _run(server, experiment_id)
    server.user("victim", experiments={experiment_id: "MANAGE"})
    server.users.set_password("victim", "victim-password")
    basic = ("victim", "victim-password")
    body = {"run_id": run_id}
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
    ):
        response = server.call("POST", "runs/delete", json=body, auth=basic, headers=headers)
        assert "another site" in _error(response, 403, "PERMISSION_DENIED")
    assert server.client.get_run(run_id).info.lifecycle_stage.value == "active"
    same_origin = server.call("POST", "runs/delete", json=body, auth=basic, headers={"Sec-Fetch-Site": "same-origin"})
    assert same_origin.status_code == 200
    read = server.call("GET", "runs/get", params=body, auth=basic, headers={"Sec-Fetch-Site": "cross-site"})
    assert read.status_code == 200  # a read: the browser keeps the answer from the other site anyway


def test_a_failing_user_table_answers_an_mlflow_error_and_the_server_keeps_serving(server: AuthServer) -> None:
    token = server.user("unlucky", experiments={"0": "READ"})
    with server.users._db.engine.begin() as connection:  # the grants table disappears under the server
        connection.exec_driver_sql("ALTER TABLE cairn_user_permissions RENAME TO cairn_user_permissions_away")
    try:
        response = server.call("GET", "experiments/get", token, params={"experiment_id": "0"})
        assert response.status_code == 500
        assert response.json()["error_code"] == "INTERNAL_ERROR"
        assert "could not check the request's credentials" in response.json()["message"]
        assert server.call("GET", "/health").text == "OK"
    finally:
        with server.users._db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE cairn_user_permissions_away RENAME TO cairn_user_permissions")
    assert server.call("GET", "experiments/get", token, params={"experiment_id": "0"}).status_code == 200


def test_a_session_cookie_authenticates_the_ui_but_not_the_mlflow_api(server: AuthServer) -> None:
    from cairn.server.auth.session import issue_cookie

    server.user("browser", experiments={"0": "READ"})
    cookie = {"Cookie": f"cairn_session={issue_cookie('browser', server.users)}"}
    assert server.call("GET", "/api/experiments", headers=cookie).status_code == 200
    # A cross-site form could carry this cookie to the MLflow API: there it counts for nothing.
    _error(server.call("POST", "experiments/search", json={}, headers=cookie), 401, "UNAUTHENTICATED")
    _error(server.call("GET", "/api/2.0/mlflow-artifacts/artifacts/0/x", headers=cookie), 401, "UNAUTHENTICATED")
    server.users.remove("browser")
    _error(server.call("GET", "/api/experiments", headers=cookie), 401, "UNAUTHENTICATED")
