"""Local artifacts -> S3 (moto's server) and back, with the registered model loading from S3."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'cairn[sklearn]')")

import cairn.pyfunc
import cairn.sync
from cairn.artifacts import get_artifact_store
from cairn.tracking import config
from tests.conftest import S3Server
from tests.sync.conftest import artifact_uris, build_source, snapshot


def test_sync_to_s3_and_back(
    s3_server: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAIRN_S3_ENDPOINT_URL", s3_server.endpoint_url)
    source = build_source(tmp_path / "laptop")
    expected = snapshot(source.uri)
    team_root = f"s3://{s3_server.bucket}/sync-{uuid.uuid4().hex[:8]}"
    team = f"sqlite:///{tmp_path / 'team' / 'cairn.db'}"

    report = cairn.sync(source.uri, team, destination_artifact_root=team_root, progress=False)
    assert report.artifact_files == len([path for run in expected["runs"].values() for path in run["artifacts"]])
    uris = artifact_uris(team)
    assert all(uri.startswith(team_root + "/") for uri in uris.values())
    blob = get_artifact_store(uris[source.parent]).open("blobs/weights.bin").read()
    assert len(blob) == 200_000
    assert snapshot(team) == expected  # bytes read back from S3 match the local files
    assert cairn.sync(source.uri, team, destination_artifact_root=team_root, progress=False).total == 0

    config.set_tracking_uri(str(tmp_path / "team"))
    version = cairn.Client().get_model_version("clf", 3)
    assert version.source == f"{uris[source.model_run]}/model"
    model = cairn.pyfunc.load_model("models:/clf@champion", allow_pickle=True)
    assert np.asarray(model.predict(source.features)).shape == (40,)
    config.set_tracking_uri(None)

    back = tmp_path / "other-laptop"
    cairn.sync(team, str(back), progress=False)
    assert snapshot(f"sqlite:///{back / 'cairn.db'}") == expected
