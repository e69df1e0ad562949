"""The artifact proxy (``/api/2.0/mlflow-artifacts/...``) against the real mlflow client and raw HTTP.

Every test runs a real uvicorn server in a thread and checks the bytes in the server's artifact root
on disk. The ``proxy`` server carries only this module's routes, so most tests depend on nothing but
the artifact proxy and the shared protocol; the fluent-API test uses the whole app (``mlflow_tracking``
of tests/server/conftest.py), where run locations are ``mlflow-artifacts:/...``.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from starlette.applications import Starlette

from cairn.server.artifacts_api import routes
from cairn.server.protocol import ServerContext
from cairn.tracking.client import Client
from tests.conftest import S3Server
from tests.server.conftest import RunningServer, free_port, run_app

PROXY = "/api/2.0/mlflow-artifacts"


@contextmanager
def serve(client: Client, artifact_root: str, *, serve_artifacts: bool = True) -> Iterator[RunningServer]:
    """Run an app of the artifact proxy's routes in a uvicorn thread until the block ends."""
    port = free_port()
    ctx = ServerContext(client=client, serve_artifacts=serve_artifacts, artifact_root=artifact_root)
    app = Starlette(routes=routes(ctx))
    try:
        with run_app(app, port):
            yield RunningServer(f"http://127.0.0.1:{port}", client, artifact_root, app)
    finally:
        client.flush()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[RunningServer]:
    """The artifact proxy over a fresh SQLite store and artifact root under ``tmp_path/server``."""
    root = tmp_path / "server"
    artifact_root = str(root / "artifacts")
    with serve(Client(f"sqlite:///{root}/cairn.db", artifact_root), artifact_root) as running:
        yield running


def _run_prefix() -> str:
    return f"1/{uuid.uuid4().hex}/artifacts"


