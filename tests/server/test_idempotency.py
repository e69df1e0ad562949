"""Exactly-once log-batch: ``cairn server`` honours the ``Idempotency-Key`` header.

Raw HTTP replays (one server; a batch sent to one server and replayed to another on the same SQLite or
PostgreSQL database), a key reused with another body, and the whole chain: cairn's HTTP client store
against cairn server through a transport that loses the response of the first log-batch after the server
processed it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cairn.store.base import MetricPoint
from cairn.store.rest import RestTrackingStore
from cairn.store.rest.http import encode_json
from cairn.store.rest.spool import SpoolRecord, _points_record, record_points
from cairn.store.rest.store import _metric_js
from cairn.tracking.client import Client
from cairn.tracking.entities import Metric, Param, RunTag
from tests.server.conftest import RunningServer, serve

TRACKING_ONLY = ("cairn.server.tracking_api",)
BATCH = "/api/2.0/mlflow/runs/log-batch"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    root = tmp_path / "server"
    client = Client(f"sqlite:///{root}/cairn.db", str(root / "artifacts"))
    with serve(client, str(root / "artifacts"), api_modules=TRACKING_ONLY) as running:
        yield running


def _new_run(client: Client) -> str:
    return client.store.create_run("0", user_id="t", start_time=1000, run_name="r").info.run_id


def _body(run_id: str, first_step: int = 0) -> dict[str, Any]:
    metrics = [{"key": "loss", "value": 0.5, "timestamp": 2000 + i, "step": first_step + i} for i in range(5)]
    return {"run_id": run_id, "metrics": metrics, "params": [{"key": "lr", "value": "0.1"}], "tags": []}


def _post(url: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return httpx.post(url + BATCH, json=body, headers=headers, timeout=30)


def _steps(client: Client, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_replayed_key_is_stored_once_and_a_new_key_again(server: RunningServer) -> None:
    run_id = _new_run(server.client)
    for _ in range(3):
        response = _post(server.url, _body(run_id), "key-1")
        assert (response.status_code, response.json()) == (200, {})
    assert _steps(server.client, run_id) == list(range(5))
    # another key, or no key (the real mlflow client sends none), is another write of the same points
    assert _post(server.url, _body(run_id), "key-2").status_code == 200
    assert _post(server.url, _body(run_id), None).status_code == 200
    assert _steps(server.client, run_id) == sorted(list(range(5)) * 3)


def test_a_key_replayed_with_another_body_is_invalid_and_writes_nothing(server: RunningServer) -> None:
    run_id = _new_run(server.client)
    assert _post(server.url, _body(run_id), "k").status_code == 200
    changed = _body(run_id, first_step=100)
    changed["tags"] = [{"key": "t", "value": "x"}]
    response = _post(server.url, changed, "k")
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "different request" in response.json()["message"]
    assert _steps(server.client, run_id) == list(range(5))
    assert "t" not in server.client.get_run(run_id).data.tags
    # the key stands for the request's bytes: the same body encoded otherwise is another request
    reordered = {k: _body(run_id)[k] for k in ("tags", "params", "metrics", "run_id")}
    assert _post(server.url, reordered, "k").status_code == 400
    assert _post(server.url, _body(run_id), "k").status_code == 200
    assert _steps(server.client, run_id) == list(range(5))


def test_a_spooled_request_is_resent_with_the_same_bytes() -> None:
    """The server compares a replayed key's body byte for byte: a spool record must encode back to the
    request first sent (awkward floats, big integers, non-ASCII keys included)."""
    values = [0.1, -0.0, 1e-320, 1.7976931348623157e308, float("nan"), float("inf"), float("-inf"), 3.0, 2.5e-7]
    points = [
        MetricPoint("a" * 32, key, value, 2**62 + i, -(2**40) + i)
        for i, (key, value) in enumerate(zip(["loss", "naïve/κ", "t x"] * 3, values, strict=True))
    ]

    def sent(batch: list[MetricPoint]) -> bytes:  # what log_keyed_points puts on the wire
        metrics = [_metric_js(p.key, p.value, p.timestamp, p.step) for p in batch]
        return encode_json({"run_id": batch[0].run_id, "metrics": metrics, "params": [], "tags": []})

    record = json.loads(json.dumps(_points_record("k", "a" * 32, points), separators=(",", ":")))
    assert sent(record_points(SpoolRecord(record, 0))) == sent(points)


def test_a_rejected_batch_leaves_its_key_unused(server: RunningServer) -> None:
    run_id = _new_run(server.client)
    bad = _body(run_id)
    bad["metrics"][0]["value"] = "not a number"
    assert _post(server.url, bad, "k").status_code == 400
    unknown = _post(server.url, _body("f" * 32), "k")
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert _post(server.url, _body(run_id), "k").status_code == 200
    assert _steps(server.client, run_id) == list(range(5))
    too_long = _post(server.url, _body(run_id), "k" * 257)
    assert (too_long.status_code, too_long.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert _steps(server.client, run_id) == list(range(5))


def test_a_batch_replayed_to_another_server_on_the_same_database_is_stored_once(db_url: str, tmp_path: Path) -> None:
    artifact_root = str(tmp_path / "artifacts")
    first, second = Client(db_url, artifact_root), Client(db_url, artifact_root)
    with (
        serve(first, artifact_root, api_modules=TRACKING_ONLY) as one,
        serve(second, artifact_root, api_modules=TRACKING_ONLY) as two,
    ):
        run_id = _new_run(first)
        for url in (one.url, two.url, one.url):
            assert _post(url, _body(run_id), "shared").status_code == 200
        assert _post(two.url, _body(run_id, 100), "shared").status_code == 400
        steps = _steps(first, run_id)
    assert steps == list(range(5))


class LoseFirstResponse(httpx.BaseTransport):
    """The real transport; the first response to each of the first ``lose`` log-batch requests is lost
    after the server processed the request (the connection breaks, or a gateway answers 504)."""

    def __init__(self, lose: int, how: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose = lose
        self.how = how
        self.keys: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/runs/log-batch"):
            return response
        key = request.headers["Idempotency-Key"]
        first_try = key not in self.keys
        self.keys.append(key)
        if first_try and len(set(self.keys)) <= self.lose:
            response.read()
            response.close()
            assert response.status_code == 200  # the server stored it; the client never hears so
            if self.how == "broken":
                raise httpx.RemoteProtocolError("connection lost before the response", request=request)
            return httpx.Response(504, text="<html>gateway timeout</html>")
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("how", ["broken", "504"])
def test_rest_store_against_cairn_server_stores_every_point_once(server: RunningServer, how: str) -> None:
    """Retries of one request share its key; every call without a key gets a fresh one, so the same tag value
    set again after another one is written; a call resent with its key is stored once."""
    transport = LoseFirstResponse(lose=10, how=how)
    store = RestTrackingStore(server.url, transport=transport, backoff=0.01, max_backoff=0.05)
    try:
        run_id = store.create_run("0", user_id="t", start_time=int(time.time() * 1000), run_name="r").info.run_id
        store.log_batch(run_id, [Metric("loss", 0.1, 5000 + i, i) for i in range(2500)], [Param("lr", "0.1")])
        store.log_metric_points([MetricPoint(run_id, "acc", 0.5, 7000 + i, i) for i in range(1200)])
        # the same tag value again after another one: equal requests that must both be written
        for value in ("a", "b", "a"):
            store.log_batch(run_id, tags=[RunTag("t", value)])
        # a batch resent after a failure under its key (every request again): no point twice
        resent = [MetricPoint(run_id, "resent", 0.25, 8000 + i, i) for i in range(2100)]
        store.log_metric_points(resent, idempotency_key="batch-1")
        store.log_metric_points(resent, idempotency_key="batch-1")
    finally:
        store.close()
    client = server.client
    assert _steps(client, run_id) == list(range(2500))
    assert _steps(client, run_id, "acc") == list(range(1200))
    assert _steps(client, run_id, "resent") == list(range(2100))
    run = client.get_run(run_id)
    assert run.data.tags["t"] == "a"
    assert run.data.params == {"lr": "0.1"}
    # requests: lr + 3 loss pieces, 2 acc pieces, 3 tag sets, 3 resent pieces (their resend reuses the keys)
    distinct = list(dict.fromkeys(transport.keys))
    assert len(distinct) == 12
    # the first 10 responses were lost: each of those requests was retried with its own key
    assert [transport.keys.count(k) for k in distinct] == [2] * 9 + [3, 2, 2]
