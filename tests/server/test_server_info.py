"""``/api/3.0/mlflow/server-info``: MLflow's payload, and the mlflow client acting on it (multipart uploads
through cairn's proxy when artifacts are served, a plain PUT otherwise)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cairn.tracking.client import Client
from tests.server.conftest import RunningServer, serve


def test_payload_has_mlflows_keys_and_says_multipart_uploads_are_enabled(server: RunningServer) -> None:
    import mlflow.utils.server_info as mlflow_info

    keys = {
        getattr(mlflow_info, name)
        for name in dir(mlflow_info)
        if name.startswith("SERVER_INFO_") and name != "SERVER_INFO_ENDPOINT" and "SKILL" not in name
    }
    for prefix in ("/api/3.0", "/ajax-api/3.0"):
        response = httpx.get(f"{server.url}{prefix}/mlflow/server-info")
        assert response.status_code == 200
        info = response.json()
        assert set(info) == keys
        assert info["multipart_uploads_enabled"] is True and info["artifact_serving_enabled"] is True
        assert info["multipart_downloads_enabled"] is False and info["artifacts_presigned_only"] is False
        assert info["store_type"] == "SqlStore" and info["workspaces_enabled"] is False
        assert server.artifact_root not in response.text  # served without login: no internal paths


def test_without_served_artifacts_nothing_is_advertised(tmp_path: Path) -> None:
    artifact_root = str(tmp_path / "artifacts")
    with serve(
        Client(f"sqlite:///{tmp_path}/cairn.db", artifact_root), artifact_root, serve_artifacts=False
    ) as running:
        info = httpx.get(f"{running.url}/api/3.0/mlflow/server-info").json()
    assert info["multipart_uploads_enabled"] is False and info["artifact_serving_enabled"] is False


def test_other_api_3_paths_answer_endpoint_not_found(server: RunningServer) -> None:
    for path in ("/api/3.0/mlflow/scorers/list", "/ajax-api/3.0/mlflow/server-features"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 404
        assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


@pytest.fixture
def small_multipart(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """mlflow's multipart thresholds lowered so a 300 kB file goes up in 3 parts."""
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(100_000))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(100_000))
    monkeypatch.delenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", raising=False)
    yield


def test_mlflow_client_uploads_a_large_artifact_in_parts_through_the_proxy(
    mlflow_tracking: RunningServer,
    small_multipart: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mlflow
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    parts: list[int] = []
    real_upload_part = HttpArtifactRepository._upload_part

    def counting_upload_part(**kwargs: object) -> object:
        parts.append(int(kwargs["credential"].part_number))  # type: ignore[attr-defined]
        return real_upload_part(**kwargs)

    monkeypatch.setattr(HttpArtifactRepository, "_upload_part", staticmethod(counting_upload_part))
    repositories: list[HttpArtifactRepository] = []
    real_try = HttpArtifactRepository._try_multipart_upload

    def recording_try(self: HttpArtifactRepository, *args: object, **kwargs: object) -> object:
        repositories.append(self)
        return real_try(self, *args, **kwargs)

    monkeypatch.setattr(HttpArtifactRepository, "_try_multipart_upload", recording_try)
    payload = os.urandom(300_000)
    (tmp_path / "weights.bin").write_bytes(payload)
    try:
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "weights.bin"), artifact_path="big")
    finally:
        from mlflow.tracking._tracking_service import utils as tracking_utils

        for repository in repositories:  # the part uploads ran on the repository's own thread pool
            repository.thread_pool.shutdown(wait=True)
        cache = tracking_utils._artifact_repos_cache
        for key in [key for key, cached in cache.items() if any(cached is r for r in repositories)]:
            del cache[key]  # a repository with a closed pool is never handed out again
    assert sorted(parts) == [1, 2, 3]
    assert not [r for r in caplog.records if "multipart" in r.getMessage()]  # no fallback to a plain PUT
    client = mlflow_tracking.client
    downloaded = client.download_artifacts(run.info.run_id, "big/weights.bin", str(tmp_path / "back"))
    assert Path(downloaded).read_bytes() == payload
    stored = Path(mlflow_tracking.artifact_root) / run.info.experiment_id / run.info.run_id / "artifacts" / "big"
    assert stored.joinpath("weights.bin").read_bytes() == payload
    assert not list(Path(mlflow_tracking.artifact_root).glob(".cairn-tmp-mpu-*"))  # staging cleaned up
