"""FsspecArtifactStore specifics: endpoint configuration, hostile object names, bucket roots, caching."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from cairn.artifacts import FsspecArtifactStore, get_artifact_store
from cairn.artifacts import _s3_options as s3_options
from cairn.errors import UnsafePath
from cairn.tracking.entities import FileInfo

from .conftest import S3Server


def _client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def test_memory_filesystem_round_trip(tmp_path: Path) -> None:
    store = get_artifact_store(f"memory://cairn-tests/{uuid.uuid4().hex}/artifacts/")
    assert isinstance(store, FsspecArtifactStore)
    assert not store.root.endswith("/")
    store.put_bytes(b"hello", "notes/a.txt")
    assert store.list("notes") == [FileInfo("notes/a.txt", False, 5)]
    assert store.download("notes", tmp_path).joinpath("a.txt").read_bytes() == b"hello"
    store.delete("notes")
    assert not store.exists("notes/a.txt")


def test_endpoint_from_aws_endpoint_url(s3_server: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    store = get_artifact_store(f"s3://{s3_server.bucket}/{uuid.uuid4().hex}/artifacts")
    store.put_bytes(b"via AWS_ENDPOINT_URL", "x.txt")
    body = _client(s3_server).get_object(Bucket=s3_server.bucket, Key=store.root.split("/", 3)[3] + "/x.txt")
    assert body["Body"].read() == b"via AWS_ENDPOINT_URL"


def test_endpoint_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-env")
    monkeypatch.setenv("CAIRN_S3_ENDPOINT_URL", "http://cairn-env")
    assert s3_options({}) == {"client_kwargs": {"endpoint_url": "http://cairn-env"}}
    monkeypatch.delenv("CAIRN_S3_ENDPOINT_URL")
    assert s3_options({"client_kwargs": {"region_name": "eu"}}) == {
        "client_kwargs": {"region_name": "eu", "endpoint_url": "http://aws-env"}
    }
    explicit = {"client_kwargs": {"endpoint_url": "http://explicit"}}
    assert s3_options(explicit) == explicit
    assert s3_options({"endpoint_url": "http://explicit"}) == {"endpoint_url": "http://explicit"}


@pytest.mark.parametrize("key", ["a/../../../escape.txt", "a/back\\slash.txt", "a/%2e%2e/x.txt"])
def test_download_refuses_hostile_object_names(s3_server: S3Server, s3_root: str, tmp_path: Path, key: str) -> None:
    store = get_artifact_store(s3_root)
    store.put_bytes(b"fine", "a/fine.txt")
    prefix = s3_root.split("/", 3)[3]
    _client(s3_server).put_object(Bucket=s3_server.bucket, Key=f"{prefix}/{key}", Body=b"evil")
    with pytest.raises(UnsafePath, match="unsafe name"):
        store.download(None, tmp_path / "dl")
    assert not (tmp_path / "escape.txt").exists()
    assert [p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()] == []


def test_listing_sees_objects_written_by_another_client(s3_server: S3Server, s3_root: str) -> None:
    store = get_artifact_store(s3_root)
    store.put_bytes(b"1", "d/one.txt")
    assert [info.path for info in store.list("d")] == ["d/one.txt"]
    prefix = s3_root.split("/", 3)[3]
    _client(s3_server).put_object(Bucket=s3_server.bucket, Key=f"{prefix}/d/two.txt", Body=b"22")
    assert store.list("d") == [FileInfo("d/one.txt", False, 1), FileInfo("d/two.txt", False, 2)]
    assert store.exists("d/two.txt")


def test_delete_all_on_a_bucket_root_keeps_the_bucket(s3_server: S3Server, aws_env: None) -> None:
    bucket = f"cairn-root-{uuid.uuid4().hex[:12]}"
    client = _client(s3_server)
    client.create_bucket(Bucket=bucket)
    store = get_artifact_store(f"s3://{bucket}", client_kwargs={"endpoint_url": s3_server.endpoint_url})
    store.put_bytes(b"1", "a.txt")
    store.put_bytes(b"2", "d/b.txt")
    assert [info.path for info in store.list()] == ["a.txt", "d"]
    store.delete()
    assert store.list() == []
    client.head_bucket(Bucket=bucket)  # still there
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
