"""The HTTP client store against a real ``mlflow server`` (subprocess, SQLite backend, proxied artifacts).

What cairn writes through ``http://`` lands in MLflow's store and is read back with mlflow's own client;
MLflow's error JSON comes back as cairn's errors; log-batch requests respect MLflow's limits; retried
requests never duplicate a point. Failures are injected by an httpx transport in front of the real one.
"""

from __future__ import annotations

import base64
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import cairn
from cairn.artifacts import get_artifact_store
from cairn.artifacts.mlflow_artifacts import MlflowArtifactsStore
from cairn.errors import (
    ArtifactNotFound,
    ExperimentNotFound,
    FilterSyntaxError,
    InvalidArgument,
    NotFound,
    ParamConflict,
    ResourceAlreadyExists,
    RunNotActive,
    RunNotFound,
    UnsafePath,
)
from cairn.registry.entities import Stage
from cairn.store.base import MetricPoint
from cairn.store.rest import (
    AccessDenied,
    RestRegistryStore,
    RestTrackingStore,
    ServerUnavailable,
    UnsupportedByServer,
)
from cairn.tracking import config
from cairn.tracking.batcher import MetricBatcher
from cairn.tracking.client import Client
from cairn.tracking.entities import Metric, Param, RunStatus, RunTag
from tests.server.conftest import free_port, wait_until_up

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (one worker, SQLite, artifacts proxied into a local directory)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CAIRN_"))}
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{home}/mlflow.db",
            "--artifacts-destination",
            str(home / "art"),
        ],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, home / "server.log", timeout=90)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(3)  # a graceful stop waits on idle keep-alive connections; no need here
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


@pytest.fixture
def mlflow_client(mlflow_url: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_url)


class Recording(httpx.BaseTransport):
    """The real transport, recording each request and answering some with a failure first.

    ``fail(request)`` returns ``None`` to pass the request on, or ``(status, forward)``: answer ``status``
    after forwarding the request to the server (``forward=True``: it was processed, as behind a gateway
    that timed out) or without forwarding it.
    """

    def __init__(self, fail: Callable[[httpx.Request], tuple[int, bool] | None] | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []
        self.fail = fail

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        verdict = self.fail(request) if self.fail else None
        if verdict is not None:
            status, forward = verdict
            if forward:
                self.inner.handle_request(request).close()
            return httpx.Response(status, text="<html>gateway error</html>")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def paths(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(suffix)]


def _store(url: str, transport: httpx.BaseTransport | None = None, **options: float) -> RestTrackingStore:
    return RestTrackingStore(url, transport=transport, backoff=0.01, max_backoff=0.05, **options)


def _new_run(store: RestTrackingStore, name: str = "r") -> str:
    return store.create_run("0", user_id="tester", start_time=int(time.time() * 1000), run_name=name).info.run_id


# -- the fluent API end to end ------------------------------------------------------------------


def test_fluent_api_lands_in_mlflow_and_reads_back(mlflow_url: str, mlflow_client, tmp_path: Path) -> None:
    cairn.set_tracking_uri(mlflow_url)
    assert isinstance(config.get_store(), RestTrackingStore)
    experiment = cairn.set_experiment("rest-fluent")
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    local = tmp_path / "notes.txt"
    local.write_text("hello from cairn")
    with cairn.start_run(run_name="fluent") as run:
        run_id = run.info.run_id
        cairn.log_param("lr", 0.001)
        cairn.log_params({"layers": 4, "act": "relu"})
        for step in range(50):
            cairn.log_metric("loss", 1.0 / (step + 1), step=step)  # through the background writer
        cairn.log_metric("odd", float("nan"), step=0)
        cairn.log_metrics({"acc": 0.5, "f1": 0.25}, step=3)
        cairn.set_tag("team", "vision")
        cairn.log_artifact(str(local), artifact_path="docs")
        cairn.log_dict({"a": 1}, "cfg/config.json")
    # what mlflow's own client sees
    got = mlflow_client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "fluent"
    assert got.data.params == {"lr": "0.001", "layers": "4", "act": "relu"}
    assert got.data.tags["team"] == "vision"
    assert got.data.metrics["acc"] == 0.5 and got.data.metrics["f1"] == 0.25
    history = mlflow_client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(50)]
    assert math.isnan(mlflow_client.get_metric_history(run_id, "odd")[0].value)
    assert sorted(f.path for f in mlflow_client.list_artifacts(run_id)) == ["cfg", "docs"]
    fetched = mlflow_client.download_artifacts(run_id, "docs/notes.txt", str(tmp_path / "by-mlflow"))
    assert Path(fetched).read_text() == "hello from cairn"
    # and what cairn reads back
    assert [m.value for m in cairn.Client().get_metric_history(run_id, "loss")] == [1.0 / (s + 1) for s in range(50)]
    found = cairn.Client().search_runs([experiment.experiment_id], "params.lr = '0.001' and metrics.acc > 0.4")
    assert [r.info.run_id for r in found.items] == [run_id]
    assert [(f.path, f.is_dir) for f in cairn.list_artifacts(run_id=run_id)] == [("cfg", True), ("docs", True)]
    assert cairn.list_artifacts("docs/notes.txt", run_id=run_id) == []
    with pytest.raises(ArtifactNotFound):
        cairn.list_artifacts("nothing-here", run_id=run_id)
    out = Path(cairn.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "by-cairn")))
    assert (out / "docs" / "notes.txt").read_text() == "hello from cairn"
    assert (out / "cfg" / "config.json").read_text().replace(" ", "").strip() in ('{"a":1}', '{\n"a":1\n}')