def _repo(proxy: RunningServer, prefix: str):  # type: ignore[no-untyped-def]
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    return MlflowArtifactsRepository(f"mlflow-artifacts:/{prefix}", tracking_uri=proxy.url)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (symlinks not followed) with its bytes."""
    found: dict[str, bytes] = {}
    for current, dirs, files in os.walk(root):
        for name in files:
            path = Path(current, name)
            if not path.is_symlink():
                found[str(path.relative_to(root))] = path.read_bytes()
        dirs[:] = [d for d in dirs if not Path(current, d).is_symlink()]
    return found


def _raw(proxy: RunningServer, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """Send ``path`` byte for byte (httpx would normalise ``..`` away before it left the client)."""
    netloc = urlparse(proxy.url).netloc
    host, port = netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- the real mlflow client ----------------------------------------------------------------------


def test_mlflow_client_uploads_lists_downloads_and_deletes(proxy: RunningServer, tmp_path: Path) -> None:
    import mlflow

    prefix = _run_prefix()
    repo = _repo(proxy, prefix)
    single = tmp_path / "in" / "notes.txt"
    single.parent.mkdir()
    single.write_text("hello proxy\n")
    tree = tmp_path / "tree"
    (tree / "nested").mkdir(parents=True)
    (tree / "a.json").write_bytes(b'{"a": 1}')
    (tree / "nested" / "b.bin").write_bytes(bytes(range(256)) * 40)

    repo.log_artifact(str(single))
    repo.log_artifacts(str(tree), "dir")

    stored = Path(proxy.artifact_root, *prefix.split("/"))
    assert (stored / "notes.txt").read_text() == "hello proxy\n"
    assert (stored / "dir" / "a.json").read_bytes() == b'{"a": 1}'
    assert (stored / "dir" / "nested" / "b.bin").read_bytes() == bytes(range(256)) * 40

    top = {(f.path, f.is_dir, f.file_size) for f in repo.list_artifacts()}
    assert top == {("dir", True, None), ("notes.txt", False, len("hello proxy\n"))}
    assert {f.path for f in repo.list_artifacts("dir")} == {"dir/a.json", "dir/nested"}
    assert repo.list_artifacts("notes.txt") == []

    dst = tmp_path / "out"
    got = mlflow.artifacts.download_artifacts(
        artifact_uri=f"mlflow-artifacts:/{prefix}", dst_path=str(dst), tracking_uri=proxy.url
    )
    assert _tree(Path(got)) == _tree(stored)

    repo.delete_artifacts("dir/nested")
    assert not (stored / "dir" / "nested").exists()
    assert (stored / "dir" / "a.json").exists()


def test_fluent_mlflow_artifacts_through_the_whole_server(mlflow_tracking: RunningServer, tmp_path: Path) -> None:
    import mlflow

    local = tmp_path / "metrics.csv"
    local.write_text("step,loss\n1,0.5\n")
    tree = tmp_path / "plots"
    tree.mkdir()
    (tree / "a.png").write_bytes(b"\x89PNG fake")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(local))
        mlflow.log_artifacts(str(tree), "plots")
        mlflow.log_text("hello", "notes/readme.txt")
        assert mlflow.get_artifact_uri().startswith("mlflow-artifacts:/")
    run_id = run.info.run_id

    stored = Path(mlflow_tracking.client.get_run(run_id).info.artifact_uri)
    assert stored.is_relative_to(mlflow_tracking.artifact_root)
    assert (stored / "metrics.csv").read_text() == "step,loss\n1,0.5\n"
    assert (stored / "plots" / "a.png").read_bytes() == b"\x89PNG fake"
    assert (stored / "notes" / "readme.txt").read_text() == "hello"
    assert [info.path for info in mlflow_tracking.client.list_artifacts(run_id)] == ["metrics.csv", "notes", "plots"]

    client = mlflow.MlflowClient()
    assert [(f.path, f.is_dir) for f in client.list_artifacts(run_id)] == [
        ("metrics.csv", False),
        ("notes", True),
        ("plots", True),
    ]
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == ["plots/a.png"]
    got = client.download_artifacts(run_id, "", str(tmp_path / "down"))
    assert _tree(Path(got)) == _tree(stored)
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/readme.txt") == "hello"


def test_mlflow_client_multipart_upload(proxy: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(1024 * 1024))
    prefix = _run_prefix()
    repo = _repo(proxy, prefix)
    completed: list[str] = []
    original = repo.complete_multipart_upload

    def spy(local_file, upload_id, parts=None, artifact_path=None):  # type: ignore[no-untyped-def]
        original(local_file, upload_id, parts, artifact_path)
        completed.append(f"{len(parts)} parts")

    monkeypatch.setattr(repo, "complete_multipart_upload", spy)
    data = os.urandom(2 * 1024 * 1024 + 12345)
    local = tmp_path / "weights.bin"
    local.write_bytes(data)

    repo.log_artifact(str(local), "model")

    assert completed == ["3 parts"]  # the client really went through mpu/create, 3 part PUTs, mpu/complete
    stored = Path(proxy.artifact_root, *prefix.split("/"))
    assert (stored / "model" / "weights.bin").read_bytes() == data
    leftovers = [p.name for p in Path(proxy.artifact_root).iterdir() if p.name.startswith(".cairn-tmp")]
    assert leftovers == []


# -- multipart endpoints directly ----------------------------------------------------------------


def _create(http: httpx.Client, base: str, name: str, num_parts: int) -> dict:  # type: ignore[type-arg]
    response = http.post(f"{PROXY}/mpu/create/{base}", json={"path": name, "num_parts": num_parts})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_multipart_endpoints_check_parts_and_etags(proxy: RunningServer) -> None:
    base = _run_prefix()
    target = Path(proxy.artifact_root, *base.split("/"), "big.bin")
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        created = _create(http, base, "/home/someone/big.bin", 2)  # an old client's full local path
        upload_id = created["upload_id"]
        urls = [c["url"] for c in created["credentials"]]
        assert [c["part_number"] for c in created["credentials"]] == [1, 2]
        etags = [
            http.put(url, content=body).headers["ETag"] for url, body in zip(urls, [b"a" * 10, b"b" * 5], strict=True)
        ]

        assert http.put(urls[0].rsplit("/", 1)[0] + "/3", content=b"x").status_code == 400  # no part 3
        assert http.put(f"{PROXY}/mpu/part/not-an-id/1", content=b"x").status_code == 400

        def complete(parts: list[dict], path: str = "big.bin", where: str = base) -> httpx.Response:  # type: ignore[type-arg]
            return http.post(
                f"{PROXY}/mpu/complete/{where}", json={"path": path, "upload_id": upload_id, "parts": parts}
            )

        wrong_etag = complete([{"part_number": 1, "etag": etags[1]}, {"part_number": 2, "etag": etags[1]}])
        assert wrong_etag.status_code == 400 and wrong_etag.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert complete([{"part_number": 1, "etag": etags[0]}]).status_code == 400  # part 2 missing
        other_target = complete([{"part_number": i + 1, "etag": e} for i, e in enumerate(etags)], path="other.bin")
        assert other_target.status_code == 400
        assert not target.exists()

        ok = complete([{"part_number": i + 1, "etag": e} for i, e in enumerate(etags)])
        assert ok.status_code == 200, ok.text
        assert target.read_bytes() == b"a" * 10 + b"b" * 5
        again = complete([{"part_number": i + 1, "etag": e} for i, e in enumerate(etags)])
        assert again.status_code == 404 and again.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"

        aborted = _create(http, base, "gone.bin", 1)
        http.put(aborted["credentials"][0]["url"], content=b"zzz")
        abort = http.post(f"{PROXY}/mpu/abort/{base}", json={"path": "gone.bin", "upload_id": aborted["upload_id"]})
        assert abort.status_code == 200
        assert [p for p in Path(proxy.artifact_root).iterdir() if p.name.startswith(".cairn-tmp")] == []
        assert http.put(aborted["credentials"][0]["url"], content=b"zzz").status_code == 404

        for bad in ({"path": "x.bin", "num_parts": 0}, {"path": "..", "num_parts": 1}, {"num_parts": 1}):
            response = http.post(f"{PROXY}/mpu/create/{base}", json=bad)
            assert response.status_code == 400, bad
            assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


# -- hostile paths -------------------------------------------------------------------------------

HOSTILE = [
    "../../evil.txt",
    "a/../../../evil.txt",
    "%2e%2e/%2e%2e/evil.txt",
    "..%2F..%2Fevil.txt",
    "%252e%252e/%252e%252e/evil.txt",
    "a/evil%00.txt",
    "/tmp/evil.txt",
    "..%5c..%5cevil.txt",
    "C:/evil.txt",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_paths_are_refused_and_nothing_is_written(proxy: RunningServer, tmp_path: Path, path: str) -> None:
    before = _tree(tmp_path)
    for method, url, body in (
        ("PUT", f"{PROXY}/artifacts/{path}", b"pwned"),
        ("GET", f"{PROXY}/artifacts/{path}", None),
        ("DELETE", f"{PROXY}/artifacts/{path}", None),
        ("GET", f"{PROXY}/artifacts?path={path}", None),
        ("POST", f"{PROXY}/mpu/create/{path}", b'{"path": "x.bin", "num_parts": 1}'),
    ):
        status, raw = _raw(proxy, method, url, body)
        assert status == 400, (method, url, raw)
        assert b'"INVALID_PARAMETER_VALUE"' in raw
    assert _tree(tmp_path) == before
    assert not Path(proxy.artifact_root).exists() or list(Path(proxy.artifact_root).iterdir()) == []


def test_symlink_out_of_the_root_is_neither_followed_for_writes_nor_reads(proxy: RunningServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not serve me")
    root = Path(proxy.artifact_root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        put = http.put(f"{PROXY}/artifacts/link/evil.txt", content=b"pwned")
        get = http.get(f"{PROXY}/artifacts/link/secret.txt")
        listing = http.get(f"{PROXY}/artifacts", params={"path": "link"})
        mpu = http.post(f"{PROXY}/mpu/create/link", json={"path": "evil.bin", "num_parts": 1})
    for response in (put, get, listing, mpu):
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


# -- streaming -----------------------------------------------------------------------------------


def test_upload_and_download_stream_in_chunks(proxy: RunningServer, tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    source = tmp_path / "big.bin"
    with open(source, "wb") as out:
        for _ in range(50):
            out.write(os.urandom(1024 * 1024))
    back = tmp_path / "back.bin"
    tracemalloc.start()  # the server runs in a thread of this process: its allocations are traced too
    try:
        with httpx.Client(base_url=proxy.url, timeout=120) as http, open(source, "rb") as body:
            response = http.put(f"{PROXY}/artifacts/1/run/artifacts/big.bin", content=body)
            assert response.status_code == 200, response.text
            _, upload_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            with http.stream("GET", f"{PROXY}/artifacts/1/run/artifacts/big.bin") as stream, open(back, "wb") as out:
                assert stream.status_code == 200
                assert stream.headers["content-length"] == str(size)
                for chunk in stream.iter_bytes():
                    out.write(chunk)
            _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert upload_peak < 12 * 1024 * 1024, upload_peak
    assert download_peak < 12 * 1024 * 1024, download_peak
    stored = Path(proxy.artifact_root, "1", "run", "artifacts", "big.bin")
    assert stored.stat().st_size == size
    assert stored.read_bytes() == source.read_bytes() == back.read_bytes()


# -- download headers, errors, disabled proxy, tracking-side listing -----------------------------


def test_fsspec_root_upload_list_download_and_multipart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    root = f"memory://cairn-proxy-{uuid.uuid4().hex}"
    client = Client(f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "unused"))
    with serve(client, root) as running:
        repo = _repo(running, "1/r/artifacts")
        (tmp_path / "a.txt").write_text("over fsspec")
        repo.log_artifact(str(tmp_path / "a.txt"), "sub")
        monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
        monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
        monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(1024 * 1024))
        data = os.urandom(1024 * 1024 + 7)
        (tmp_path / "b.bin").write_bytes(data)
        repo.log_artifact(str(tmp_path / "b.bin"))
        assert [(f.path, f.file_size) for f in repo.list_artifacts()] == [("b.bin", len(data)), ("sub", None)]
        got = mlflow.artifacts.download_artifacts(
            artifact_uri="mlflow-artifacts:/1/r/artifacts", dst_path=str(tmp_path / "out"), tracking_uri=running.url
        )
    from cairn.artifacts import get_artifact_store

    store = get_artifact_store(root)
    with store.open("1/r/artifacts/sub/a.txt") as handle:
        assert handle.read() == b"over fsspec"
    assert (Path(got) / "b.bin").read_bytes() == data
    assert [info.path for info in store.list()] == ["1"]  # the multipart stage is gone
    store.delete()


def test_an_interrupted_upload_leaves_nothing_behind(proxy: RunningServer) -> None:
    root = Path(proxy.artifact_root)
    target = root / "1" / "r" / "artifacts" / "cut.bin"
    host, port = urlparse(proxy.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"PUT {PROXY}/artifacts/1/r/artifacts/cut.bin HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10000000\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 100_000)
        deadline = time.monotonic() + 10
        while not list(target.parent.glob(".cairn-tmp-*/cut.bin")):  # the upload is being staged
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while list(target.parent.glob(".cairn-tmp-*")):
        assert time.monotonic() < deadline, "the staged upload was not removed"
        time.sleep(0.01)
    assert not target.exists()
    assert _tree(root) == {}


def test_a_file_in_the_way_is_a_400_not_a_500(proxy: RunningServer) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        assert http.put(f"{PROXY}/artifacts/1/r/artifacts/a.txt", content=b"x").status_code == 200
        blocked = http.put(f"{PROXY}/artifacts/1/r/artifacts/a.txt/b.txt", content=b"y")
        into_dir = http.put(f"{PROXY}/artifacts/1/r/artifacts", content=b"y")
    for response in (blocked, into_dir):
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert Path(proxy.artifact_root, "1", "r", "artifacts", "a.txt").read_bytes() == b"x"


def test_tracking_list_of_a_run_stored_at_a_mlflow_artifacts_location(proxy: RunningServer) -> None:
    experiment_id = proxy.client.create_experiment("proxied", artifact_location="mlflow-artifacts:/team/exp")
    run_id = proxy.client.create_run(experiment_id).info.run_id
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        put = http.put(f"{PROXY}/artifacts/team/exp/{run_id}/artifacts/x.txt", content=b"abc")
        listing = http.get("/api/2.0/mlflow/artifacts/list", params={"run_id": run_id})
    assert put.status_code == 200
    assert listing.json() == {
        "root_uri": f"mlflow-artifacts:/team/exp/{run_id}/artifacts",
        "files": [{"path": "x.txt", "is_dir": False, "file_size": 3}],
    }
    assert Path(proxy.artifact_root, "team", "exp", run_id, "artifacts", "x.txt").read_bytes() == b"abc"


def test_download_is_an_attachment_with_an_allow_listed_type(proxy: RunningServer) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        assert http.put(f"{PROXY}/artifacts/1/r/artifacts/page.html", content=b"<script>x</script>").status_code == 200
        assert http.put(f"{PROXY}/artifacts/1/r/artifacts/m.json", content=b"{}").status_code == 200
        html = http.get(f"{PROXY}/artifacts/1/r/artifacts/page.html")
        as_json = http.get(f"{PROXY}/artifacts/1/r/artifacts/m.json")
        missing = http.get(f"{PROXY}/artifacts/1/r/artifacts/nope.txt")
        directory = http.get(f"{PROXY}/artifacts/1/r/artifacts")
        root_delete = http.delete(f"{PROXY}/artifacts/")
    assert html.content == b"<script>x</script>"
    assert html.headers["content-type"] == "application/octet-stream"
    assert html.headers["x-content-type-options"] == "nosniff"
    assert html.headers["content-disposition"].startswith("attachment;")
    assert as_json.headers["content-type"] == "application/json"
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert directory.status_code == 400 and directory.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert root_delete.status_code == 400
    assert Path(proxy.artifact_root, "1", "r", "artifacts", "m.json").exists()


def test_disabled_proxy_answers_in_mlflow_shape(tmp_path: Path) -> None:
    root = tmp_path / "server"
    client = Client(f"sqlite:///{root}/cairn.db", str(root / "artifacts"))
    with (
        serve(client, str(root / "artifacts"), serve_artifacts=False) as running,
        httpx.Client(base_url=running.url, timeout=30) as http,
    ):
        responses = [
            http.put(f"{PROXY}/artifacts/1/r/artifacts/x.txt", content=b"x"),
            http.get(f"{PROXY}/artifacts", params={"path": "1"}),
            http.post(f"{PROXY}/mpu/create/1/r/artifacts", json={"path": "x", "num_parts": 1}),
        ]
    for response in responses:
        assert response.status_code == 501
        assert response.json()["error_code"] == "NOT_IMPLEMENTED"
        assert "--no-serve-artifacts" in response.json()["message"]
    assert not (root / "artifacts" / "1").exists()


def test_tracking_list_artifacts_endpoint(proxy: RunningServer, tmp_path: Path) -> None:
    run = proxy.client.create_run("0")
    run_id = run.info.run_id
    proxy.client.log_text(run_id, "hi", "sub/a.txt")
    proxy.client.log_text(run_id, "top", "b.txt")
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        top = http.get("/api/2.0/mlflow/artifacts/list", params={"run_id": run_id})
        sub = http.get("/ajax-api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "sub"})
        unknown = http.get("/api/2.0/mlflow/artifacts/list", params={"run_id": "f" * 32})
        hostile = http.get("/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "../../.."})
        missing_id = http.get("/api/2.0/mlflow/artifacts/list")
    assert top.status_code == 200, top.text
    assert top.json()["root_uri"] == f"mlflow-artifacts:/0/{run_id}/artifacts"
    assert top.json()["files"] == [{"path": "b.txt", "is_dir": False, "file_size": 3}, {"path": "sub", "is_dir": True}]
    assert sub.json()["files"] == [{"path": "sub/a.txt", "is_dir": False, "file_size": 2}]
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert hostile.status_code == 400 and hostile.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert missing_id.status_code == 400


# -- an S3 root (moto server) ------------------------------------------------------------------------


@pytest.fixture
def s3_proxy(s3_server: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Proxy]:
    """The artifact proxy over a fresh ``s3://`` root on the moto server, and a boto3 client of that server."""
    import boto3

    monkeypatch.setenv("CAIRN_S3_ENDPOINT_URL", s3_server.endpoint_url)
    prefix = f"proxy-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    client = Client(f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "unused"))
    with serve(client, f"s3://{s3_server.bucket}/{prefix}") as running:
        yield S3Proxy(running, s3, s3_server.bucket, prefix)


