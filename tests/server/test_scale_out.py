"""Scale-out: three ``cairn server`` processes (one with ``--workers 2``) over one PostgreSQL + S3.

The servers are real subprocesses started on a fresh PostgreSQL database (they race to create its
schema) with their artifact root in the session's moto S3 server. Clients are split between them:
whatever one server wrote, every other server serves at once, byte for byte, and the registry's
version numbers, aliases, stages and experiment names stay consistent under concurrent writes.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from cairn.registry.entities import Stage
from cairn.tracking.client import Client
from cairn.tracking.entities import Metric, Param, RunTag
from tests.conftest import _DUMMY_AWS_ENV, PgServer, S3Server
from tests.server.conftest import cairn_server_processes

pytestmark = pytest.mark.postgres

T = TypeVar("T")
MiB = 1024 * 1024


@dataclass(frozen=True)
class Cluster:
    """Server ``urls`` (A, B, and C with two workers), their ``pids``, and where their data lives."""

    urls: tuple[str, ...]
    pids: tuple[int, ...]
    database_url: str
    s3: S3Server
    prefix: str

    def s3_bytes(self, key: str) -> bytes:
        """An object under the artifact root, read straight from S3 (not through any server)."""
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        body: bytes = s3.get_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        return body


def _server_env(s3: S3Server, tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "CAIRN_", "AWS_")) and k not in ("PYTEST_CURRENT_TEST",)
    }
    env.update(_DUMMY_AWS_ENV)
    env["CAIRN_S3_ENDPOINT_URL"] = s3.endpoint_url
    env["AWS_CONFIG_FILE"] = str(tmp / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "no-aws-credentials")
    env["CAIRN_CACHE_DIR"] = str(tmp / "cache")
    return env


@pytest.fixture(scope="module")
def cluster(pg_server: PgServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Servers A and B (one worker each) and C (``--workers 2``) on one new database and one S3 prefix."""
    tmp = tmp_path_factory.mktemp("scale-out")
    prefix = f"scale-out-{uuid.uuid4().hex[:8]}"
    env = _server_env(s3_server, tmp)
    servers = [["--workers", str(workers), "--serve-artifacts"] for workers in (1, 1, 2)]
    with (
        pg_server.new_database("cairn_scale_out") as database_url,
        cairn_server_processes(database_url, f"s3://{s3_server.bucket}/{prefix}", tmp, servers, env) as running,
    ):
        urls, pids = tuple(s.url for s in running), tuple(s.process.pid for s in running)
        yield Cluster(urls, pids, database_url, s3_server, prefix)