def test_run_lifecycle_experiments_and_tags(mlflow_url: str, mlflow_client) -> None:
    store = _store(mlflow_url)
    exp_id = store.create_experiment("rest-lifecycle", tags={"owner": "me"})
    experiment = store.get_experiment(exp_id)
    assert experiment.name == "rest-lifecycle" and experiment.tags == {"owner": "me"}
    assert store.get_experiment_by_name("rest-lifecycle") is not None
    assert store.get_experiment_by_name("no-such-experiment") is None
    assert "rest-lifecycle" in [e.name for e in store.search_experiments(name_like="rest-life%")]
    store.rename_experiment(exp_id, "rest-lifecycle-2")
    store.set_experiment_tag(exp_id, "k", "v")
    assert mlflow_client.get_experiment(exp_id).tags["k"] == "v"
    run = store.create_run(exp_id, user_id="u", start_time=1_000, run_name="n", tags=[RunTag("x", "y")])
    run_id = run.info.run_id
    assert run.info.status is RunStatus.RUNNING and run.data.tags["x"] == "y"
    info = store.update_run_info(run_id, status=RunStatus.FAILED, end_time=2_000, run_name="renamed")
    assert (info.status, info.end_time, info.run_name) == (RunStatus.FAILED, 2_000, "renamed")
    store.delete_tag(run_id, "x")
    assert "x" not in mlflow_client.get_run(run_id).data.tags
    store.delete_run(run_id)
    assert store.deleted_run_ids() == [run_id] or run_id in store.deleted_run_ids()
    store.restore_run(run_id)
    store.delete_experiment(exp_id)
    assert mlflow_client.get_experiment(exp_id).lifecycle_stage == "deleted"
    store.restore_experiment(exp_id)
    store.close()


# -- errors -------------------------------------------------------------------------------------


