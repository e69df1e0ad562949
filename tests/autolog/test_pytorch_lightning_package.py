"""The standalone ``pytorch_lightning`` package: autolog, CairnLogger and checkpoint upload, as with ``lightning``.

``pytorch_lightning`` ships the same Trainer under another package name; its Logger and Callback base
classes are distinct classes, so cairn builds its logger and callback on them separately.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytorch_lightning", reason="pytorch_lightning is not installed (pip install pytorch-lightning)")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'cairn[torch]')")

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import cairn
import cairn.lightning
from cairn.autolog import lightning as integration
from cairn.tracking.entities import RunStatus

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pytorch_lightning")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        yield
    integration.disable()
    integration._take_pending()


class PlainModule(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    return DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=16)


def _trainer(tmp_path: Path, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "default_root_dir": str(tmp_path / "pl"),
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def _cairn_logger(trainer: Any) -> Any:
    found = [lg for lg in trainer.loggers if isinstance(lg, integration._CairnLoggerImpl)]
    assert len(found) == 1, trainer.loggers
    return found[0]


def test_pytorch_autolog_covers_a_pytorch_lightning_trainer(tmp_path: Path) -> None:
    from cairn.autolog import pytorch as pytorch_autolog

    pytorch_autolog.autolog(log_models=True)
    try:
        trainer = _trainer(tmp_path, callbacks=[pl.callbacks.ModelCheckpoint(save_top_k=1, monitor="val_loss")])
        cairn_logger = _cairn_logger(trainer)
        assert isinstance(cairn_logger, pl.loggers.logger.Logger)  # the package's own base class
        trainer.fit(PlainModule(), *_loaders())
    finally:
        pytorch_autolog.autolog(disable=True)
    run_id = cairn_logger.run_id
    run = cairn.get_run(run_id)
    assert run.info.status is RunStatus.FINISHED
    assert run.data.params["lr"] == "0.05"
    history = cairn.Client().get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == list(range(16))  # the plain-loop hooks stayed out: one point per step
    assert [m.step for m in cairn.Client().get_metric_history(run_id, "val_loss")] == [7, 15]
    uploaded = cairn.Client().list_artifacts(run_id, integration.CHECKPOINTS_DIR)
    assert [Path(f.path).name for f in uploaded if f.path.endswith(".ckpt")] == ["epoch=1-step=16.ckpt"]
    assert any(f.path == "model" for f in cairn.list_artifacts(run_id=run_id))


def test_checkpoint_path_resumes_a_pytorch_lightning_fit_in_the_same_run(tmp_path: Path) -> None:
    pl.seed_everything(0)
    first = _trainer(
        tmp_path,
        max_epochs=1,
        logger=cairn.lightning.CairnLogger(),
        callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False)],
    )
    assert type(_cairn_logger(first)).__module__.startswith("cairn")
    first.fit(PlainModule(), *_loaders())
    run_id = _cairn_logger(first).run_id

    path = cairn.lightning.checkpoint_path(run_id, "last")
    again = _trainer(
        tmp_path,
        max_epochs=2,
        logger=cairn.lightning.CairnLogger(run_id=run_id),
        callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False)],
    )
    again.fit(PlainModule(), *_loaders(), ckpt_path=path)
    assert again.global_step == 16
    steps = [m.step for m in cairn.Client().get_metric_history(run_id, "train_loss")]
    assert steps == list(range(16))