@dataclass
class S3Proxy:
    server: RunningServer
    s3: Any
    bucket: str
    prefix: str

    def keys(self) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return sorted(item["Key"][len(self.prefix) + 1 :] for item in listed.get("Contents", []))

    def pending_uploads(self) -> list[str]:
        listed = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return [item["Key"] for item in listed.get("Uploads", [])]


def test_upload_to_s3_streams_as_a_multipart_upload_and_an_interrupted_one_is_aborted(s3_proxy: S3Proxy) -> None:
    from cairn.artifacts.fsspec_store import WRITE_BLOCK_BYTES

    host, port = urlparse(s3_proxy.server.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        total = 4 * WRITE_BLOCK_BYTES
        head = (
            f"PUT {PROXY}/artifacts/1/r/artifacts/cut.bin HTTP/1.1\r\nHost: {host}\r\nContent-Length: {total}\r\n\r\n"
        )
        sock.sendall(head.encode() + os.urandom(2 * WRITE_BLOCK_BYTES + 1))
        deadline = time.monotonic() + 20
        while not s3_proxy.pending_uploads():  # parts go to S3 while the body is still arriving
            assert time.monotonic() < deadline, "no S3 multipart upload started before the body was complete"
            time.sleep(0.05)
        assert s3_proxy.pending_uploads() == [f"{s3_proxy.prefix}/1/r/artifacts/cut.bin"]
    deadline = time.monotonic() + 20
    while s3_proxy.pending_uploads():
        assert time.monotonic() < deadline, "the multipart upload of the cut request was not aborted"
        time.sleep(0.05)
    assert s3_proxy.keys() == []  # nothing was published

    data = os.urandom(WRITE_BLOCK_BYTES * 2 + 12345)
    with httpx.Client(base_url=s3_proxy.server.url, timeout=60) as http:
        assert http.put(f"{PROXY}/artifacts/1/r/artifacts/whole.bin", content=data).status_code == 200
        assert http.put(f"{PROXY}/artifacts/1/r/artifacts/small.txt", content=b"small").status_code == 200
        assert http.get(f"{PROXY}/artifacts/1/r/artifacts/whole.bin").content == data
    assert s3_proxy.keys() == ["1/r/artifacts/small.txt", "1/r/artifacts/whole.bin"]
    stored = s3_proxy.s3.get_object(Bucket=s3_proxy.bucket, Key=f"{s3_proxy.prefix}/1/r/artifacts/whole.bin")
    assert stored["Body"].read() == data
    assert s3_proxy.pending_uploads() == []


@pytest.mark.parametrize(("chunk_mib", "assembled_in_s3"), [(5, True), (1, False)])
def test_mlflow_multipart_upload_onto_s3_leaves_only_the_file(
    s3_proxy: S3Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_mib: int, assembled_in_s3: bool
) -> None:
    from cairn.artifacts.fsspec_store import FsspecArtifactStore

    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(chunk_mib * 1024 * 1024))
    parts_read: list[str] = []  # part files the server read back to assemble the file itself
    original_open = FsspecArtifactStore.open

    def recording_open(store: FsspecArtifactStore, path: str) -> Any:
        if "/part-" in path:
            parts_read.append(path)
        return original_open(store, path)

    monkeypatch.setattr(FsspecArtifactStore, "open", recording_open)
    data = os.urandom(11 * 1024 * 1024)
    (tmp_path / "weights.bin").write_bytes(data)
    repo = _repo(s3_proxy.server, "1/r/artifacts")

    repo.log_artifact(str(tmp_path / "weights.bin"), "model")

    assert len(parts_read) == (0 if assembled_in_s3 else 11)  # 5 MiB parts: S3 copies them (UploadPartCopy)
    assert s3_proxy.keys() == ["1/r/artifacts/model/weights.bin"]  # the parts' stage is gone
    stored = s3_proxy.s3.get_object(Bucket=s3_proxy.bucket, Key=f"{s3_proxy.prefix}/1/r/artifacts/model/weights.bin")
    assert stored["Body"].read() == data
    assert s3_proxy.pending_uploads() == []
    assert [(f.path, f.file_size) for f in repo.list_artifacts("model")] == [("model/weights.bin", len(data))]
    repo.delete_artifacts("model")
    assert s3_proxy.keys() == []


