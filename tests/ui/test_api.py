"""The UI's JSON API over a populated SQLite store: every endpoint, its errors and its limits."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.ui._data import XSS_NAME, XSS_PARAM
from tests.ui.conftest import UiEnv


def test_session_gives_the_write_token_and_server_facts(ui_env: UiEnv) -> None:
    response = ui_env.http.get("/api/session")
    body = response.json()
    assert body["csrf"] == response.cookies["cairn_csrf"] and len(body["csrf"]) >= 32
    assert body["auth"] is False and body["user"] is None
    assert body["store"].endswith("cairn.db")
    assert body["version"]


def test_experiments_list_with_run_counts(ui_env: UiEnv) -> None:
    body = ui_env.http.get("/api/experiments").json()
    by_name = {e["name"]: e for e in body["experiments"]}
    assert {"Default", "vision", "empty experiment"} <= set(by_name)
    assert by_name["vision"]["run_count"] == 4
    assert by_name["vision"]["deleted_run_count"] == 0
    assert by_name["empty experiment"]["run_count"] == 0


def test_experiment_detail_lists_param_and_metric_keys(ui_env: UiEnv) -> None:
    body = ui_env.http.get(f"/api/experiments/{ui_env.data.experiment_id}").json()
    assert body["experiment"]["name"] == "vision" and body["experiment"]["run_count"] == 4
    keys = ui_env.http.get(f"/api/experiments/{ui_env.data.experiment_id}/keys").json()["keys"]
    assert keys == {"params": ["batch_size", "lr", "optimizer"], "metrics": ["accuracy", "loss"]}
    empty = ui_env.http.get(f"/api/experiments/{ui_env.data.empty_experiment_id}/keys").json()["keys"]
    assert empty == {"params": [], "metrics": []}
    assert ui_env.http.get("/api/experiments/999").status_code == 404
    assert ui_env.http.get("/api/experiments/abc").status_code == 404
    assert ui_env.http.get("/api/experiments/999/keys").status_code == 404


def _runs(ui_env: UiEnv, **params: object) -> dict:
    response = ui_env.http.get(f"/api/experiments/{ui_env.data.experiment_id}/runs", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_runs_page_carries_params_latest_metrics_and_list_tags(ui_env: UiEnv) -> None:
    body = _runs(ui_env)
    assert body["total"] == 4 and body["next_page_token"] is None
    names = [r["run_name"] for r in body["runs"]]
    assert names == ["live-run", XSS_NAME, "wider", "baseline"]  # newest first
    baseline = body["runs"][3]
    assert baseline["params"] == {"lr": "0.01", "batch_size": "32", "optimizer": "adam"}
    assert baseline["metrics"]["loss"] == pytest.approx(1.0 / (1 + 0.05 * 199))
    assert baseline["status"] == "FINISHED" and body["runs"][0]["status"] == "RUNNING"
    assert "team" not in baseline["tags"] and "mlflow.user" in baseline["tags"]


def test_runs_pagination_walks_every_run_once(ui_env: UiEnv) -> None:
    first = _runs(ui_env, max_results=3, order_by="metrics.loss ASC")
    assert len(first["runs"]) == 3 and first["total"] == 4 and first["next_page_token"]
    second = _runs(ui_env, max_results=3, order_by="metrics.loss ASC", page_token=first["next_page_token"])
    assert len(second["runs"]) == 1 and second["next_page_token"] is None
    ids = [r["run_id"] for r in first["runs"] + second["runs"]]
    assert sorted(ids) == sorted(ui_env.data.run_ids)
    losses = [r["metrics"]["loss"] for r in first["runs"] + second["runs"]]
    assert losses == sorted(losses)


def test_runs_filter_and_order_by_a_param(ui_env: UiEnv) -> None:
    body = _runs(ui_env, filter="params.batch_size = '32' and metrics.loss < 0.2", order_by="params.`lr` DESC")
    assert [r["run_name"] for r in body["runs"]] == ["baseline", XSS_NAME]
    assert body["total"] == 2


@pytest.mark.parametrize(
    ("filter_string", "bad_token"),
    [
        ("metrics.loss <<< 1", "<"),
        ("metrics.loss < 1 and params.lr = ", ""),
        ("metrics.loss < 1 or metrics.loss > 2", "or"),
        ("nosuch.thing = 1", "nosuch"),
    ],
)
def test_filter_syntax_errors_come_back_with_the_caret_position(
    ui_env: UiEnv, filter_string: str, bad_token: str
) -> None:
    response = ui_env.http.get(f"/api/experiments/{ui_env.data.experiment_id}/runs", params={"filter": filter_string})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "FilterSyntaxError"
    assert error["text"] == filter_string
    assert "\n" not in error["message"] and error["message"]
    assert 0 <= error["position"] <= len(filter_string)
    assert filter_string[error["position"] :].lower().startswith(bad_token)


def test_bad_order_by_view_and_page_size_are_400(ui_env: UiEnv) -> None:
    url = f"/api/experiments/{ui_env.data.experiment_id}/runs"
    assert ui_env.http.get(url, params={"order_by": "metrics.loss SIDEWAYS"}).json()["error"]["type"] == (
        "FilterSyntaxError"
    )
    assert ui_env.http.get(url, params={"view": "everything"}).status_code == 400
    assert ui_env.http.get(url, params={"max_results": "0"}).status_code == 400
    assert ui_env.http.get(url, params={"max_results": "ten"}).status_code == 400
    assert ui_env.http.get(url, params={"page_token": "garbage"}).status_code == 400


def test_run_detail(ui_env: UiEnv) -> None:
    body = ui_env.http.get(f"/api/runs/{ui_env.data.baseline}").json()
    run = body["run"]
    assert run["run_name"] == "baseline" and run["tags"]["team"] == "perception"
    assert body["experiment"] == {"experiment_id": ui_env.data.experiment_id, "name": "vision"}
    assert body["metric_keys"] == ["accuracy", "loss"]
    assert [(v["name"], v["version"], v["aliases"]) for v in body["model_versions"]] == [
        ("classifier", "1", ["champion"])
    ]
    missing = ui_env.http.get("/api/runs/0123456789abcdef0123456789abcdef")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "RunNotFound"


def test_hostile_values_come_back_verbatim_as_json(ui_env: UiEnv) -> None:
    response = ui_env.http.get(f"/api/runs/{ui_env.data.hostile}")
    assert response.headers["content-type"] == "application/json"
    run = response.json()["run"]
    assert run["run_name"] == XSS_NAME and run["params"]["optimizer"] == XSS_PARAM


def test_metric_series_short_is_exact(ui_env: UiEnv) -> None:
    body = ui_env.http.get(f"/api/runs/{ui_env.data.baseline}/metric", params={"key": "loss"}).json()
    assert body["downsampled"] is False and body["total"] == 200
    assert body["steps"] == list(range(200))
    assert body["values"][0] == pytest.approx(1.0)
    assert body["timestamps"][1] - body["timestamps"][0] == 1000


def test_metric_series_errors(ui_env: UiEnv) -> None:
    url = f"/api/runs/{ui_env.data.baseline}/metric"
    assert ui_env.http.get(url).status_code == 400
    assert ui_env.http.get(url, params={"key": "loss", "max_points": "5"}).status_code == 400
    assert ui_env.http.get(url, params={"key": "loss", "x": "wall"}).status_code == 400
    assert (
        ui_env.http.get("/api/runs/ffffffffffffffffffffffffffffffff/metric", params={"key": "loss"}).status_code == 404
    )
    empty = ui_env.http.get(url, params={"key": "never-logged"}).json()
    assert empty["values"] == [] and empty["total"] == 0


def test_compare_marks_differing_params_and_metrics(ui_env: UiEnv) -> None:
    data = ui_env.data
    body = ui_env.http.get("/api/compare", params=[("runs", data.baseline), ("runs", data.hostile)]).json()
    assert [r["run_id"] for r in body["runs"]] == [data.baseline, data.hostile]
    params = {row["key"]: row for row in body["params"]}
    assert params["batch_size"] == {"key": "batch_size", "values": ["32", "32"], "differs": False}
    assert params["lr"]["differs"] is True and params["lr"]["values"] == ["0.01", "0.001"]
    assert {row["key"] for row in body["metrics"]} == {"accuracy", "loss"}
    assert all(row["differs"] for row in body["metrics"])
    assert ui_env.http.get("/api/compare").status_code == 400
    assert ui_env.http.get("/api/compare", params={"runs": "nope"}).status_code == 404


def test_models_versions_aliases_stages_and_lineage(ui_env: UiEnv) -> None:
    models = ui_env.http.get("/api/models").json()["models"]
    assert [m["name"] for m in models] == ["classifier"]
    assert models[0]["aliases"] == {"champion": "1", "challenger": "2"}
    detail = ui_env.http.get("/api/model", params={"name": "classifier"}).json()
    versions = {v["version"]: v for v in detail["versions"]}
    assert versions["1"]["current_stage"] == "Production" and versions["1"]["aliases"] == ["champion"]
    assert versions["2"]["run_id"] == ui_env.data.wider and versions["2"]["run_exists"] is True
    lineage = ui_env.http.get("/api/model-version", params={"name": "classifier", "version": "1"}).json()
    assert lineage["version"]["description"] == "first cut"
    assert lineage["lineage"]["run_id"] == ui_env.data.baseline
    assert lineage["lineage"]["run"]["run_name"] == "baseline"
    assert lineage["lineage"]["params"]["optimizer"] == "adam"
    assert ui_env.http.get("/api/model", params={"name": "nope"}).status_code == 404
    assert ui_env.http.get("/api/model-version", params={"name": "classifier", "version": "9"}).status_code == 404


def test_delete_and_restore_a_run(ui_env: UiEnv) -> None:
    run_id = ui_env.data.wider
    url = f"/api/experiments/{ui_env.data.experiment_id}/runs"
    response = ui_env.http.delete(f"/api/runs/{run_id}", headers=ui_env.write_headers())
    assert response.status_code == 200 and response.json()["lifecycle_stage"] == "deleted"
    try:
        assert run_id not in [r["run_id"] for r in ui_env.http.get(url).json()["runs"]]
        deleted = ui_env.http.get(url, params={"view": "deleted"}).json()
        assert [r["run_id"] for r in deleted["runs"]] == [run_id] and deleted["total"] == 1
        assert ui_env.http.get(f"/api/runs/{run_id}").json()["run"]["lifecycle_stage"] == "deleted"
        counts = {e["name"]: e for e in ui_env.http.get("/api/experiments").json()["experiments"]}
        assert counts["vision"]["run_count"] == 3 and counts["vision"]["deleted_run_count"] == 1
    finally:
        restored = ui_env.http.post(f"/api/runs/{run_id}/restore", headers=ui_env.write_headers())
    assert restored.status_code == 200
    assert run_id in [r["run_id"] for r in ui_env.http.get(url).json()["runs"]]
    post_delete = ui_env.http.post(f"/api/runs/{run_id}/delete", headers=ui_env.write_headers())
    assert post_delete.status_code == 200
    assert ui_env.http.post(f"/api/runs/{run_id}/restore", headers=ui_env.write_headers()).status_code == 200
    missing = ui_env.http.delete("/api/runs/0123456789abcdef0123456789abcdef", headers=ui_env.write_headers())
    assert missing.status_code == 404


def test_unknown_api_route_is_a_json_404(ui_env: UiEnv) -> None:
    response = ui_env.http.get("/api/nothing/here")
    assert response.status_code == 404 and response.json()["error"]["message"] == "no API route /api/nothing/here"


def test_index_and_vendored_assets_are_served(ui_env: UiEnv) -> None:
    index = ui_env.http.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/main.js">' in index.text
    for path in ("/static/vendor/uPlot.iife.min.js", "/static/vendor/echarts.min.js", "/static/js/pages/runs.js"):
        response = ui_env.http.get(path)
        assert response.status_code == 200 and "javascript" in response.headers["content-type"], path
    assert ui_env.http.get("/static/vendor/uPlot.min.css").headers["content-type"].startswith("text/css")
    assert ui_env.http.get("/static/../app.py").status_code == 404


def test_model_names_with_quotes_spaces_and_markup_resolve(ui_env: UiEnv) -> None:
    name = "it's <b>a model<b> & more?#"
    client = ui_env.client
    client.create_model_version(name, f"runs:/{ui_env.data.baseline}/model", run_id=ui_env.data.baseline)
    try:
        body = ui_env.http.get(f"/api/model?name={quote(name, safe='')}").json()
        assert body["model"]["name"] == name and [v["version"] for v in body["versions"]] == ["1"]
    finally:
        client.delete_registered_model(name)


def test_nan_and_infinite_latest_values_are_json_strings(ui_env: UiEnv) -> None:
    experiment_id = ui_env.client.create_experiment("odd values")
    run_id = ui_env.client.create_run(experiment_id, run_name="odd values").info.run_id
    from cairn.tracking.entities import Metric

    ui_env.client.log_batch(
        run_id, metrics=[Metric("nan", float("nan"), 1, 0), Metric("inf", float("inf"), 1, 0), Metric("ok", 1.5, 1, 0)]
    )
    response = ui_env.http.get(f"/api/runs/{run_id}")
    metrics = response.json()["run"]["metrics"]
    assert metrics == {"nan": "NaN", "inf": "Infinity", "ok": 1.5}
    assert "NaN" not in response.text.replace('"NaN"', "")  # strict JSON: no bare NaN token
    series = ui_env.http.get(f"/api/runs/{run_id}/metric", params={"key": "nan"}).json()
    assert series["values"] == [None]
    json.loads(response.text)


def test_pagination_over_many_runs_in_metric_order(ui_env: UiEnv) -> None:
    from cairn.tracking.entities import Metric

    store = ui_env.client.store
    experiment_id = store.create_experiment("many runs")
    for i in range(120):
        run_id = store.create_run(experiment_id, user_id="u", start_time=1_000 + i, run_name=f"r{i}").info.run_id
        store.log_batch(run_id, metrics=[Metric("score", float((i * 37) % 120), 1, 0)])
    url = f"/api/experiments/{experiment_id}/runs"
    seen: list[float] = []
    token = None
    pages = 0
    while True:
        params: dict[str, object] = {
            "max_results": 50,
            "order_by": "metrics.score DESC",
            "filter": "metrics.score >= 10",
        }
        if token:
            params["page_token"] = token
        body = ui_env.http.get(url, params=params).json()
        assert body["total"] == 110
        seen += [r["metrics"]["score"] for r in body["runs"]]
        pages += 1
        token = body["next_page_token"]
        if token is None:
            break
    assert pages == 3
    assert seen == [float(v) for v in range(119, 9, -1)]  # every matching run once, in order