def test_server_errors_map_to_cairn_errors(mlflow_url: str) -> None:
    store = _store(mlflow_url)
    with pytest.raises(RunNotFound):
        store.get_run("0" * 32)
    with pytest.raises(RunNotFound):
        store.log_batch("f" * 32, params=[Param("a", "1")])
    with pytest.raises(ExperimentNotFound):
        store.get_experiment("987654")
    with pytest.raises(ResourceAlreadyExists):
        store.create_experiment("Default")
    run_id = _new_run(store)
    store.log_batch(run_id, params=[Param("p", "1")])
    store.log_batch(run_id, params=[Param("p", "1")])  # the same value again: a no-op
    with pytest.raises(ParamConflict, match="Changing param values is not allowed"):
        store.log_batch(run_id, params=[Param("p", "2")])
    with pytest.raises(FilterSyntaxError):
        store.search_runs(["0"], "metrics.loss >")
    with pytest.raises(InvalidArgument):
        store.log_batch(run_id, metrics=[Metric("x" * 300, 1.0, 1, 0)])
    store.delete_run(run_id)
    with pytest.raises(RunNotActive):
        store.log_batch(run_id, tags=[RunTag("t", "v")])
    for call, name in [
        (lambda: store.supersede_metrics_after(run_id, 3), "supersede_metrics_after"),
        (lambda: store.fork_run(run_id, 3, start_time=0), "fork_run"),
        (lambda: store.acquire_run_lease(run_id, "me", 10), "acquire_run_lease"),
        (lambda: store.purge_run(run_id), "purge_run"),
        (lambda: store.get_metric_history(run_id, "m", include_superseded=True), "include_superseded"),
    ]:
        with pytest.raises(UnsupportedByServer, match=name):
            call()
    # an endpoint this server lacks answers an HTML 404: named, not a JSON decode error
    with pytest.raises(UnsupportedByServer, match="does not support POST"):
        store.http.call("POST", "runs/no-such-endpoint", {})
    store.close()


def test_unreachable_server_raises_after_retries() -> None:
    port = free_port()  # nothing listens there
    store = _store(f"http://127.0.0.1:{port}", max_retries=3)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="after 4 attempts"):
        store.get_run("0" * 32)
    assert time.monotonic() - started < 5
    store.close()


def test_unknown_scheme_still_refused() -> None:
    with pytest.raises(InvalidArgument, match="http"):
        cairn.set_tracking_uri("ftp://example.com/x")


# -- log-batch limits and retries ---------------------------------------------------------------


def test_1500_metrics_are_sent_in_two_requests(mlflow_url: str, mlflow_client) -> None:
    transport = Recording()
    store = _store(mlflow_url, transport)
    run_id = _new_run(store)
    metrics = [Metric("m", float(i), 1_000 + i, i) for i in range(1500)]
    params = [Param(f"p{i}", str(i)) for i in range(150)]
    store.log_batch(run_id, metrics, params, [RunTag("t", "v")])
    batches = transport.paths("/runs/log-batch")
    assert len(batches) == 5  # params 100 + 50, tags 1, metrics 1000 + 500
    for request in batches:
        assert len(request.content) <= 1_000_000
    assert len(mlflow_client.get_metric_history(run_id, "m")) == 1500
    assert len(mlflow_client.get_run(run_id).data.params) == 150
    # the metric writer's path: points of two runs, one series each split at 1,000
    other = _new_run(store)
    transport.requests.clear()
    store.log_metric_points(
        [MetricPoint(run_id, "w", 0.5, 5, i) for i in range(1500)] + [MetricPoint(other, "w", 1.0, 5, 0)]
    )
    assert len(transport.paths("/runs/log-batch")) == 3
    assert len(mlflow_client.get_metric_history(run_id, "w")) == 1500
    store.close()


def test_a_batch_over_one_megabyte_is_split(mlflow_url: str, mlflow_client: Any) -> None:
    transport = Recording()
    store = _store(mlflow_url, transport)
    run_id = _new_run(store)
    tags = [RunTag(f"t{i}", "雪" * 8000) for i in range(100)]  # 2.4 MB of UTF-8 in 100 tags
    store.log_batch(run_id, tags=tags)
    batches = transport.paths("/runs/log-batch")
    assert len(batches) == 4
    assert all(len(r.content) <= 1_000_000 for r in batches)
    got = mlflow_client.get_run(run_id).data.tags
    assert all(got[f"t{i}"] == "雪" * 8000 for i in range(100))
    store.close()