def test_a_retried_part_does_not_replace_the_attempt_the_client_kept(s3_proxy: S3Proxy) -> None:
    base = "1/r/artifacts"
    with httpx.Client(base_url=s3_proxy.server.url, timeout=30) as http:
        created = _create(http, base, "model.bin", 2)
        first, second = (c["url"] for c in created["credentials"])
        kept = http.put(first, content=b"A" * 10).headers["ETag"]
        late = http.put(first, content=b"Z" * 10).headers["ETag"]  # a stale retry landing after the answer
        tail = http.put(second, content=b"B" * 3).headers["ETag"]
        assert kept != late
        body = {"path": "model.bin", "upload_id": created["upload_id"]}
        forged = http.post(
            f"{PROXY}/mpu/complete/{base}",
            json={**body, "parts": [{"part_number": 1, "etag": "../x"}, {"part_number": 2, "etag": tail}]},
        )
        assert forged.status_code == 400 and "not an ETag this server handed out" in forged.json()["message"]
        parts = [{"part_number": 1, "etag": kept}, {"part_number": 2, "etag": tail}]
        assert http.post(f"{PROXY}/mpu/complete/{base}", json={**body, "parts": parts}).status_code == 200
        assert http.get(f"{PROXY}/artifacts/{base}/model.bin").content == b"A" * 10 + b"B" * 3
    assert s3_proxy.keys() == ["1/r/artifacts/model.bin"]


