"""Fixtures: one moto S3 server per session, and a ``store`` fixture run against every backend."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cairn.artifacts import ArtifactStore, get_artifact_store
from tests.conftest import S3Server


@pytest.fixture
def s3_root(s3_server: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``s3://`` artifact root on the moto server, endpoint given by CAIRN_S3_ENDPOINT_URL."""
    monkeypatch.setenv("CAIRN_S3_ENDPOINT_URL", s3_server.endpoint_url)
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex}/1/run/artifacts"


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> ArtifactStore:
    """An empty artifact store on each backend (same tests run against both)."""
    if backend == "local":
        return get_artifact_store(str(tmp_path / "cairn-runs" / "artifacts" / "1" / "run" / "artifacts"))
    return get_artifact_store(request.getfixturevalue("s3_root"))


@pytest.fixture
def src_tree(tmp_path: Path) -> Path:
    """A small local directory tree to upload."""
    root = tmp_path / "src"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "top.txt").write_text("top")
    (root / "sub" / "a.bin").write_bytes(bytes(range(256)))
    (root / "sub" / "deeper" / "b.json").write_text('{"b": 1}')
    return root