def test_retry_after_503_and_504_does_not_duplicate_points(mlflow_url: str, mlflow_client) -> None:
    attempts: dict[str, int] = {}

    def fail(request: httpx.Request) -> tuple[int, bool] | None:
        if not request.url.path.endswith("/runs/log-batch"):
            return None
        key = request.headers["Idempotency-Key"]
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] == 1:
            return (503, False)  # refused before the server saw it
        if attempts[key] == 2:
            return (504, True)  # the server wrote it, the gateway timed out
        return None

    transport = Recording(fail)
    store = _store(mlflow_url, transport)
    run_id = _new_run(store)
    store.log_batch(run_id, [Metric("loss", 0.1 * i, 10 + i, i) for i in range(20)])
    batches = transport.paths("/runs/log-batch")
    assert len(batches) == 3
    assert len({r.headers["Idempotency-Key"] for r in batches}) == 1
    assert len({r.content for r in batches}) == 1
    history = mlflow_client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(20))
    store.close()


def test_create_run_is_not_retried_when_it_may_have_arrived(mlflow_url: str, mlflow_client) -> None:
    def fail(request: httpx.Request) -> tuple[int, bool] | None:
        return (502, True) if request.url.path.endswith("/runs/create") else None

    transport = Recording(fail)
    store = _store(mlflow_url, transport)
    exp_id = store.create_experiment("rest-no-dup-create")
    with pytest.raises(ServerUnavailable):
        store.create_run(exp_id, user_id="u", start_time=1, run_name="once")
    assert len(transport.paths("/runs/create")) == 1
    assert len(mlflow_client.search_runs([exp_id])) == 1  # created once, not once per retry
    store.close()


def test_metric_writer_keeps_points_while_the_server_is_busy(mlflow_url: str, mlflow_client) -> None:
    busy = {"left": 12}  # more 503s than one request's retries: the writer must try again later

    def fail(request: httpx.Request) -> tuple[int, bool] | None:
        if request.url.path.endswith("/runs/log-batch") and busy["left"] > 0:
            busy["left"] -= 1
            return (503, False)
        return None

    store = _store(mlflow_url, Recording(fail), max_retries=2)
    run_id = _new_run(store)
    batcher = config.get_batcher(store)
    for step in range(30):
        batcher.add(MetricPoint(run_id, "busy", float(step), 100 + step, step))
    deadline = time.monotonic() + 20
    while (batcher.pending or batcher.offline) and time.monotonic() < deadline:  # spooled, then sent
        time.sleep(0.05)
    batcher.flush()
    assert sorted(m.step for m in mlflow_client.get_metric_history(run_id, "busy")) == list(range(30))
    batcher.close()
    store.close()