# -- locations as clients see them -----------------------------------------------------------------


def test_public_location_maps_the_served_root_to_mlflow_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cairn.server.locations import public_location

    client = Client(f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "artifacts"))
    s3 = ServerContext(client=client, serve_artifacts=True, artifact_root="s3://bucket/team/")
    assert public_location(s3, "s3://bucket/team/3/abc/artifacts") == "mlflow-artifacts:/3/abc/artifacts"
    assert public_location(s3, "s3://bucket/team") == "mlflow-artifacts:/"
    assert public_location(s3, "s3://bucket/teammate/3") == "s3://bucket/teammate/3"  # a sibling, not below
    assert public_location(s3, "mlflow-artifacts:/3") == "mlflow-artifacts:/3"
    unserved = ServerContext(client=client, serve_artifacts=False, artifact_root="s3://bucket/team")
    assert public_location(unserved, "s3://bucket/team/3") == "s3://bucket/team/3"

    monkeypatch.chdir(tmp_path)  # a relative root and the absolute locations the store records name one place
    local = ServerContext(client=client, serve_artifacts=True, artifact_root="./runs")
    assert public_location(local, str(tmp_path / "runs" / "7")) == "mlflow-artifacts:/7"
    assert public_location(local, (tmp_path / "runs" / "7").as_uri()) == "mlflow-artifacts:/7"
    assert public_location(local, str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")
    client.store.close()
