"""Exactly one integration drives a training loop: every pair of integrations in one process.

Plain-PyTorch autolog hooks every optimizer step in the process; while a Lightning fit or a Transformers
``Trainer`` driven by cairn's own integration runs, those hooks stand down for its loop: each metric key
has one point per step, the plain loop adds no ``lr``/``lr/group*`` keys, and ``checkpoints/`` holds one
format (Lightning ``.ckpt`` or HF ``checkpoint-N``, never also plain ``step-N``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("lightning", reason="lightning is not installed")

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import TrainerCallback

import cairn
import cairn.lightning
import cairn.transformers
from cairn.autolog import lightning as lightning_integration
from cairn.autolog import pytorch as plain
from cairn.autolog import transformers as transformers_integration
from cairn.autolog.base import loops
from cairn.errors import ArtifactNotFound
from tests.autolog.test_lightning import TinyModule, _trainer
from tests.autolog.test_transformers_autolog import make_trainer, rows, tokenizer  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def _every_integration_off_afterwards() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield
    plain.autolog(disable=True)
    lightning_integration.disable()
    transformers_integration.autolog(disable=True)
    torch.set_num_threads(threads)


def _keys_and_steps(run_id: str) -> dict[str, list[int]]:
    client = cairn.Client()
    keys = cairn.get_run(run_id).data.metrics
    return {key: [m.step for m in client.get_metric_history(run_id, key)] for key in keys}


def _assert_one_point_per_step(run_id: str) -> dict[str, list[int]]:
    history = _keys_and_steps(run_id)
    for key, steps in history.items():
        duplicated = sorted(s for s, n in Counter(steps).items() if n > 1)
        assert not duplicated, f"{key}: steps logged twice: {duplicated}"
    return history


def _checkpoint_entries(run_id: str) -> set[str]:
    try:
        return {Path(f.path).name for f in cairn.Client().list_artifacts(run_id, "checkpoints")}
    except ArtifactNotFound:
        return set()


def _lightning_fit(tmp_path: Path, callbacks: list[Any] | None = None) -> str:
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=callbacks)
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    trainer.fit(TinyModule(), DataLoader(data, batch_size=4))
    assert loops.driver_of(trainer.optimizers[0]) is None  # released when the fit ends
    (logger,) = [lg for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)]
    assert logger.run_id is not None
    return str(logger.run_id)


class _SeesTheTrainerDriver(TrainerCallback):
    def __init__(self) -> None:
        self.drivers: list[str | None] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.drivers.append(loops.driver_of(optimizer))


def _hf_train(tokenizer: Any, rows: Any, output_dir: Path) -> str:  # noqa: F811
    seen = _SeesTheTrainerDriver()
    trainer = make_trainer(
        tokenizer, rows, output_dir, callbacks=[seen], report_to="cairn", max_steps=4, logging_steps=2, save_steps=2
    )
    trainer.train()
    assert seen.drivers == ["transformers"] * 4  # the Trainer's optimizer is claimed while it trains
    assert loops.driver_of(trainer.optimizer) is None  # released at on_train_end
    (callback,) = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, cairn.transformers.CairnCallback)]
    assert callback.run_id is not None
    return str(callback.run_id)


class _SeesTheDriver(L.Callback):
    def __init__(self) -> None:
        self.drivers: list[str | None] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.drivers.append(loops.driver_of(trainer.optimizers[0]))


def test_plain_autolog_and_lightning(tmp_path: Path) -> None:
    plain.autolog(log_models=False, checkpoint_every_n_steps=2)
    seen = _SeesTheDriver()
    run_id = _lightning_fit(tmp_path, callbacks=[seen])
    assert seen.drivers == ["lightning"] * 4  # the fit's optimizer is claimed while it trains
    history = _assert_one_point_per_step(run_id)
    assert "train_loss_step" in history
    assert not any(key == "lr" or key.startswith("lr/") for key in history)
    assert not any(name.startswith("step-") for name in _checkpoint_entries(run_id))


def test_plain_autolog_and_transformers_trainer(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    plain.autolog(log_models=False, checkpoint_every_n_steps=2)
    run_id = _hf_train(tokenizer, rows, tmp_path / "out")
    history = _assert_one_point_per_step(run_id)
    assert history["loss"] == [2, 4]  # the Trainer's logging-step means, once
    assert not any(key == "lr" or key.startswith("lr/") for key in history), sorted(history)
    assert "optimizer_name" not in cairn.get_run(run_id).data.params
    assert _checkpoint_entries(run_id) == {"checkpoint-2", "checkpoint-4"}
    # After the Trainer, a plain loop in the same process is logged again by the plain hooks.
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with cairn.start_run() as run:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            optimizer.step()
    plain.drain_metrics()
    assert _keys_and_steps(run.info.run_id)["loss"] == [1, 2, 3]


def test_plain_autolog_then_trainer_inside_a_plain_session(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    """A plain loop's session is open in the active run when a Trainer trains into that run: the plain
    hooks ignore the Trainer's optimizer (no second optimizer's params or ``lr/opt1`` keys, no steps 4..7)."""
    plain.autolog(log_models=False)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with cairn.start_run() as run:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            optimizer.step()
        _hf_train(tokenizer, rows, tmp_path / "out")
    plain.drain_metrics()
    history = _keys_and_steps(run.info.run_id)
    assert history["lr"] == [1, 2, 3]  # the plain loop's steps only
    assert sorted(history["loss"]) == [1, 2, 2, 3, 4]  # plain 1..3, the Trainer's logging steps 2 and 4
    assert not any(key.startswith("lr/") for key in history), sorted(history)
    params = cairn.get_run(run.info.run_id).data.params
    assert not any(key.startswith("optimizer1.") for key in params), sorted(params)


def test_lightning_autolog_and_transformers_trainer(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    cairn.lightning.autolog(log_models=False, checkpoint_every_n_steps=2)
    run_id = _hf_train(tokenizer, rows, tmp_path / "out")
    history = _assert_one_point_per_step(run_id)
    assert history["loss"] == [2, 4]
    assert _checkpoint_entries(run_id) == {"checkpoint-2", "checkpoint-4"}
    lightning_run = _lightning_fit(tmp_path)
    assert lightning_run != run_id
    _assert_one_point_per_step(lightning_run)
    assert not any(name.startswith("checkpoint-") for name in _checkpoint_entries(lightning_run))


def test_every_integration_at_once(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    plain.autolog(log_models=False, checkpoint_every_n_steps=2)
    transformers_integration.autolog(log_models=False)
    hf_run = _hf_train(tokenizer, rows, tmp_path / "out")
    lightning_run = _lightning_fit(tmp_path)
    for run_id in (hf_run, lightning_run):
        history = _assert_one_point_per_step(run_id)
        assert not any(key == "lr" or key.startswith("lr/") for key in history), sorted(history)
    assert _checkpoint_entries(hf_run) == {"checkpoint-2", "checkpoint-4"}
    assert not any(name.startswith("step-") for name in _checkpoint_entries(lightning_run))