class Outage(httpx.BaseTransport):
    """The real transport in front of the server, with an outage: ``lose_next`` loses the response of the next
    log-batch after the server processed it, and the server is unreachable (connection refused) from then on
    until ``down`` is cleared. ``answered`` lists the key of every log-batch the client got a 2xx for."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.down = False
        self.lose_next = False
        self.answered: list[str] = []
        self.lost: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused (outage)", request=request)
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/runs/log-batch"):
            key = request.headers["Idempotency-Key"]
            if self.lose_next:
                response.read()
                response.close()
                self.lose_next, self.down = False, True
                self.lost.append(key)
                raise httpx.ReadError("connection lost before the response", request=request)
            if response.status_code == 200:
                self.answered.append(key)
        return response

    def close(self) -> None:
        self.inner.close()


def test_mlflow_server_outage_spools_and_sends_each_point_once(
    mlflow_url: str, mlflow_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MLflow's server ignores idempotency keys: what surely arrived (answered 2xx) is never sent again; the
    one request whose answer was lost is sent again from the spool, and MLflow's store drops its points as
    equal to stored ones."""
    monkeypatch.setenv("CAIRN_SPOOL_DIR", str(tmp_path / "spool"))
    transport = Outage()
    store = _store(mlflow_url, transport, max_retries=1)
    run_id = _new_run(store)
    batcher = MetricBatcher(store, flush_interval=0.02)
    try:
        batcher.add_many([MetricPoint(run_id, "m", float(i), 1_000 + i, i) for i in range(2500)])
        batcher.flush()
        transport.lose_next = True
        batcher.add_many([MetricPoint(run_id, "m", float(i), 1_000 + i, i) for i in range(2500, 5000)])
        deadline = time.monotonic() + 20
        while not (batcher.offline and batcher.pending == 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert batcher.offline and list((tmp_path / "spool").rglob("records.log"))
        transport.down = False
        while batcher.offline and time.monotonic() < deadline:
            time.sleep(0.02)
        batcher.flush()
    finally:
        batcher.close()
        store.close()
    steps = sorted(m.step for m in mlflow_client.get_metric_history(run_id, "m"))
    assert steps == list(range(5000))
    assert len(transport.answered) == len(set(transport.answered)) == 6  # 5,000 points in 1,000-point requests
    assert transport.lost[0] in transport.answered  # the lost one, replayed under its key
    assert not list((tmp_path / "spool").rglob("records.log"))


# -- auth ---------------------------------------------------------------------------------------


def _auth_of(url: str) -> str | None:
    transport = Recording()
    store = _store(url, transport)
    store.get_experiment("0")
    store.close()
    return transport.requests[-1].headers.get("Authorization")


def test_auth_headers_from_the_environment(mlflow_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CAIRN_TRACKING_TOKEN",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    assert _auth_of(mlflow_url) is None
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert _auth_of(mlflow_url) == "Basic " + base64.b64encode(b"ann:s3cret").decode()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "mlflow-token")
    assert _auth_of(mlflow_url) == "Bearer mlflow-token"
    monkeypatch.setenv("CAIRN_TRACKING_TOKEN", "cairn-token")
    assert _auth_of(mlflow_url) == "Bearer cairn-token"


def test_401_and_403_are_access_denied() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        status = 401 if "runs" in request.url.path else 403
        return httpx.Response(status, json={"error_code": "PERMISSION_DENIED", "message": "no"})

    store = _store("http://cairn.invalid", httpx.MockTransport(answer))
    with pytest.raises(AccessDenied):
        store.get_run("0" * 32)
    with pytest.raises(AccessDenied):
        store.create_experiment("x")
    store.close()


# -- artifacts ----------------------------------------------------------------------------------


def test_artifact_proxy_store_operations(mlflow_url: str, tmp_path: Path) -> None:
    cairn.set_tracking_uri(mlflow_url)
    root = "mlflow-artifacts:/rest-tests/run-a/artifacts"
    store = get_artifact_store(root)
    assert isinstance(store, MlflowArtifactsStore)
    assert store.list() == [] and not store.exists()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (tree / "sub" / "b.txt").write_text("bee")
    store.put_dir(tree, "model")
    store.put_bytes(b"top", "top.txt")
    assert [(f.path, f.is_dir, f.file_size) for f in store.list()] == [("model", True, None), ("top.txt", False, 3)]
    assert [f.path for f in store.list("model")] == ["model/a.bin", "model/sub"]
    with store.open("model/a.bin") as handle:
        assert handle.read() == (tree / "a.bin").read_bytes()
    with pytest.raises(InvalidArgument, match="directory"):
        store.open("model/sub")
    with pytest.raises(ArtifactNotFound):
        store.open("model/missing")
    out = store.download("model", tmp_path / "out")
    assert out == tmp_path / "out" / "model"
    assert (out / "sub" / "b.txt").read_text() == "bee"
    assert (out / "a.bin").read_bytes() == (tree / "a.bin").read_bytes()
    assert not [p for p in (tmp_path / "out").rglob(".cairn-tmp-*")]
    store.delete("model/sub")
    assert not store.exists("model/sub") and store.exists("model/a.bin")
    with pytest.raises(ArtifactNotFound):
        store.delete("model/sub")
    store.delete()
    assert store.list() == []
    # the same root through an explicit server and through the proxy's http URL
    host = mlflow_url.split("//", 1)[1]
    store.put_bytes(b"x", "x.txt")
    assert get_artifact_store(f"mlflow-artifacts://{host}/rest-tests/run-a/artifacts").exists("x.txt")
    http_root = f"{mlflow_url}/api/2.0/mlflow-artifacts/artifacts/rest-tests/run-a/artifacts"
    assert [f.path for f in get_artifact_store(http_root).list()] == ["x.txt"]


def test_artifact_paths_are_confined(mlflow_url: str) -> None:
    cairn.set_tracking_uri(mlflow_url)
    store = get_artifact_store("mlflow-artifacts:/rest-tests/run-b/artifacts")
    for bad in ("../escape.txt", "a/../../b", "%2e%2e/x", "/abs.txt"):
        with pytest.raises(UnsafePath):
            store.put_bytes(b"no", bad)
    with pytest.raises(UnsafePath):
        get_artifact_store("mlflow-artifacts:/rest-tests/../../etc")

    def hostile(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"files": [{"path": "../../etc/passwd", "is_dir": False, "file_size": 1}]})

    from cairn.store.rest import HttpSession

    evil = MlflowArtifactsStore(
        "mlflow-artifacts:/x/artifacts",
        tracking_uri="http://evil.invalid",
        session=HttpSession("http://evil.invalid", transport=httpx.MockTransport(hostile)),
    )
    with pytest.raises(UnsafePath, match="unsafe name"):
        evil.list()


