"""MLflow's own framework integrations logging into ``cairn server``; cairn's Client reads what they logged.

transformers' ``MLflowCallback`` (``TrainingArguments(report_to="mlflow")``, configured through the
``MLFLOW_*``/``HF_MLFLOW_*`` environment as its users do) and Lightning's ``MLFlowLogger(tracking_uri=...)``
train for real (a tiny BERT built from a config with a ``tokenizers`` tokenizer; a tiny LightningModule) and
send params, per-step metrics, tags, checkpoint artifacts and checkpoint models over HTTP with the real mlflow
client. Nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cairn.tracking.client import Client
from cairn.tracking.entities import RunStatus
from tests.server.conftest import RunningServer


@pytest.fixture(autouse=True)
def _one_thread_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Offline, one torch thread, and the ``MLFLOW_*`` environment as it was: ``mlflow.set_experiment``
    (called by transformers' callback) writes ``MLFLOW_EXPERIMENT_ID`` into ``os.environ``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    before = {key: value for key, value in os.environ.items() if key.startswith("MLFLOW_")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for key in [key for key in os.environ if key.startswith("MLFLOW_") and key not in before]:
            del os.environ[key]
        os.environ.update(before)
        gc.collect()


def _files(client: Client, run_id: str, path: str | None = None) -> set[str]:
    """Every file path under ``path`` in the run's artifacts (recursively)."""
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            found |= _files(client, run_id, info.path)
        else:
            found.add(info.path)
    return found


# -- transformers: MLflowCallback --------------------------------------------------------------------------