def _concurrently(calls: list[Callable[[], T]]) -> list[T]:
    """Run every call at once (released together by a barrier); results in call order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


# -- tracking and artifacts --------------------------------------------------------------------------


def test_runs_and_artifacts_logged_through_one_server_are_served_by_every_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    experiment_id = Client(cluster.urls[0]).create_experiment(f"split-{uuid.uuid4().hex[:8]}")
    big = _random_file(tmp_path / "big.bin", 24 * MiB)  # above s3fs's 5 MiB block: S3 multipart underneath
    writers = 6

    def log_one(index: int) -> tuple[str, bytes]:
        client = Client(cluster.urls[index % len(cluster.urls)])
        run_id = client.create_run(experiment_id, run_name=f"writer-{index}").info.run_id
        client.log_batch(
            run_id,
            metrics=[Metric("loss", 1.0 / (step + 1), 1_700_000_000_000 + step, step) for step in range(20)],
            params=[Param("writer", str(index)), Param("lr", "0.001")],
            tags=[RunTag("server", cluster.urls[index % len(cluster.urls)])],
        )
        small = tmp_path / f"small-{index}.txt"
        small.write_text(f"hello from writer {index}\n" * 100)
        client.log_artifact(run_id, small, "notes")
        if index < 2:
            client.log_artifact(run_id, tmp_path / "big.bin", "weights")
        client.set_terminated(run_id)
        return run_id, small.read_bytes()

    written = _concurrently([lambda index=index: log_one(index) for index in range(writers)])

    for index, (run_id, small) in enumerate(written):
        for reader in (1, 2):  # servers other than the writer's
            client = Client(cluster.urls[(index + reader) % len(cluster.urls)])
            run = client.get_run(run_id)
            assert run.data.params == {"writer": str(index), "lr": "0.001"}
            assert run.data.metrics == {"loss": 1.0 / 20}
            assert run.data.tags["server"] == cluster.urls[index % len(cluster.urls)]
            assert run.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(20))
            assert [(f.path, f.is_dir) for f in client.list_artifacts(run_id)] == [("notes", True)] + (
                [("weights", True)] if index < 2 else []
            )
            assert [f.file_size for f in client.list_artifacts(run_id, "notes")] == [len(small)]
            got = client.download_artifacts(run_id, f"notes/small-{index}.txt", tmp_path / f"down-{index}-{reader}")
            assert Path(got).read_bytes() == small
        assert cluster.s3_bytes(f"{experiment_id}/{run_id}/artifacts/notes/small-{index}.txt") == small
    for index in range(2):
        run_id = written[index][0]
        reader = Client(cluster.urls[(index + 1) % len(cluster.urls)])
        got = reader.download_artifacts(run_id, "weights/big.bin", tmp_path / f"big-{index}")
        assert Path(got).read_bytes() == big
        assert cluster.s3_bytes(f"{experiment_id}/{run_id}/artifacts/weights/big.bin") == big
    for url in cluster.urls:
        found = Client(url).search_runs([experiment_id], max_results=100)
        assert sorted(run.info.run_id for run in found.items) == sorted(run_id for run_id, _ in written)


def test_artifact_deleted_through_one_server_is_gone_on_the_others(cluster: Cluster, tmp_path: Path) -> None:
    a, b = Client(cluster.urls[0]), Client(cluster.urls[1])
    run_id = a.create_run(a.create_experiment(f"delete-{uuid.uuid4().hex[:8]}")).info.run_id
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "keep.txt").write_text("keep")
    (tmp_path / "tree" / "sub" / "drop.txt").write_text("drop")
    a.log_artifacts(run_id, tmp_path / "tree")
    assert [f.path for f in b.list_artifacts(run_id)] == ["keep.txt", "sub"]

    b.artifact_store(run_id).delete("sub")

    assert [f.path for f in a.list_artifacts(run_id)] == ["keep.txt"]
    assert [f.path for f in Client(cluster.urls[2]).list_artifacts(run_id)] == ["keep.txt"]


def _peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"/proc/{pid}/status has no VmHWM line")


def _reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak resident set size


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads a server's peak RSS from Linux's /proc")
def test_a_large_artifact_passes_through_the_proxies_in_bounded_memory(cluster: Cluster, tmp_path: Path) -> None:
    size = 96 * MiB  # s3fs's put_file alone would read it whole (files under 100 MiB), and then some
    a, b = Client(cluster.urls[0]), Client(cluster.urls[1])
    run_id = a.create_run(a.create_experiment(f"memory-{uuid.uuid4().hex[:8]}")).info.run_id
    with open(tmp_path / "large.bin", "wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
    a.log_artifact(run_id, tmp_path / "large.bin")  # both servers' S3 clients warm up on the first transfer
    b.download_artifacts(run_id, "large.bin", tmp_path / "warm")
    for pid in cluster.pids[:2]:
        _reset_peak_rss(pid)
    before = [_peak_rss_mib(pid) for pid in cluster.pids[:2]]

    a.log_artifact(run_id, tmp_path / "large.bin", "again")
    got = b.download_artifacts(run_id, "again/large.bin", tmp_path / "down")

    growth = [_peak_rss_mib(pid) - base for pid, base in zip(cluster.pids[:2], before, strict=True)]
    assert Path(got).read_bytes() == (tmp_path / "large.bin").read_bytes()
    # a few parts and read-ahead blocks of 8 MiB with their copies; the old whole-file path grew by 215 MiB
    assert max(growth) < 64, f"peak RSS of servers A, B grew by {growth} MiB for a {size // MiB} MiB file"


# -- the real mlflow client ----------------------------------------------------------------------------


def test_mlflow_client_on_b_reads_what_cairn_logged_through_a(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    a = Client(cluster.urls[0])
    run_id = a.create_run(a.create_experiment(f"mlflow-{uuid.uuid4().hex[:8]}")).info.run_id
    a.log_batch(run_id, metrics=[Metric("acc", 0.9, 1_700_000_000_000, 3)], params=[Param("depth", "4")])
    (tmp_path / "model.txt").write_text("weights of a")
    a.log_artifact(run_id, tmp_path / "model.txt", "model")

    b = MlflowClient(tracking_uri=cluster.urls[1])
    run = b.get_run(run_id)
    assert run.data.params == {"depth": "4"} and run.data.metrics == {"acc": 0.9}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [f.path for f in b.list_artifacts(run_id, "model")] == ["model/model.txt"]
    got = b.download_artifacts(run_id, "model/model.txt", str(tmp_path / "down"))
    assert Path(got).read_text() == "weights of a"

    # mlflow's own multipart upload through C's proxy (parts land on either of C's workers), read back through A
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(5 * MiB))
    data = _random_file(tmp_path / "weights.bin", 12 * MiB + 321)
    repo = _artifact_repo(cluster.urls[2], run_id)
    parts: list[int] = []
    original = repo.complete_multipart_upload

    def counting(local_file: str, upload_id: str, parts_: Any = None, artifact_path: Any = None) -> None:
        original(local_file, upload_id, parts_, artifact_path)
        parts.append(len(parts_))

    monkeypatch.setattr(repo, "complete_multipart_upload", counting)
    repo.log_artifact(str(tmp_path / "weights.bin"), "model")
    assert parts == [3]  # create, three part PUTs, complete: really multipart
    got = a.download_artifacts(run_id, "model/weights.bin", tmp_path / "back")
    assert Path(got).read_bytes() == data
    experiment_id = a.get_run(run_id).info.experiment_id
    assert cluster.s3_bytes(f"{experiment_id}/{run_id}/artifacts/model/weights.bin") == data
    assert [f.path for f in a.list_artifacts(run_id, "model")] == ["model/model.txt", "model/weights.bin"]


def _artifact_repo(tracking_uri: str, run_id: str) -> Any:
    """mlflow's artifact repository of ``run_id`` as seen through the server at ``tracking_uri``."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    artifact_uri = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.artifact_uri
    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


