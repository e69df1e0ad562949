"""Every script in examples/ (and scripts/demo.sh) runs, at its small size, into a temporary store; what it
claims is then read back from that store (and, where cheap, checked independently)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[torch]')")

import cairn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(script: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run examples/``script`` at its small size; its output (stdout and stderr). Fails on a non-zero exit."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    clean.update(
        CAIRN_EXAMPLE_SMALL="1",
        CAIRN_CACHE_DIR=str(tmp_path / ".cairn-cache"),
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
        **(env or {}),
    )
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert not (tmp_path / "cairn-runs").exists(), "the example ignored the store it was given"
    return result.stdout


def only_run(client: cairn.Client, experiment: str) -> Any:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id]).items
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def artifact_paths(client: cairn.Client, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def train_in_process(out: Path, store: Path, *, epochs: int) -> dict[str, Any]:
    """examples/pytorch_resume.py's ``train`` run here (as a user's script would), global state put back."""
    import importlib.util

    import torch
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("pytorch_resume_example", EXAMPLES / "pytorch_resume.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    cairn.set_tracking_uri(str(store))
    try:
        module.train(out, epochs, False)
    finally:
        cairn.pytorch.autolog(disable=True)
        torch.set_num_threads(threads)
    return load_file(str(out / "final.safetensors"))


def test_quickstart_logs_into_the_store_of_its_environment(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    out = run_example("quickstart.py", tmp_path, env={"CAIRN_TRACKING_URI": str(store)})
    run = only_run(cairn.Client(str(store)), "quickstart")
    assert run.info.run_id in out
    assert run.info.status.value == "FINISHED"
    assert run.data.metrics["epoch_mse"] < 0.05


def test_sklearn_grid_search_has_a_parent_run_and_child_runs(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    out = run_example("sklearn_grid_search.py", tmp_path, "--store", str(store))
    client = cairn.Client(str(store))
    runs = client.search_runs([client.get_experiment_by_name("sklearn-grid-search").experiment_id]).items
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 == len(runs) - 1  # max_tuning_runs=3 of the 4 candidates of the small grid
    assert parent.data.metrics["test_accuracy"] > 0.9
    assert "best_cv_score" in parent.data.metrics
    assert {"model", "best_estimator", "cv_results.csv"} <= artifact_paths(client, parent.info.run_id)
    assert f"grid search run {parent.info.run_id}" in out


def test_onnx_conversion_logs_two_checked_onnx_models(tmp_path: Path) -> None:
    import onnxruntime

    store = tmp_path / "runs"
    run_example("onnx_conversion.py", tmp_path, "--store", str(store))
    client = cairn.Client(str(store))
    run = only_run(client, "onnx-conversion")
    assert {"torch_mlp", "sklearn_pipeline"} <= artifact_paths(client, run.info.run_id)
    local = Path(client.download_artifacts(run.info.run_id, "torch_mlp", str(tmp_path / "dl")))
    [onnx_file] = list(local.rglob("*.onnx"))
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    [output] = session.run(None, {session.get_inputs()[0].name: np.ones((2, 4), dtype=np.float32)})
    assert output.shape == (2, 3)


def test_lightning_autolog_logs_a_fit_and_its_model(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    run_example("lightning_autolog.py", tmp_path, "--store", str(store))
    client = cairn.Client(str(store))
    run = only_run(client, "lightning")
    assert run.info.status.value == "FINISHED"
    assert run.data.params["hidden"] == "16"
    assert client.get_metric_history(run.info.run_id, "train_loss")
    assert "val_loss" in run.data.metrics
    assert {"model", "lightning_checkpoints"} <= artifact_paths(client, run.info.run_id)
    cairn.set_tracking_uri(str(store))
    predictor = cairn.pyfunc.load_model(f"runs:/{run.info.run_id}/model")  # no pickle: an exported program
    assert predictor.predict(np.zeros((3, 4), dtype=np.float32)).shape == (3, 1)


def test_transformers_trainer_logs_a_tiny_bert(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    out = run_example("transformers_trainer.py", tmp_path, "--store", str(store))
    client = cairn.Client(str(store))
    run = only_run(client, "transformers")
    assert run.info.status.value == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4, 6]
    assert run.data.params["hidden_size"] == "32"
    assert {"model", "checkpoints"} <= artifact_paths(client, run.info.run_id)
    assert re.search(r"0\s+(positive|negative)\s+0\.\d+", out), out[-2000:]


def test_registry_workflow_points_champion_at_the_best_version(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    run_example("registry_workflow.py", tmp_path, "--store", str(store))
    client = cairn.Client(str(store))
    champion = client.get_model_version_by_alias("wine-classifier", "champion")
    versions = {v.version: v for v in client.search_model_versions("name = 'wine-classifier'")}
    assert set(versions) == {"1", "2"}
    accuracy = {v: client.get_run(mv.run_id).data.metrics["test_accuracy"] for v, mv in versions.items() if mv.run_id}
    assert champion.version == max(accuracy, key=lambda v: accuracy[v])
    assert champion.current_stage == "Production"
    assert client.get_latest_versions("wine-classifier", ["Production"])[0].version == champion.version


def test_team_server_logs_over_http_into_the_servers_store(tmp_path: Path) -> None:
    store = tmp_path / "team"
    out = run_example("team_server.py", tmp_path, "--store", str(store))
    assert "server stopped" in out
    client = cairn.Client(str(store))  # the server's store, read directly once the server is gone
    run = only_run(client, "team-server")
    assert run.info.status.value == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 20
    assert {"labels.json", "model"} <= artifact_paths(client, run.info.run_id)
    assert re.search(r"http://127\.0\.0\.1:\d+", out)


def test_demo_sh_kills_resumes_and_registers_into_the_store_it_is_given(tmp_path: Path) -> None:
    """scripts/demo.sh on this venv (nothing installed) runs examples/pytorch_resume.py; the store then shows
    one run resumed in place and a champion whose weights equal those of a separately trained run."""
    import torch
    from safetensors.torch import load_file

    store = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    env.update(
        CAIRN_VENV=sys.prefix,
        CAIRN_TRACKING_URI=str(store),
        CAIRN_EXAMPLE_SMALL="1",
        CAIRN_CACHE_DIR=str(tmp_path / ".cairn-cache"),
    )
    before = (ROOT / "cairn-runs").exists()
    result = subprocess.run([str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out[-6000:] + result.stderr[-3000:]
    assert (ROOT / "cairn-runs").exists() == before, "demo.sh wrote into ./cairn-runs instead of its store"
    assert "installing" not in out  # an existing venv with everything is used as it is
    assert "weights identical to an uninterrupted run (torch.equal on 4 tensors): True" in out
    assert "kill -9 after step 18 (epoch 1, batch 18 of 25)" in out  # paced: a known point, mid-epoch
    assert "resumed at step 15 (epoch 1)" in out
    assert f"cairn --store {store} models serve -m models:/demo-mlp@champion" in out
    assert f"cairn --store {store} ui" in out

    client = cairn.Client(str(store))
    run = only_run(client, "pytorch-resume")
    run_id = run.info.run_id
    assert run.info.status.value == "FINISHED"
    assert f"same run: True ({run_id}, FINISHED)" in out
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 51))
    assert [c.step for c in cairn.pytorch.list_run_checkpoints(run_id, client=client)][-1] >= 15
    champion = client.get_model_version_by_alias("demo-mlp", "champion")
    assert champion.run_id == run_id

    # independently: the demo's training function, uninterrupted, in this process, into another store
    expected = train_in_process(tmp_path / "reference", tmp_path / "ref-store", epochs=2)
    model_dir = Path(client.download_artifacts(run_id, "model", str(tmp_path / "champion")))
    [weights_file] = list(model_dir.rglob("model.safetensors"))
    logged = load_file(str(weights_file))
    assert len(expected) == 4
    for key, tensor in expected.items():
        [match] = [v for k, v in logged.items() if k.endswith(key)]
        assert torch.equal(match, tensor), key
    cairn.set_tracking_uri(str(store))
    predictor = cairn.pyfunc.load_model("models:/demo-mlp@champion")
    assert predictor.predict(np.zeros((2, 8), dtype=np.float32)).shape == (2, 3)
