"""capture_training_state / restore_training_state: everything comes back, bit for bit, without pickle."""

from __future__ import annotations

import copy
import pickle
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cairn.checkpoint import (
    ResumableLoader,
    capture_training_state,
    load_component,
    restore_training_state,
    write_checkpoint,
)
from cairn.errors import CheckpointCorrupt, InvalidArgument, StateMismatch
from tests.checkpoint._helpers import TinyNet, assert_tree_identical, train_steps, weights_equal


def make_objects(seed: int) -> tuple[nn.Module, Any, Any, Any]:
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    return model, optimizer, scheduler, scaler


def test_round_trip_of_everything(tmp_path: Path) -> None:
    model, optimizer, scheduler, scaler = make_objects(0)
    train_steps(model, optimizer, 3, scheduler)
    scaler.scale(torch.ones(1))  # initialises the scale
    scaler.update(128.0)
    extra = {"best": float("inf"), "history": [0.5, 0.25], "ema": torch.ones(2), "np": np.arange(3)}
    state = capture_training_state(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        step=3,
        epoch=1,
        batch_in_epoch=2,
        extra=extra,
        run_id="run-1",
        metrics={"val_loss": 0.5},
    )
    info = write_checkpoint(state, tmp_path / "checkpoints")
    assert info.name == "step-3" and info.metrics == {"val_loss": 0.5} and info.run_id == "run-1"
    expected_draws = (random.random(), np.random.rand(), torch.rand(2).tolist())

    model2, optimizer2, scheduler2, scaler2 = make_objects(1)
    restored = restore_training_state(
        info.path, model=model2, optimizer=optimizer2, scheduler=scheduler2, scaler=scaler2
    )
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == expected_draws
    assert (restored.step, restored.epoch, restored.batch_in_epoch, restored.run_id) == (3, 1, 2, "run-1")
    assert restored.metrics == {"val_loss": 0.5} and restored.path == info.path
    assert_tree_identical(restored.extra, extra)
    assert_tree_identical(model2.state_dict(), model.state_dict())
    assert_tree_identical(optimizer2.state_dict(), optimizer.state_dict())
    assert_tree_identical(scheduler2.state_dict(), scheduler.state_dict())
    assert scaler2.state_dict() == scaler.state_dict() and scaler2.get_scale() == 128.0
    assert_tree_identical(load_component(info.path, "model"), model.state_dict())


def test_snapshot_is_taken_at_capture_time(tmp_path: Path) -> None:
    model, optimizer, _, _ = make_objects(0)
    state = capture_training_state(model=model, optimizer=optimizer, step=0, epoch=0)
    before = copy.deepcopy(model.state_dict())
    train_steps(model, optimizer, 2)  # training goes on before the write happens
    info = write_checkpoint(state, tmp_path)
    assert_tree_identical(load_component(info.path, "model"), before)


def test_wrapped_model_is_saved_unwrapped(tmp_path: Path) -> None:
    model, _, _, _ = make_objects(0)
    info = write_checkpoint(capture_training_state(model=nn.DataParallel(model), step=1, epoch=0), tmp_path)
    assert set(load_component(info.path, "model")) == set(model.state_dict())
    plain = TinyNet()
    restore_training_state(info.path, model=plain)
    assert weights_equal(plain, model)
    wrapped = nn.DataParallel(TinyNet())
    restore_training_state(info.path, model=wrapped)
    assert weights_equal(wrapped.module, model)