# -- experiments and the registry ----------------------------------------------------------------------


def test_experiment_created_on_two_servers_at_once_exists_once(cluster: Cluster) -> None:
    for attempt in range(4):
        name = f"race-{attempt}-{uuid.uuid4().hex[:8]}"

        def create(url: str, name: str = name) -> httpx.Response:
            return httpx.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=30)

        answers = _concurrently([lambda url=url: create(url) for url in cluster.urls[:2]])
        codes = sorted(response.status_code for response in answers)
        assert codes == [200, 400], [response.text for response in answers]
        loser = next(response for response in answers if response.status_code == 400)
        assert loser.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
        winner = next(response for response in answers if response.status_code == 200)
        for url in cluster.urls:
            found = Client(url).get_experiment_by_name(name)
            assert found is not None and found.experiment_id == winner.json()["experiment_id"]


def test_concurrent_model_versions_across_servers_are_numbered_once_each(cluster: Cluster) -> None:
    name = f"scale-model-{uuid.uuid4().hex[:8]}"
    clients = [Client(url) for url in cluster.urls]
    clients[0].create_registered_model(name)
    count = 24

    def register(index: int) -> str:
        version = clients[index % len(clients)].create_model_version(name, f"s3://elsewhere/model-{index}")
        return version.version

    numbers = _concurrently([lambda index=index: register(index) for index in range(count)])

    assert sorted(int(number) for number in numbers) == list(range(1, count + 1))
    for client in clients:
        versions = client.search_model_versions(f"name = '{name}'", max_results=100)
        assert sorted(int(v.version) for v in versions) == list(range(1, count + 1))
        by_number = {int(v.version): v.source for v in versions}
        assert sorted(by_number.values()) == sorted(f"s3://elsewhere/model-{index}" for index in range(count))

    clients[0].set_registered_model_alias(name, "champion", "7")
    assert clients[1].get_model_version_by_alias(name, "champion").version == "7"
    assert clients[2].get_registered_model(name).aliases == {"champion": "7"}