def test_transformers_mlflow_callback_logs_into_cairn_server(
    mlflow_tracking: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    from tests.autolog.test_transformers_autolog import make_trainer
    from tests.flavors.test_transformers import SENTENCES, make_tokenizer

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf-callback")
    monkeypatch.setenv("MLFLOW_TAGS", json.dumps({"team": "nlp", "release.candidate": "RC1"}))
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "1")  # each checkpoint-N/ logged as a pyfunc model
    monkeypatch.delenv("MLFLOW_NESTED_RUN", raising=False)
    monkeypatch.delenv("MLFLOW_FLATTEN_PARAMS", raising=False)
    monkeypatch.delenv("DISABLE_MLFLOW_INTEGRATION", raising=False)
    tokenizer = make_tokenizer()
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(16)]
    encoded = tokenizer(texts, padding="max_length", max_length=10, truncation=True)
    rows = [
        {
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "attention_mask": torch.tensor(encoded["attention_mask"][i]),
            "labels": torch.tensor(i % 2),
        }
        for i in range(len(texts))
    ]
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", report_to="mlflow", run_name="bert-tiny")
    from transformers.integrations import MLflowCallback

    assert any(isinstance(cb, MLflowCallback) for cb in trainer.callback_handler.callbacks)
    trainer.train()

    client = mlflow_tracking.client
    experiment = client.get_experiment_by_name("hf-callback")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id]).items
    assert run.info.status == RunStatus.FINISHED and run.info.run_name == "bert-tiny"
    # params: the TrainingArguments and the model config
    assert run.data.params["learning_rate"] == str(trainer.args.learning_rate)
    assert run.data.params["max_steps"] == "4" and run.data.params["hidden_size"] == "32"
    assert run.data.tags["team"] == "nlp" and run.data.tags["release.candidate"] == "RC1"
    # metrics: the loss at every logging step, the train summary at the end
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    assert [m.value for m in losses] == pytest.approx(
        [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    )
    assert "train_runtime" in run.data.metrics and "learning_rate" in run.data.metrics
    # models: each checkpoint-N/ logged as an MLflow 3 logged model of the run, files under the artifact root
    records = {
        key.removeprefix("cairn.logged-model."): json.loads(value)
        for key, value in run.data.tags.items()
        if key.startswith("cairn.logged-model.")
    }
    models = _logged_models(mlflow_tracking, experiment.experiment_id)
    assert sorted(m["name"] for m in models) == ["checkpoint-2", "checkpoint-4"]
    assert {m["model_id"] for m in models} == set(records)
    for model in models:
        assert model["source_run_id"] == run.info.run_id and model["status"] == "READY"
        stored = Path(mlflow_tracking.artifact_root).joinpath(*_relative(model["artifact_uri"]))
        assert (stored / "MLmodel").is_file()
        state = json.loads((stored / "artifacts" / model["name"] / "trainer_state.json").read_text())
        assert state["global_step"] == int(model["name"].split("-")[1])


def _logged_models(server: RunningServer, experiment_id: str) -> list[dict[str, Any]]:
    """The experiment's MLflow 3 logged models, as the mlflow client sees them."""
    from mlflow import MlflowClient

    found = MlflowClient(server.url).search_logged_models(experiment_ids=[experiment_id])
    return [
        {
            "name": m.name,
            "model_id": m.model_id,
            "source_run_id": m.source_run_id,
            "status": str(m.status).removeprefix("LoggedModelStatus."),
            "artifact_uri": m.artifact_location,
        }
        for m in found
    ]


def _relative(artifact_uri: str) -> list[str]:
    """The parts of an ``mlflow-artifacts:/...`` location below the server's artifact root."""
    assert artifact_uri.startswith("mlflow-artifacts:"), artifact_uri
    return [part for part in artifact_uri.split(":", 1)[1].split("/") if part]


# -- Lightning: MLFlowLogger -------------------------------------------------------------------------------


def test_lightning_mlflow_logger_logs_into_cairn_server(mlflow_tracking: RunningServer, tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    from tests.autolog.test_lightning import TinyModule, _loaders, _trainer

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logger = MLFlowLogger(
        experiment_name="lightning-logger",
        run_name="tiny",
        tracking_uri=mlflow_tracking.url,
        tags={"team": "vision"},
        log_model=True,
    )
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    trainer = _trainer(tmp_path, logger=logger, callbacks=[checkpoints], max_epochs=2)
    train, val = _loaders(n=16, batch=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(TinyModule(hidden=8, lr=0.05), train, val)

    client = mlflow_tracking.client
    run = client.get_run(logger.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "lightning-logger"
    assert run.info.status == RunStatus.FINISHED and run.info.run_name == "tiny"
    assert run.data.tags["team"] == "vision"
    assert run.data.params["hidden"] == "8" and run.data.params["lr"] == "0.05"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss_step")]
    assert steps == list(range(8))  # 4 batches x 2 epochs, logged at every step
    epoch_losses = client.get_metric_history(run.info.run_id, "train_loss_epoch")
    assert [m.step for m in epoch_losses] == [3, 7]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    # log_model=True: the best checkpoint is uploaded when training ends, with its metadata
    best = Path(checkpoints.best_model_path)
    files = _files(client, run.info.run_id)
    assert {f"{best.stem}/{best.name}", f"{best.stem}/metadata.yaml", f"{best.stem}/aliases.txt"} <= files
    downloaded = client.download_artifacts(run.info.run_id, f"{best.stem}/{best.name}", str(tmp_path / "back"))
    assert Path(downloaded).read_bytes() == best.read_bytes()


def test_lightning_mlflow_logger_continues_a_run_cairn_started_and_marks_a_failed_fit(
    mlflow_tracking: RunningServer, tmp_path: Path
) -> None:
    pytest.importorskip("lightning")
    from lightning.pytorch.loggers import MLFlowLogger

    from tests.autolog.test_lightning import TinyModule, _loaders, _trainer

    remote = Client(mlflow_tracking.url)  # cairn's HTTP client store, talking to the same server
    try:
        experiment_id = remote.create_experiment("shared")
        started = remote.create_run(experiment_id, run_name="from-cairn", tags={"owner": "cairn"})
        remote.log_param(started.info.run_id, "dataset", "v3")
        remote.flush()
    finally:
        remote.store.close()
    logger = MLFlowLogger(tracking_uri=mlflow_tracking.url, run_id=started.info.run_id, synchronous=False)
    trainer = _trainer(tmp_path, logger=logger, max_epochs=2, enable_checkpointing=False)
    train, val = _loaders(n=16, batch=4)
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="boom"):
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(TinyModule(hidden=8, fail_at=3), train, val)

    client = mlflow_tracking.client
    run = client.get_run(started.info.run_id)
    assert run.info.status == RunStatus.FAILED and run.info.experiment_id == experiment_id
    assert run.data.tags["owner"] == "cairn" and run.data.params["dataset"] == "v3" and run.data.params["hidden"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss_step")] == [0, 1, 2]


def test_transformers_mlflow_callback_continues_a_run_by_mlflow_run_id(
    mlflow_tracking: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    from tests.autolog.test_transformers_autolog import make_trainer
    from tests.flavors.test_transformers import SENTENCES, make_tokenizer

    client = mlflow_tracking.client
    started = client.create_run(client.create_experiment("nlp"), run_name="prepared-by-cairn")
    client.log_metric(started.info.run_id, "data_rows", 8, step=0)
    client.flush()
    monkeypatch.setenv("MLFLOW_RUN_ID", started.info.run_id)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_TAGS", "HF_MLFLOW_LOG_ARTIFACTS", "MLFLOW_NESTED_RUN"):
        monkeypatch.delenv(name, raising=False)
    tokenizer = make_tokenizer()
    encoded = tokenizer(SENTENCES[:8], padding="max_length", max_length=10, truncation=True)
    rows = [
        {
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "attention_mask": torch.tensor(encoded["attention_mask"][i]),
            "labels": torch.tensor(i % 2),
        }
        for i in range(len(encoded["input_ids"]))
    ]
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", report_to="mlflow", max_steps=2, save_steps=10)
    trainer.train()

    run = client.get_run(started.info.run_id)
    assert run.info.status == RunStatus.FINISHED and run.info.run_name == "prepared-by-cairn"
    assert run.data.params["max_steps"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "data_rows")] == [8]
    assert len(client.search_runs([run.info.experiment_id]).items) == 1  # continued, not a second run