def test_several_optimizers(tmp_path: Path) -> None:
    model = TinyNet()
    opts = [torch.optim.SGD(model.fc1.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(model.fc2.parameters())]
    for opt in opts:
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        opt.step()
    info = write_checkpoint(capture_training_state(model=model, optimizer=opts, step=1, epoch=0), tmp_path)
    fresh = TinyNet()
    fresh_opts = [
        torch.optim.SGD(fresh.fc1.parameters(), lr=0.1, momentum=0.9),
        torch.optim.Adam(fresh.fc2.parameters()),
    ]
    restore_training_state(info.path, model=fresh, optimizer=fresh_opts)
    for a, b in zip(opts, fresh_opts, strict=True):
        assert_tree_identical(a.state_dict(), b.state_dict())
    with pytest.raises(StateMismatch, match="holds 2 optimizer state"):
        restore_training_state(info.path, optimizer=fresh_opts[0])
    swapped = [torch.optim.Adam(fresh.fc1.parameters()), torch.optim.SGD(fresh.fc2.parameters(), lr=0.1)]
    with pytest.raises(StateMismatch, match=r"optimizer\.0 .* was saved from torch\.optim\.sgd\.SGD, not .*Adam"):
        restore_training_state(info.path, optimizer=swapped)


class Wider(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)  # was 8
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(16, 3)  # was (8 -> 3)
        self.head = nn.Linear(3, 1)  # new


def test_shape_mismatch_lists_every_key_with_both_shapes(tmp_path: Path) -> None:
    info = write_checkpoint(capture_training_state(model=TinyNet(), step=1, epoch=0), tmp_path)
    target = Wider()
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(StateMismatch) as exc_info:
        restore_training_state(info.path, model=target)
    message = str(exc_info.value)
    assert "fc1.weight: saved (8, 4), model (16, 4)" in message
    assert "fc1.bias: saved (8,), model (16,)" in message
    assert "fc2.weight: saved (3, 8), model (3, 16)" in message
    assert "missing from the checkpoint (2):\n    head.weight\n    head.bias" in message
    assert "bn.weight" not in message  # keys that fit are not listed
    assert_tree_identical(target.state_dict(), before)  # nothing was half-loaded
    with pytest.raises(StateMismatch, match="shape mismatch"):  # shapes are checked even when not strict
        restore_training_state(info.path, model=target, strict=False)


def test_missing_and_unexpected_keys_strict_and_not(tmp_path: Path) -> None:
    saved = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    info = write_checkpoint(capture_training_state(model=saved, step=1, epoch=0), tmp_path)
    shorter = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(StateMismatch, match=r"in the checkpoint but not in the model \(2\):\n    1.weight\n    1.bias"):
        restore_training_state(info.path, model=shorter)
    restore_training_state(info.path, model=shorter, strict=False)
    assert torch.equal(shorter[0].weight, saved[0].weight)


def test_missing_component_and_meta_model(tmp_path: Path) -> None:
    info = write_checkpoint(capture_training_state(model=TinyNet(), step=1, epoch=0), tmp_path)
    optimizer = torch.optim.SGD(TinyNet().parameters(), lr=0.1)
    with pytest.raises(StateMismatch, match="holds no optimizer state"):
        restore_training_state(info.path, optimizer=optimizer)
    restore_training_state(info.path, optimizer=optimizer, strict=False)  # skipped
    with torch.device("meta"):
        meta_model = TinyNet()
    with pytest.raises(StateMismatch, match="'meta' device"):
        restore_training_state(info.path, model=meta_model)
    with pytest.raises(InvalidArgument, match=r"model\.fc1\.weight: tensor is on the 'meta' device"):
        capture_training_state(model=meta_model, step=1, epoch=0)


def test_damaged_checkpoint_is_refused_before_anything_is_loaded(tmp_path: Path) -> None:
    model = TinyNet()
    info = write_checkpoint(capture_training_state(model=model, step=1, epoch=0), tmp_path)
    (info.path / "manifest.json").unlink()
    target = TinyNet()
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(CheckpointCorrupt, match=r"no manifest\.json"):
        restore_training_state(info.path, model=target)
    assert_tree_identical(target.state_dict(), before)


def test_restore_path_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, scheduler, scaler = make_objects(0)
    train_steps(model, optimizer, 2, scheduler)
    loader = ResumableLoader(DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, shuffle=True))
    next(iter(loader))
    state = capture_training_state(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        step=2,
        epoch=0,
        extra={"a": np.ones(2)},
        dataloader=loader,
    )
    info = write_checkpoint(state, tmp_path)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle/torch.load used on the restore path")

    for target, name in [
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
        (np, "load"),
    ]:
        monkeypatch.setattr(target, name, forbidden)
    unpickled: list[tuple[Any, ...]] = []
    auditing = [True]

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if auditing[0] and event == "pickle.find_class":  # any unpickling of a global raises this event
            unpickled.append(args)

    sys.addaudithook(audit)  # hooks cannot be removed; this one is switched off below
    try:
        model2, optimizer2, scheduler2, scaler2 = make_objects(1)
        loader2 = ResumableLoader(DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, shuffle=True))
        restore_training_state(
            info.path, model=model2, optimizer=optimizer2, scheduler=scheduler2, scaler=scaler2, dataloader=loader2
        )
        list(loader2)
    finally:
        auditing[0] = False
    assert unpickled == []
    assert weights_equal(model, model2)