def test_proxy_uri_needs_an_http_tracking_uri(tmp_path: Path) -> None:
    cairn.set_tracking_uri(tmp_path / "local")
    with pytest.raises(InvalidArgument, match="http"):
        get_artifact_store("mlflow-artifacts:/0/abc/artifacts")


def test_client_with_explicit_uri(mlflow_url: str) -> None:
    client = Client(mlflow_url)
    run = client.create_run("0", run_name="explicit")
    client.log_batch(run.info.run_id, metrics=[Metric("m", 1.0, 1, 0)], synchronous=True)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).info.status is RunStatus.FINISHED


# -- model registry -----------------------------------------------------------------------------


def test_registry_store_against_mlflow(mlflow_url: str, mlflow_client: Any) -> None:
    tracking = _store(mlflow_url)
    registry = RestRegistryStore(tracking.http)
    run_id = _new_run(tracking)
    source = f"mlflow-artifacts:/0/{run_id}/artifacts/model"
    first = registry.create_model_version("rest-churn", source, run_id=run_id, tags={"k": "v"}, description="one")
    second = registry.create_model_version("rest-churn", source, run_id=run_id)
    assert (first.version, second.version) == ("1", "2")
    assert first.tags == {"k": "v"} and first.description == "one" and first.run_id == run_id
    with pytest.raises(ResourceAlreadyExists):
        registry.create_registered_model("rest-churn")
    registry.set_registered_model_alias("rest-churn", "champion", 2)
    assert registry.get_model_version_by_alias("rest-churn", "champion").version == "2"
    assert mlflow_client.get_model_version_by_alias("rest-churn", "champion").version == "2"
    registry.transition_model_version_stage("rest-churn", 1, "production")
    registry.transition_model_version_stage("rest-churn", 2, Stage.PRODUCTION, archive_existing_versions=True)
    assert registry.get_model_version("rest-churn", 1).current_stage == "Archived"
    assert [v.version for v in registry.get_latest_versions("rest-churn", ["Production", "Archived"])] == ["2", "1"]
    registry.set_registered_model_tag("rest-churn", "team", "ml")
    registry.set_model_version_tag("rest-churn", "1", "good", "yes")
    registry.update_registered_model("rest-churn", "churn model")
    model = registry.get_registered_model("rest-churn")
    assert model.tags == {"team": "ml"} and model.aliases == {"champion": "2"}
    assert model.description == "churn model"
    assert registry.get_model_version("rest-churn", 1).tags == {"k": "v", "good": "yes"}
    assert [v.version for v in registry.search_model_versions("rest-churn")] == ["2", "1"]
    assert [v.version for v in registry.search_model_versions(run_id=[run_id])] == ["2", "1"]
    assert [m.name for m in registry.search_registered_models("rest-ch%")] == ["rest-churn"]
    registry.delete_registered_model_tag("rest-churn", "team")
    registry.delete_model_version_tag("rest-churn", 1, "good")
    assert registry.get_registered_model("rest-churn").tags == {}
    assert registry.get_model_version("rest-churn", 1).tags == {"k": "v"}
    registry.delete_registered_model_alias("rest-churn", "champion")
    with pytest.raises(NotFound):
        registry.get_model_version_by_alias("rest-churn", "champion")
    registry.delete_model_version("rest-churn", 2)
    assert registry.create_model_version("rest-churn", source, run_id=run_id).version == "3"  # never reused
    renamed = registry.rename_registered_model("rest-churn", "rest-churn-2")
    assert renamed.name == "rest-churn-2"
    with pytest.raises(NotFound):
        registry.get_model_version("rest-churn-2", 99)
    with pytest.raises(UnsupportedByServer, match="import_model_version"):
        registry.import_model_version(first)
    registry.delete_registered_model("rest-churn-2")
    with pytest.raises(NotFound):
        registry.get_registered_model("rest-churn-2")
    tracking.close()


