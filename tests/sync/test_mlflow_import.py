"""cairn.import_mlflow on a store written by the real mlflow package (the ``interop`` extra).

Without mlflow these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import cairn.pyfunc
import cairn.sync
from cairn.artifacts import get_artifact_store
from cairn.errors import NotFound
from cairn.store._sql.registry import SqlRegistryStore
from cairn.sync.cli import import_mlflow_command
from cairn.sync.mlflow_import import mlflow_tracking_uri
from cairn.tracking import config
from tests.sync.conftest import open_store

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def mlflow() -> ModuleType:
    try:
        import mlflow
        import mlflow.sklearn
    except ImportError as exc:
        reason = f"mlflow is not installed (pip install 'cairn[interop]'): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the interop tests to run: {reason}")
        pytest.skip(reason)
    pytest.importorskip("sklearn")
    return mlflow


def _value(value: float) -> str:
    return repr(float(value))


def _make_mlflow_store(mlflow: ModuleType, root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An ./mlruns store: nested runs, metrics with steps, artifacts, a dataset input, a deleted run,
    a logged sklearn model registered as 'clf' version 1 with an alias, a stage and tags."""
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    uri = root.resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("mlexp", tags={"project": "churn"})
    parent = client.create_run(experiment, run_name="parent", tags={"owner": "ada"}, start_time=T0).info.run_id
    client.log_param(parent, "lr", "0.1")
    for step in range(20):
        client.log_metric(parent, "loss", 1.0 / (step + 1), timestamp=T0 + step, step=step)
    client.log_metric(parent, "loss", math.nan, timestamp=T0 + 20, step=20)
    client.log_metric(parent, "edge", math.inf, timestamp=T0, step=0)
    client.log_text(parent, "hello mlflow", "notes/hello.txt")
    client.log_dict(parent, {"depth": 3}, "config/params.json")
    child = client.create_run(
        experiment, run_name="child", tags={"mlflow.parentRunId": parent}, start_time=T0 + 5
    ).info.run_id
    client.log_metric(child, "acc", 0.75, timestamp=T0 + 6, step=1)
    client.set_terminated(child, "FAILED", end_time=T0 + 9)
    gone = client.create_run(experiment, run_name="gone", start_time=T0 + 7).info.run_id
    client.set_terminated(gone, "KILLED", end_time=T0 + 8)
    client.delete_run(gone)

    features = np.random.RandomState(1).rand(30, 3)
    labels = (features[:, 1] > 0.5).astype(int)
    model = LogisticRegression().fit(features, labels)
    with mlflow.start_run(run_id=parent):
        mlflow.log_input(mlflow.data.from_numpy(features, targets=labels, name="train-set"), context="training")
        mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name="clf",
            pip_requirements=["scikit-learn"],
            serialization_format="cloudpickle",
        )
    client.set_registered_model_alias("clf", "champion", "1")
    client.transition_model_version_stage("clf", "1", "Staging")
    client.set_model_version_tag("clf", "1", "validated", "yes")
    client.update_registered_model("clf", description="churn classifier")
    client.set_registered_model_tag("clf", "domain", "churn")
    return {
        "uri": uri,
        "client": client,
        "runs": [parent, child, gone],
        "parent": parent,
        "model": model,
        "features": features,
    }


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_import_mlflow_store(mlflow: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _make_mlflow_store(mlflow, tmp_path / "mlruns", monkeypatch)
    client = made["client"]
    dest_home = tmp_path / "cairn-home"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the import must not depend on MLflow's environment

    report = cairn.sync.import_mlflow(str(tmp_path / "mlruns"), str(dest_home), progress=False)
    assert report.runs_created == 3 and report.experiments == 1 and report.skipped == []
    assert report.logged_models == 1 and report.model_versions == 1 and report.aliases == 1
    notes = [str(note) for note in report.unrepresented]
    assert any("dataset input(s) (train-set)" in note for note in notes), notes
    assert any("imported as files at runs:/" in note for note in notes)
    assert not (tmp_path / "mlflow.db").exists()  # MLflow's defaults pointed at the source, not ./mlflow.db

    store = open_store(f"sqlite:///{dest_home / 'cairn.db'}", str(dest_home / "artifacts"))
    registry = SqlRegistryStore.from_tracking_store(store)
    try:
        for run_id in made["runs"]:
            theirs, ours = client.get_run(run_id), store.get_run(run_id)
            assert ours.info.run_name == theirs.info.run_name
            assert ours.info.status.value == theirs.info.status
            assert (ours.info.start_time, ours.info.end_time) == (theirs.info.start_time, theirs.info.end_time)
            assert ours.info.lifecycle_stage.value == theirs.info.lifecycle_stage
            assert ours.data.params == theirs.data.params
            assert ours.data.tags == theirs.data.tags
            assert ours.info.artifact_uri.startswith(str(dest_home / "artifacts"))
            for key in theirs.data.metrics:
                mine = [(p.step, p.timestamp, _value(p.value)) for p in store.get_metric_points(run_id, [key])]
                history = [(m.step, m.timestamp, _value(m.value)) for m in client.get_metric_history(run_id, key)]
                assert sorted(mine) == sorted(history)
        assert store.get_run(made["runs"][1]).data.tags["mlflow.parentRunId"] == made["parent"]

        files = get_artifact_store(store.get_run(made["parent"]).info.artifact_uri)
        assert files.open("notes/hello.txt").read() == b"hello mlflow"
        assert files.exists("model/MLmodel")

        version = registry.get_model_version("clf", 1)
        assert version.source == f"{store.get_run(made['parent']).info.artifact_uri}/model"
        assert (version.current_stage, version.tags, version.aliases) == ("Staging", {"validated": "yes"}, ["champion"])
        model = registry.get_registered_model("clf")
        assert (model.description, model.tags) == ("churn classifier", {"domain": "churn"})
    finally:
        store.close()

    config.set_tracking_uri(str(dest_home))
    loaded = cairn.pyfunc.load_model("models:/clf@champion", allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict(made["features"]), made["model"].predict(made["features"]))
    config.set_tracking_uri(None)

    again = cairn.sync.import_mlflow(str(tmp_path / "mlruns"), str(dest_home), progress=False)
    assert again.total == 0, again.counts

    result = CliRunner().invoke(
        import_mlflow_command,
        ["--from", made["uri"], "--to", str(tmp_path / "elsewhere"), "--dry-run", "-e", "mlexp"],
        obj={},
    )
    assert result.exit_code == 0, result.output
    assert "Would copy" in result.output and "dataset input(s)" in result.output
    assert not (tmp_path / "elsewhere").exists()


def test_mlflow_uri_forms(tmp_path: Path) -> None:
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlflow.db").write_bytes(b"")
    assert mlflow_tracking_uri(tmp_path / "mlruns") == (tmp_path / "mlruns").resolve().as_uri()
    assert mlflow_tracking_uri(str(tmp_path / "mlflow.db")) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert mlflow_tracking_uri("http://mlflow.example:5000") == "http://mlflow.example:5000"
    assert mlflow_tracking_uri("postgresql://u@h/db").startswith("postgresql+psycopg://") or _has_psycopg2()
    with pytest.raises(NotFound, match="does not exist"):
        mlflow_tracking_uri(tmp_path / "missing")
    with pytest.raises(NotFound):
        mlflow_tracking_uri(f"sqlite:///{tmp_path / 'missing.db'}")


def _has_psycopg2() -> bool:
    import importlib.util

    return importlib.util.find_spec("psycopg2") is not None
