"""cairn's own endpoints (``/api/2.0/cairn/``: supersede, fork, resume leases, capabilities) over real HTTP,
on SQLite and PostgreSQL; bad input is refused in MLflow's error shape and changes nothing; the REST client
store's resume operations go through them."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from cairn.errors import InvalidArgument, RunNotActive, RunNotFound
from cairn.store.rest import RestTrackingStore
from cairn.tracking.entities import Metric, Param, RunTag
from tests.server.conftest import RunningServer

API = "/api/2.0/cairn"


def _post(server: RunningServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{API}/{path}", json=body, timeout=30)


def _run_with_points(server: RunningServer, steps: range = range(1, 6)) -> str:
    client = server.client
    run_id = client.create_run("0", run_name="trained").info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric("loss", 1.0 / step, 1000 + step, step) for step in steps],
        params=[Param("lr", "0.1")],
        tags=[RunTag("team", "a")],
        synchronous=True,
    )
    return run_id


def _steps(server: RunningServer, run_id: str, **kwargs: Any) -> list[int]:
    return [m.step for m in server.client.get_metric_history(run_id, "loss", **kwargs)]


def test_supersede_hides_the_points_after_the_step(db_server: RunningServer) -> None:
    run_id = _run_with_points(db_server)
    answer = _post(db_server, "runs/supersede-metrics", {"run_id": run_id, "step": 3})
    assert answer.status_code == 200 and answer.json() == {"superseded": 2}
    assert _steps(db_server, run_id) == [1, 2, 3]
    assert _steps(db_server, run_id, include_superseded=True) == [1, 2, 3, 4, 5]  # kept
    history = httpx.get(
        f"{db_server.url}/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}
    ).json()
    assert [m["step"] for m in history["metrics"]] == [1, 2, 3]  # what MLflow clients see
    again = _post(db_server, "runs/supersede-metrics", {"run_id": run_id, "step": 3})
    assert again.json() == {"superseded": 0}


def test_fork_answers_the_new_run_as_runs_get_does(db_server: RunningServer) -> None:
    run_id = _run_with_points(db_server)
    answer = _post(db_server, "runs/fork", {"run_id": run_id, "up_to_step": 2, "start_time": 5000})
    assert answer.status_code == 200
    run = answer.json()["run"]
    fork_id = run["info"]["run_id"]
    assert fork_id != run_id and run["info"]["start_time"] == 5000
    assert run["info"]["run_name"] == "trained-fork-2"
    got = httpx.get(f"{db_server.url}/api/2.0/mlflow/runs/get", params={"run_id": fork_id}).json()["run"]
    assert run == got
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["cairn.forkedFrom"] == run_id and tags["cairn.forkedAtStep"] == "2" and tags["team"] == "a"
    assert run["data"]["params"] == [{"key": "lr", "value": "0.1"}]
    assert run["data"]["metrics"] == [{"key": "loss", "value": 0.5, "timestamp": 1002, "step": 2}]
    assert _steps(db_server, fork_id) == [1, 2] and _steps(db_server, run_id) == [1, 2, 3, 4, 5]

    named = _post(db_server, "runs/fork", {"run_id": run_id, "up_to_step": 4, "start_time": 0, "run_name": "b"})
    assert named.json()["run"]["info"]["run_name"] == "b"


def test_a_lease_is_taken_renewed_refused_and_released(db_server: RunningServer) -> None:
    run_id = db_server.client.create_run("0").info.run_id

    def call(path: str, **body: Any) -> Any:
        answer = _post(db_server, f"runs/lease/{path}", {"run_id": run_id, **body})
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert call("get") == {"lease": None}
    assert call("acquire", owner="host:1:a", ttl_seconds=30) == {"acquired": True}
    assert call("acquire", owner="host:1:a", ttl_seconds=30) == {"acquired": True}  # a retry: still its own
    assert call("acquire", owner="host:2:b", ttl_seconds=30) == {"acquired": False}
    lease = call("get")["lease"]
    assert lease["run_id"] == run_id and lease["owner"] == "host:1:a"
    assert lease["expires_time"] - lease["acquired_time"] == pytest.approx(30_000, abs=2000)
    assert call("renew", owner="host:1:a", ttl_seconds=60) == {"renewed": True}
    assert call("renew", owner="host:2:b", ttl_seconds=60) == {"renewed": False}
    assert call("get")["lease"]["expires_time"] > lease["expires_time"]
    assert call("release", owner="host:2:b") == {}  # not its lease: no effect
    assert call("get")["lease"]["owner"] == "host:1:a"
    assert call("release", owner="host:1:a") == {}
    assert call("release", owner="host:1:a") == {}  # twice: released once
    assert call("get") == {"lease": None}
    assert call("acquire", owner="host:2:b", ttl_seconds=30) == {"acquired": True}


def test_of_many_clients_racing_for_a_free_lease_exactly_one_wins(db_server: RunningServer) -> None:
    run_id = db_server.client.create_run("0").info.run_id
    barrier = threading.Barrier(6)
    answers: dict[str, bool] = {}

    def contend(owner: str) -> None:
        barrier.wait()
        answer = _post(db_server, "runs/lease/acquire", {"run_id": run_id, "owner": owner, "ttl_seconds": 30})
        answers[owner] = answer.json()["acquired"]

    threads = [threading.Thread(target=contend, args=(f"owner-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [owner for owner, won in answers.items() if won]
    assert len(answers) == 6 and len(winners) == 1
    assert db_server.client.store.get_run_lease(run_id).owner == winners[0]  # type: ignore[union-attr]


_GOOD: dict[str, dict[str, Any]] = {
    "runs/supersede-metrics": {"step": 3},
    "runs/fork": {"up_to_step": 3, "start_time": 0},
    "runs/lease/acquire": {"owner": "me", "ttl_seconds": 30},
    "runs/lease/renew": {"owner": "me", "ttl_seconds": 30},
    "runs/lease/release": {"owner": "me"},
    "runs/lease/get": {},
}
_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("runs/supersede-metrics", {"step": None}, "Missing value for required parameter 'step'"),
    ("runs/supersede-metrics", {"step": "3"}, "expected an integer"),
    ("runs/supersede-metrics", {"step": 3.0}, "expected an integer"),
    ("runs/supersede-metrics", {"step": True}, "expected an integer"),
    ("runs/supersede-metrics", {"step": 2**63}, "must be between"),
    ("runs/supersede-metrics", {"steps": 3}, "Unknown field(s) 'steps'"),
    ("runs/fork", {"start_time": -1}, "must be between 0 and"),
    ("runs/fork", {"start_time": None}, "Missing value for required parameter 'start_time'"),
    ("runs/fork", {"run_name": 7}, "expected a non-empty string"),
    ("runs/fork", {"run_name": "x" * 251}, "the limit is 250"),
    ("runs/fork", {"up_to_step": [1]}, "expected an integer"),
    ("runs/lease/acquire", {"owner": ""}, "expected a non-empty string"),
    ("runs/lease/acquire", {"owner": "x" * 257}, "the limit is 256"),
    ("runs/lease/acquire", {"owner": 5}, "expected a non-empty string"),
    ("runs/lease/acquire", {"ttl_seconds": 0}, "'ttl_seconds': must be in (0, 604800]"),
    ("runs/lease/acquire", {"ttl_seconds": -1.5}, "'ttl_seconds': must be in"),
    ("runs/lease/acquire", {"ttl_seconds": 10**9}, "'ttl_seconds': must be in"),
    ("runs/lease/acquire", {"ttl_seconds": "30"}, "expected a number of seconds"),
    ("runs/lease/acquire", {"ttl_seconds": False}, "expected a number of seconds"),
    ("runs/lease/renew", {"ttl_seconds": None}, "Missing value for required parameter 'ttl_seconds'"),
    ("runs/lease/release", {"owner": None}, "Missing value for required parameter 'owner'"),
    ("runs/lease/get", {"owner": "me"}, "Unknown field(s) 'owner'"),
]


@pytest.mark.parametrize(("path", "change", "message"), _BAD, ids=[f"{p}-{m[:24]}" for p, _, m in _BAD])
def test_bad_input_is_refused_and_changes_nothing(
    server: RunningServer, path: str, change: dict[str, Any], message: str
) -> None:
    run_id = _run_with_points(server)
    body = {"run_id": run_id, **_GOOD[path], **change}
    answer = _post(server, path, {k: v for k, v in body.items() if v is not None})
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in answer.json()["message"]
    assert _steps(server, run_id) == [1, 2, 3, 4, 5]
    assert server.client.store.get_run_lease(run_id) is None
    assert len(server.client.search_runs(["0"]).items) == 1


@pytest.mark.parametrize("path", sorted(_GOOD))
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing value for required parameter 'run_id'"),
        ({"run_id": 12}, "expected a non-empty string"),
        ({"run_id": " "}, "expected a non-empty string"),
        ([1, 2], "must be a JSON object"),
        (b"{not json", "Malformed JSON"),
    ],
)
def test_every_endpoint_needs_a_run_id_in_a_json_object(
    server: RunningServer, path: str, body: Any, message: str
) -> None:
    full = {**_GOOD[path], **body} if isinstance(body, dict) else body
    content = body if isinstance(body, bytes) else None
    answer = httpx.post(
        f"{server.url}{API}/{path}",
        json=None if content is not None else full,
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in answer.json()["message"]


def test_an_oversized_body_is_refused(server: RunningServer) -> None:
    answer = _post(server, "runs/lease/get", {"run_id": "x" * 100_000})
    assert answer.status_code == 400 and "exceeds the limit" in answer.json()["message"]


def test_unknown_and_deleted_runs(db_server: RunningServer) -> None:
    missing = "0" * 32
    for path in _GOOD:
        if path == "runs/lease/get" or path.endswith(("renew", "release")):
            continue  # reading or dropping a lease of an unknown run is not an error: nothing is held
        answer = _post(db_server, path, {"run_id": missing, **_GOOD[path]})
        assert answer.status_code == 404, path
        assert answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert _post(db_server, "runs/lease/get", {"run_id": missing}).json() == {"lease": None}
    run_id = _run_with_points(db_server)
    db_server.client.delete_run(run_id)
    for path in ("runs/supersede-metrics", "runs/lease/acquire"):
        answer = _post(db_server, path, {"run_id": run_id, **_GOOD[path]})
        assert answer.status_code == 400 and "is deleted" in answer.json()["message"]


def test_capabilities_and_unknown_paths(server: RunningServer) -> None:
    answer = httpx.get(f"{server.url}{API}/capabilities")
    assert answer.status_code == 200 and answer.json() == {"resume": True}
    for method, path in [("POST", f"{API}/runs/no-such"), ("GET", f"{API}/runs/fork"), ("GET", API)]:
        answer = httpx.request(method, f"{server.url}{path}")
        assert answer.status_code == 404 and answer.json()["error_code"] == "ENDPOINT_NOT_FOUND", path
    # nothing of cairn's under MLflow's prefixes
    for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):
        answer = httpx.post(f"{server.url}{prefix}/runs/lease/acquire", json={"run_id": "x"})
        assert answer.status_code == 404 and answer.json()["error_code"] == "ENDPOINT_NOT_FOUND"


# -- the REST client store through these endpoints -------------------------------------------------------


def test_the_rest_store_resume_operations(db_server: RunningServer) -> None:
    store = RestTrackingStore(db_server.url)
    try:
        run_id = _run_with_points(db_server)
        assert store.supersede_metrics_after(run_id, 4) == 1
        assert [m.step for m in store.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
        fork = store.fork_run(run_id, 2, start_time=7)
        assert fork.info.start_time == 7 and fork.data.tags["cairn.forkedFrom"] == run_id
        assert fork.data.params == {"lr": "0.1"} and fork.data.metrics == {"loss": 0.5}

        assert store.get_run_lease(run_id) is None
        assert store.acquire_run_lease(run_id, "a", 30)
        assert not store.acquire_run_lease(run_id, "b", 30)
        lease = store.get_run_lease(run_id)
        assert lease is not None and lease.owner == "a" and not lease.expired(lease.acquired_time)
        assert lease == db_server.client.store.get_run_lease(run_id)
        assert store.renew_run_lease(run_id, "a", 30) and not store.renew_run_lease(run_id, "b", 30)
        store.release_run_lease(run_id, "a")
        assert store.get_run_lease(run_id) is None

        with pytest.raises(RunNotFound):
            store.acquire_run_lease("0" * 32, "a", 30)
        with pytest.raises(RunNotFound):
            store.fork_run("0" * 32, 1, start_time=0)
        with pytest.raises(InvalidArgument, match="ttl_seconds"):
            store.acquire_run_lease(run_id, "a", 0)
        store.delete_run(run_id)
        with pytest.raises(RunNotActive):
            store.supersede_metrics_after(run_id, 1)
    finally:
        store.close()


class _GatewayTimeoutOnce(httpx.BaseTransport):
    """The real transport; the first request to a path ending with ``suffix`` reaches the server, then its
    answer is replaced by a gateway's 504 (the server did the work, the client cannot know)."""

    def __init__(self, suffix: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.suffix = suffix
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith(self.suffix):
            return self.inner.handle_request(request)
        self.sent += 1
        response = self.inner.handle_request(request)
        if self.sent > 1:
            return response
        response.read()
        response.close()
        return httpx.Response(504, text="<html>gateway timeout</html>")

    def close(self) -> None:
        self.inner.close()


def _flaky_store(server: RunningServer, suffix: str) -> tuple[RestTrackingStore, _GatewayTimeoutOnce]:
    transport = _GatewayTimeoutOnce(suffix)
    return RestTrackingStore(server.url, transport=transport, backoff=0.01, max_backoff=0.05), transport


def test_lease_calls_are_retried_after_a_lost_answer(server: RunningServer) -> None:
    run_id = server.client.create_run("0").info.run_id
    for suffix, call, expected in [
        ("lease/acquire", lambda store: store.acquire_run_lease(run_id, "me", 30), True),
        ("lease/renew", lambda store: store.renew_run_lease(run_id, "me", 30), True),
        ("lease/get", lambda store: store.get_run_lease(run_id).owner, "me"),
        ("lease/release", lambda store: store.release_run_lease(run_id, "me"), None),
    ]:
        store, transport = _flaky_store(server, suffix)
        try:
            assert call(store) == expected, suffix  # the retry answers as the lost first answer would have
        finally:
            store.close()
        assert transport.sent == 2, suffix  # the lost answer, then the retry
    assert server.client.store.get_run_lease(run_id) is None


def test_supersede_and_fork_are_not_resent_after_a_lost_answer(server: RunningServer) -> None:
    from cairn.store.rest import ServerUnavailable

    run_id = _run_with_points(server)
    store, transport = _flaky_store(server, "runs/supersede-metrics")
    try:
        with pytest.raises(ServerUnavailable, match="504"):
            store.supersede_metrics_after(run_id, 2)
    finally:
        store.close()
    assert transport.sent == 1
    assert _steps(server, run_id) == [1, 2]  # done once, on the server

    store, transport = _flaky_store(server, "runs/fork")
    try:
        with pytest.raises(ServerUnavailable, match="504"):
            store.fork_run(run_id, 2, start_time=0)
    finally:
        store.close()
    assert transport.sent == 1
    assert len(server.client.search_runs(["0"]).items) == 2  # one fork, not two
