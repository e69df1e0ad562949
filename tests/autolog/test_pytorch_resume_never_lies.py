"""Plain-PyTorch autolog: a requested resume restores (and says what) or warns/raises; it never silently restarts.

Each test trains a first "process" (autolog checkpoints every 5 steps, 12 steps, then autolog is turned off
as if the process died) and resumes it in the same interpreter the way a restarted script would.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[torch]')")

from torch import nn  # noqa: E402

import cairn  # noqa: E402
from cairn.autolog import pytorch as autolog_pytorch  # noqa: E402
from cairn.checkpoint import runs  # noqa: E402
from cairn.errors import CheckpointError  # noqa: E402
from tests.autolog.test_pytorch_autolog import Net  # noqa: E402


@pytest.fixture(autouse=True)
def _disable_after() -> Iterator[None]:
    yield
    autolog_pytorch.autolog(disable=True)


def _loader(batch_size: int = 8) -> torch.utils.data.DataLoader[Any]:
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 4, generator=gen), torch.randint(0, 3, (48,), generator=gen))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)


def _step(model: Net, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def _random_batches(n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _ in range(n):  # nanoGPT-style: drawn from the global RNG, no DataLoader
        yield torch.randn(6, 4), torch.randint(0, 3, (6,))


def _died_after_12_steps(*, loader: bool) -> str:
    """A first process: 12 steps with checkpoints at 5 and 10, then it dies (autolog off, no final checkpoint)."""
    torch.manual_seed(0)
    autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    if loader:
        data = _loader()
        for _ in range(2):
            for x, y in data:
                _step(model, optimizer, x, y)
    else:
        for x, y in _random_batches(12):
            _step(model, optimizer, x, y)
    run = cairn.active_run()
    assert run is not None
    runs.flush_checkpoints()
    autolog_pytorch.autolog(disable=True)
    cairn.end_run()
    assert [i.step for i in runs.list_run_checkpoints(run.info.run_id)] == [5, 10]
    return run.info.run_id


def _adam_step(optimizer: Any) -> int:
    return int(next(iter(optimizer.state.values()))["step"])


def test_a_changed_batch_size_still_restores_weights_and_optimizer_and_warns() -> None:
    run_id = _died_after_12_steps(loader=True)
    state: Any = autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False, resume=run_id)
    assert (state.step, state.epoch) == (10, 1)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = _loader(batch_size=4)  # changed: the data position cannot be restored
    with pytest.warns(runs.ResumeWarning, match=r"batch_size 8 -> 4.*epoch 1 restarts from its beginning"):
        x, y = next(iter(loader))
        _step(model, optimizer, x, y)
    assert _adam_step(optimizer) == 11  # the optimizer continued (not a fresh one)
    cairn.end_run()
    steps = [m.step for m in cairn.Client().get_metric_history(run_id, "loss")]
    assert steps == list(range(1, 12))


def test_a_changed_sampler_still_restores_weights_and_optimizer_and_warns() -> None:
    run_id = _died_after_12_steps(loader=True)
    autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False, resume=run_id)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    shuffled = _loader()
    loader = torch.utils.data.DataLoader(shuffled.dataset, batch_size=8, shuffle=False)  # same size, in order
    with pytest.warns(runs.ResumeWarning, match=r"sampler '.*RandomSampler' -> '.*SequentialSampler'.*restarts"):
        x, y = next(iter(loader))
        _step(model, optimizer, x, y)
    assert _adam_step(optimizer) == 11
    cairn.end_run()


def test_a_loop_without_a_dataloader_is_restored_at_its_first_training_forward() -> None:
    run_id = _died_after_12_steps(loader=False)
    saved = runs.checkpoint_path(run_id, 10)
    from cairn.checkpoint.state_tree import read_flat_tree

    weights = read_flat_tree(saved, "model")
    state: Any = autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False, resume=run_id)
    assert state.step == 10
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    seen: dict[str, torch.Tensor] = {}
    model.register_forward_pre_hook(lambda m, a: seen.update({k: v.clone() for k, v in m.state_dict().items()}))
    for x, y in _random_batches(1):
        _step(model, optimizer, x, y)
    assert _adam_step(optimizer) == 11
    for key, value in seen.items():
        assert torch.equal(value, weights[key]), key
    cairn.end_run()


def test_track_state_round_trips_the_loops_own_state() -> None:
    torch.manual_seed(0)
    autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    best = {"value": 9.0}
    batch = torch.arange(6.0)
    assert cairn.pytorch.track_state(lambda: {"best": best["value"], "batch": batch, "tags": ["a", 1]}) is None
    for i, (x, y) in enumerate(_random_batches(5)):
        best["value"] = float(i)
        _step(model, optimizer, x, y)
    run = cairn.active_run()
    assert run is not None
    runs.flush_checkpoints()
    autolog_pytorch.autolog(disable=True)
    cairn.end_run()

    state: Any = autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False, resume=run.info.run_id)
    assert state.user_state["best"] == 4.0
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    restored = cairn.pytorch.track_state(lambda: {})
    assert restored is not None and restored["best"] == 4.0 and restored["tags"] == ["a", 1]
    assert torch.equal(restored["batch"], batch)
    assert _adam_step(optimizer) == 5  # restored by track_state itself, before any step
    cairn.end_run()


def test_a_run_whose_checkpoints_were_deleted_is_not_restarted_inside_its_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _died_after_12_steps(loader=False)
    for found in tmp_path.rglob("checkpoints"):
        if found.is_dir():
            shutil.rmtree(found)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        autolog_pytorch.autolog(checkpoint_every_n_steps=5, resume=run_id)
    monkeypatch.setenv("CAIRN_RUN_ID", run_id)
    with pytest.raises(CheckpointError, match="if_possible"):
        autolog_pytorch.autolog(checkpoint_every_n_steps=5, resume=True)
    with pytest.warns(runs.ResumeWarning, match="new run"):
        state: Any = autolog_pytorch.autolog(checkpoint_every_n_steps=5, resume="if_possible")
    assert not state.resumed and state.run_id != run_id
    active = cairn.active_run()
    assert active is not None and active.info.run_id == state.run_id
    cairn.end_run()
    assert [m.step for m in cairn.Client().get_metric_history(run_id, "loss")] == list(range(1, 13))


def test_a_damaged_newest_checkpoint_is_named_in_a_warning(tmp_path: Path) -> None:
    run_id = _died_after_12_steps(loader=False)
    for directory in tmp_path.rglob("step-10"):
        for file in directory.glob("*.safetensors"):
            file.write_bytes(b"damaged" + file.read_bytes()[7:])
    with pytest.warns(runs.ResumeWarning, match=r"step-10.*resuming from step-5"):
        state: Any = autolog_pytorch.autolog(checkpoint_every_n_steps=5, resume=run_id, log_models=False)
    assert state.step == 5
    cairn.end_run()


def test_the_end_of_training_writes_a_final_checkpoint() -> None:
    autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in _random_batches(7):
            _step(model, optimizer, x, y)
    run = cairn.active_run()
    assert run is not None
    cairn.end_run()
    assert [i.step for i in runs.list_run_checkpoints(run.info.run_id)] == [5, 7]


def test_without_a_dataloader_a_per_step_scheduler_step_is_in_the_checkpoint() -> None:
    from cairn.checkpoint import load_component

    autolog_pytorch.autolog(checkpoint_every_n_steps=5, log_models=False)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for x, y in _random_batches(7):
        _step(model, optimizer, x, y)
        scheduler.step()
    run = cairn.active_run()
    assert run is not None
    cairn.end_run()
    assert [i.step for i in runs.list_run_checkpoints(run.info.run_id)] == [5, 7]
    assert load_component(runs.checkpoint_path(run.info.run_id, 5), "scheduler")["last_epoch"] == 5
    assert load_component(runs.checkpoint_path(run.info.run_id, 7), "scheduler")["last_epoch"] == 7