def test_concurrent_stage_transitions_leave_one_version_in_production(cluster: Cluster) -> None:
    name = f"stage-model-{uuid.uuid4().hex[:8]}"
    clients = [Client(url) for url in cluster.urls]
    count = 8
    for index in range(count):
        clients[index % len(clients)].create_model_version(name, f"s3://elsewhere/{name}-{index}")
    for attempt in range(3):

        def promote(number: int) -> None:
            clients[number % len(clients)].transition_model_version_stage(
                name, str(number), Stage.PRODUCTION, archive_existing_versions=True
            )

        _concurrently([lambda number=number: promote(number) for number in range(1, count + 1)])

        for client in clients:
            stages = {int(v.version): v.current_stage for v in client.search_model_versions(f"name = '{name}'")}
            in_production = [number for number, stage in stages.items() if stage == "Production"]
            assert len(in_production) == 1, (attempt, stages)
            assert all(stage == "Archived" for number, stage in stages.items() if number not in in_production)
            (latest,) = client.get_latest_versions(name, ["Production"])
            assert int(latest.version) == in_production[0]


# -- the UI behind several workers ---------------------------------------------------------------------


def test_ui_writes_on_a_two_worker_server_accept_the_token_either_worker_handed_out(cluster: Cluster) -> None:
    from cairn.ui.security import CSRF_COOKIE, TOKEN_HEADER

    url = cluster.urls[2]  # --workers 2: each request below opens a new connection, served by either worker
    client = Client(url)
    run_id = client.create_run(client.create_experiment(f"ui-{uuid.uuid4().hex[:8]}")).info.run_id
    session = httpx.get(f"{url}/api/session", timeout=30)
    token = session.json()["csrf"]
    assert session.cookies[CSRF_COOKIE] == token
    for _ in range(4):
        for action in ("delete", "restore"):
            response = httpx.post(
                f"{url}/api/runs/{run_id}/{action}",
                headers={"Origin": url, TOKEN_HEADER: token, "Cookie": f"{CSRF_COOKIE}={token}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
    assert Client(cluster.urls[0]).get_run(run_id).info.lifecycle_stage == "active"


def test_one_run_written_through_every_server_at_once_keeps_every_point(cluster: Cluster) -> None:
    client = Client(cluster.urls[0])
    run_id = client.create_run(client.create_experiment(f"shared-run-{uuid.uuid4().hex[:8]}")).info.run_id
    writers, steps = 6, 40

    def write(index: int) -> None:
        writer = Client(cluster.urls[index % len(cluster.urls)])
        for first in range(0, steps, 10):
            writer.log_batch(
                run_id,
                metrics=[
                    Metric("loss", float(index * steps + step), 1_700_000_000_000 + step, index * steps + step)
                    for step in range(first, first + 10)
                ]
                + [Metric(f"rank{index}", 1.0, 1_700_000_000_000, first)],
                params=[Param("shared", "same everywhere")],
                tags=[RunTag(f"writer.{index}", "yes")],
            )

    _concurrently([lambda index=index: write(index) for index in range(writers)])

    for url in cluster.urls:
        run = Client(url).get_run(run_id)
        history = Client(url).get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(writers * steps))
        assert run.data.metrics["loss"] == float(writers * steps - 1)
        assert run.data.params == {"shared": "same everywhere"}
        assert {f"writer.{index}" for index in range(writers)} <= set(run.data.tags)
        assert all(run.data.metrics[f"rank{index}"] == 1.0 for index in range(writers))
