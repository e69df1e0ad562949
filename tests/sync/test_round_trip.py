"""SQLite -> PostgreSQL -> SQLite keeps every run, point, artifact byte and registry entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'cairn[sklearn]')")

import cairn.pyfunc
import cairn.sync
from cairn.tracking import config
from tests.conftest import PgServer
from tests.sync.conftest import SourceStore, artifact_uris, snapshot


def test_sqlite_to_postgres_to_sqlite_preserves_everything(
    source: SourceStore, pg_server: PgServer, tmp_path: Path
) -> None:
    expected = snapshot(source.uri)
    assert len(expected["runs"]) == 5 and set(expected["registry"]["clf"]["versions"]) == {"1", "3"}

    with pg_server.new_database("cairn_sync") as pg_url:
        pg_root = str(tmp_path / "team-artifacts")
        first = cairn.sync(source.uri, pg_url, destination_artifact_root=pg_root, progress=False)
        assert first.runs_created == 5 and first.skipped == []
        assert first.metric_points == sum(len(r["points"]) for r in expected["runs"].values())
        assert first.model_versions == 2 and first.aliases == 2
        assert snapshot(pg_url) == expected
        assert all(uri.startswith(pg_root) for uri in artifact_uris(pg_url).values())

        again = cairn.sync(source.uri, pg_url, destination_artifact_root=pg_root, progress=False)
        assert again.total == 0, again.counts
        assert again.runs_seen == 5

        back = tmp_path / "laptop"
        returned = cairn.sync(pg_url, str(back), progress=False)
        assert returned.runs_created == 5
    assert snapshot(f"sqlite:///{back / 'cairn.db'}") == expected
    assert all(
        uri.startswith(str(back / "artifacts")) for uri in artifact_uris(f"sqlite:///{back / 'cairn.db'}").values()
    )

    # runs:/ and models:/ URIs resolve at the copy, to the copy's files
    config.set_tracking_uri(str(back))
    model = cairn.pyfunc.load_model("models:/clf@champion", allow_pickle=True)
    assert str(model.model_dir).startswith(str(back))
    expected_labels = (source.features[:, 0] > 0.5).astype(int)
    assert (np.asarray(model.predict(source.features)) == expected_labels).mean() > 0.8
    by_run = cairn.pyfunc.load_model(f"runs:/{source.model_run}/model", allow_pickle=True)
    np.testing.assert_array_equal(by_run.predict(source.features), model.predict(source.features))
