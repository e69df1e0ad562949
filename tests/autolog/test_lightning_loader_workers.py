"""Mid-epoch resume of a training ``DataLoader`` with worker processes, and the limits that are reported.

Lightning creates the epoch's iterator in ``FitLoop.setup_data``, before any callback hook can reach the
DataLoader; with ``num_workers > 0`` that iterator's workers prefetch indices at once. With
``persistent_workers=True`` the iterator is the loader's own and ``iter(loader)`` restarts it, so the resumed
epoch is bit-identical; without, the reason is named in a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'cairn[lightning]')")

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

import cairn.lightning
from cairn.autolog import lightning as integration
from cairn.checkpoint.resume import ResumeWarning
from tests.autolog.test_lightning import TinyModule, _data, _quiet, _trainer

__all__ = ["_quiet"]  # the autouse fixture of test_lightning


class Noisy(Dataset[Any]):
    """Adds torch noise in ``__getitem__``: drawn inside the worker processes."""

    def __init__(self) -> None:
        self.data = _data(36)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        x, y = self.data[index]
        return x + 0.01 * torch.randn(x.shape), y


class TwoLoaders(TinyModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch["a"], batch_idx) + super().training_step(batch["b"], batch_idx)


def _callback(**options: Any) -> Any:
    return cairn.lightning.CairnCheckpointCallback(log_model=False, upload_checkpoints=False, **options)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _workers(dataset: Any = None, **options: Any) -> DataLoader[Any]:
    data = _data(36) if dataset is None else dataset
    return DataLoader(data, batch_size=4, shuffle=True, num_workers=2, **options)  # 9 batches per epoch


@pytest.mark.parametrize(
    "checkpoint",
    [
        "epoch=0-step=4.ckpt",  # the first epoch's workers were started (and shuffled) before any callback hook
        "epoch=1-step=12.ckpt",  # a later epoch restarts the persistent iterator after on_train_epoch_start
    ],
)
def test_a_mid_epoch_resume_with_persistent_workers_is_bit_identical(tmp_path: Path, checkpoint: str) -> None:
    def fit(ckpt_path: str | None, callbacks: list[Any]) -> dict[str, torch.Tensor]:
        L.seed_everything(11)
        module = TinyModule()
        trainer = _trainer(tmp_path, logger=False, max_epochs=3, callbacks=callbacks)
        trainer.fit(module, _workers(persistent_workers=True), ckpt_path=ckpt_path)
        return _weights(module)

    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    reference = fit(None, [_callback(), every])
    middle = tmp_path / "ckpt" / checkpoint
    assert torch.load(middle, weights_only=True)[integration.LOADERS_KEY][0]["epoch_finished"] is False
    with pytest.warns(ResumeWarning, match="random numbers drawn inside its worker processes"):
        resumed = fit(str(middle), [_callback()])
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name
    # without the replayed epoch the remaining batches differ
    rng_only = fit(str(middle), [_callback(resumable_dataloaders=False)])
    assert any(not torch.equal(rng_only[name], tensor) for name, tensor in reference.items())


def test_workers_that_are_not_persistent_are_reported_with_the_way_out(tmp_path: Path) -> None:
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[_callback(), every]).fit(TinyModule(), _workers())
    again = _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[_callback()])
    with pytest.warns(UserWarning, match="cannot continue its epoch exactly.*persistent_workers=True"):
        again.fit(TinyModule(), _workers(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))


def test_random_numbers_drawn_in_workers_are_reported_as_not_replayed(tmp_path: Path) -> None:
    def fit(ckpt_path: str | None, callbacks: list[Any]) -> dict[str, torch.Tensor]:
        L.seed_everything(5)
        module = TinyModule()
        trainer = _trainer(tmp_path, logger=False, max_epochs=2, callbacks=callbacks)
        trainer.fit(module, _workers(Noisy(), persistent_workers=True), ckpt_path=ckpt_path)
        return _weights(module)

    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    reference = fit(None, [_callback(), every])
    with pytest.warns(ResumeWarning, match=r"random numbers drawn inside its worker processes \(e\.g\. augmentations"):
        resumed = fit(str(tmp_path / "ckpt" / "epoch=1-step=12.ckpt"), [_callback()])
    # what the warning says: the same samples in the same order, but not the same noise on them
    assert any(not torch.equal(resumed[name], tensor) for name, tensor in reference.items())


def test_several_training_loaders_are_reported(tmp_path: Path) -> None:
    def loaders() -> dict[str, DataLoader[Any]]:
        return {"a": DataLoader(_data(36), batch_size=4, shuffle=True), "b": DataLoader(_data(36, 1), batch_size=4)}

    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[_callback(), every]).fit(TwoLoaders(), loaders())
    state = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=True)[integration.LOADERS_KEY]
    assert state[0]["batch_in_epoch"] == 4
    again = _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[_callback()])
    with pytest.warns(UserWarning, match="cannot continue its epoch exactly.*2 training DataLoaders"):
        again.fit(TwoLoaders(), loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))


class DrawsInTrainDataloader(TinyModule):
    """Makes its loader in ``train_dataloader()`` after drawing a random number (between on_fit_start and iter())."""

    def train_dataloader(self) -> DataLoader[Any]:
        torch.rand(1)
        return _workers(persistent_workers=True)


def test_a_first_epoch_whose_start_cannot_be_known_is_reported(tmp_path: Path) -> None:
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    trainer = _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[_callback(), every])
    trainer.fit(DrawsInTrainDataloader())
    state = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=True)[integration.LOADERS_KEY][0]
    assert "between on_fit_start and the loader's first iterator" in state["unsupported"]
    again = _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[_callback()])
    with pytest.warns(ResumeWarning, match="cannot continue its epoch exactly.*between on_fit_start"):
        again.fit(DrawsInTrainDataloader(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
