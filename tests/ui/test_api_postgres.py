"""The UI's own SQL (keys, counts, filtered totals, series) on PostgreSQL, through the API."""

from __future__ import annotations

import pytest

from tests.ui._data import XSS_NAME
from tests.ui.conftest import UiEnv

pytestmark = pytest.mark.postgres


def test_experiment_counts_and_keys(pg_ui_env: UiEnv) -> None:
    experiments = {e["name"]: e for e in pg_ui_env.http.get("/api/experiments").json()["experiments"]}
    assert experiments["vision"]["run_count"] == 4 and experiments["empty experiment"]["run_count"] == 0
    keys = pg_ui_env.http.get(f"/api/experiments/{pg_ui_env.data.experiment_id}/keys").json()["keys"]
    assert keys == {"params": ["batch_size", "lr", "optimizer"], "metrics": ["accuracy", "loss"]}


def test_filtered_page_total_and_order(pg_ui_env: UiEnv) -> None:
    url = f"/api/experiments/{pg_ui_env.data.experiment_id}/runs"
    body = pg_ui_env.http.get(
        url, params={"filter": "params.batch_size = '32'", "order_by": "metrics.loss DESC"}
    ).json()
    assert [r["run_name"] for r in body["runs"]] == [XSS_NAME, "baseline"] and body["total"] == 2
    error = pg_ui_env.http.get(url, params={"filter": "metrics.loss <<< 1"}).json()["error"]
    assert error["type"] == "FilterSyntaxError" and error["position"] == 14


def test_metric_series_and_compare(pg_ui_env: UiEnv) -> None:
    data = pg_ui_env.data
    series = pg_ui_env.http.get(f"/api/runs/{data.baseline}/metric", params={"key": "loss", "max_points": 50}).json()
    assert series["downsampled"] is True and len(series["values"]) <= 50 and series["total"] == 200
    assert max(series["values"]) == pytest.approx(1.0) and series["steps"][0] == 0 and series["steps"][-1] == 199
    compare = pg_ui_env.http.get("/api/compare", params=[("runs", data.baseline), ("runs", data.wider)]).json()
    assert {row["key"]: row["differs"] for row in compare["params"]} == {
        "batch_size": True,
        "lr": True,
        "optimizer": True,
    }


def test_delete_and_restore(pg_ui_env: UiEnv) -> None:
    run_id = pg_ui_env.data.hostile
    assert pg_ui_env.http.delete(f"/api/runs/{run_id}", headers=pg_ui_env.write_headers()).status_code == 200
    counts = {e["name"]: e for e in pg_ui_env.http.get("/api/experiments").json()["experiments"]}
    assert counts["vision"]["deleted_run_count"] == 1
    assert pg_ui_env.http.post(f"/api/runs/{run_id}/restore", headers=pg_ui_env.write_headers()).status_code == 200
    assert pg_ui_env.http.get(f"/api/runs/{run_id}").json()["run"]["lifecycle_stage"] == "active"