def test_429_is_retried_honouring_retry_after() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(429, headers={"Retry-After": "not a date"}),
        httpx.Response(200, json={"experiment": {"experiment_id": "0", "name": "Default"}}),
    ]
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    store = _store("http://cairn.invalid", httpx.MockTransport(answer))
    assert store.get_experiment("0").name == "Default"
    assert len(seen) == 3
    store.close()


# -- the same client against cairn server --------------------------------------------------------


def test_fluent_api_against_cairn_server(tmp_path: Path) -> None:
    from tests.server.conftest import serve

    server_root = tmp_path / "server"
    backend = Client(f"sqlite:///{server_root}/cairn.db", str(server_root / "artifacts"))
    with serve(backend, str(server_root / "artifacts")) as server:
        cairn.set_tracking_uri(server.url)
        with cairn.start_run(run_name="to-cairn") as run:
            cairn.log_param("lr", 0.1)
            for step in range(10):
                cairn.log_metric("loss", 1.0 - step / 10, step=step)
            cairn.log_text("hi", "notes/readme.txt")
        run_id = run.info.run_id
        assert [f.path for f in cairn.list_artifacts("notes", run_id=run_id)] == ["notes/readme.txt"]
        with pytest.raises(RunNotFound):
            cairn.get_run("0" * 32)
    stored = backend.get_run(run_id)
    assert stored.info.status is RunStatus.FINISHED and stored.data.params == {"lr": "0.1"}
    assert [m.step for m in backend.get_metric_history(run_id, "loss")] == list(range(10))


def test_model_workflow_against_cairn_server(tmp_path: Path) -> None:
    """log_model, register_model, an alias and pyfunc loading from models:/ by cairn's own client over http."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from tests.server.conftest import serve

    server_root = tmp_path / "server"
    backend = Client(f"sqlite:///{server_root}/cairn.db", str(server_root / "artifacts"))
    x = np.random.default_rng(0).normal(size=(40, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    with serve(backend, str(server_root / "artifacts")) as server:
        cairn.set_tracking_uri(server.url)
        with cairn.start_run(run_name="model"):
            info = cairn.sklearn.log_model(model, "model", input_example=x[:2])
        version = cairn.register_model(info.model_uri, "churn")
        cairn.Client().set_registered_model_alias("churn", "champion", version.version)
        loaded = cairn.pyfunc.load_model("models:/churn@champion")
        assert list(loaded.predict(x[:5])) == list(model.predict(x[:5]))
        assert Client(server.url).get_model_version_by_alias("churn", "champion").version == version.version
    assert backend.get_registered_model("churn").name == "churn"  # landed in the server's own store
