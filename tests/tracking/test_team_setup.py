"""The team deployment end to end: PostgreSQL for tracking, S3 (moto server) for artifacts."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import cairn
from tests.conftest import PgServer, S3Server


@pytest.fixture
def team_env(
    pg_server: PgServer, s3_server: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    with pg_server.new_database("cairn_team") as url:
        env = {
            "CAIRN_TRACKING_URI": url,
            "CAIRN_ARTIFACT_ROOT": f"s3://{s3_server.bucket}/team-{uuid.uuid4().hex[:8]}",
            "CAIRN_S3_ENDPOINT_URL": s3_server.endpoint_url,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield env
        from cairn.tracking import config

        config.reset()


def test_fluent_api_on_postgres_and_s3(team_env: dict[str, str], tmp_path: Path) -> None:
    cairn.set_experiment("team")
    with cairn.start_run(run_name="shared") as run:
        cairn.log_params({"lr": 0.01})
        for step in range(300):
            cairn.log_metric("loss", 1 / (step + 1), step=step)
        cairn.log_metric("nan_metric", float("nan"))
        cairn.log_dict({"ok": True}, "result.json")
        assert cairn.get_artifact_uri().startswith(team_env["CAIRN_ARTIFACT_ROOT"])
    stored = cairn.get_run(run.info.run_id)
    assert stored.info.status.value == "FINISHED"
    assert stored.info.artifact_uri.startswith("s3://")
    assert len(cairn.Client().get_metric_history(run.info.run_id, "loss")) == 300
    assert [f.path for f in cairn.list_artifacts(run_id=run.info.run_id)] == ["result.json"]
    local = cairn.download_artifacts("result.json", run_id=run.info.run_id, dst_path=tmp_path)
    assert Path(local).read_text().strip().startswith("{")
    found = cairn.search_runs(experiment_names=["team"], filter_string="metrics.loss < 0.01", output_format="list")
    assert [r.info.run_id for r in found] == [run.info.run_id]

    child = subprocess.run(
        [sys.executable, "-c", "import cairn; cairn.log_metric('from_child', 7.0); cairn.log_text('hi', 'child.txt')"],
        env={**os.environ, "CAIRN_RUN_ID": run.info.run_id},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert cairn.get_run(run.info.run_id).data.metrics["from_child"] == 7.0
    assert {f.path for f in cairn.list_artifacts(run_id=run.info.run_id)} == {"result.json", "child.txt"}
