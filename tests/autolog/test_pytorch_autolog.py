"""Plain-PyTorch autolog: what a training loop logs, that training is unchanged, faults, DDP, undoing it."""

from __future__ import annotations

import copy
import gc
import math
import os
import socket
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[torch]')")

import torch.optim.optimizer as optimizer_module  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules import module as module_module  # noqa: E402

import cairn  # noqa: E402
from cairn.autolog import AutologWarning  # noqa: E402
from cairn.autolog import pytorch as autolog_pytorch  # noqa: E402
from cairn.autolog.torch.session import Session  # noqa: E402
from cairn.checkpoint import runs  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "checkpoint" / "scripts"


class Net(nn.Module):
    """An MLP with dropout, so the RNG matters for reproducibility."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


@pytest.fixture(autouse=True)
def _disable_after() -> Iterator[None]:
    yield
    autolog_pytorch.autolog(disable=True)


def _loader(seed: int = 0, n: int = 48, batch_size: int = 8) -> torch.utils.data.DataLoader[Any]:
    gen = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)


def _train(epochs: int = 2, *, nan_at: int | None = None) -> tuple[Net, list[float], list[float]]:
    """A plain loop: returns the model, each step's loss and the lr each step used."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    loader = _loader()
    losses, lrs = [], []
    step = 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            step += 1
            if step == nan_at:
                loss = loss * float("nan")
            loss.backward()
            if step == nan_at:
                optimizer.zero_grad()  # the user skips the bad update; autolog must not interfere
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return model, losses, lrs


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in cairn.Client().get_metric_history(run_id, key)]


def test_a_plain_loop_logs_params_loss_lr_epochs_summary_and_model() -> None:
    autolog_pytorch.autolog(log_every_n_steps=2)
    model, losses, lrs = _train(epochs=2)
    run = cairn.active_run()
    assert run is not None  # the first optimizer step started it
    run_id = run.info.run_id
    cairn.end_run()
    data = cairn.get_run(run_id).data
    assert data.params["optimizer_name"] == "SGD"
    assert data.params["lr"] == "0.1" and data.params["momentum"] == "0.9"
    loss = _history(run_id, "loss")
    assert [s for s, _ in loss] == list(range(2, 13, 2))  # 6 batches x 2 epochs, every 2nd step
    for step, value in loss:  # the mean over each interval of what backward() was called on
        assert value == pytest.approx((losses[step - 2] + losses[step - 1]) / 2, rel=1e-6)
    assert _history(run_id, "lr") == [(s, lrs[s - 1]) for s in range(2, 13, 2)]
    assert {v for _, v in _history(run_id, "lr")} == {0.1, 0.05, 0.025}  # the scheduler's effect
    assert _history(run_id, "epoch") == [(2, 0.0), (8, 1.0)]
    names = {i.path for i in cairn.Client().list_artifacts(run_id)}
    assert {"model", "model_summary.txt"} <= names
    store = cairn.Client().artifact_store(run_id)
    with store.open("model_summary.txt") as handle:
        summary = handle.read().decode()
    assert "Parameters: 131 total, 131 trainable, 0 frozen" in summary and "Dropout" in summary
    loaded = cairn.pyfunc.load_model(f"runs:/{run_id}/model")
    assert loaded.metadata.signature is not None
    x = torch.randn(3, 4)
    model.eval()
    assert torch.allclose(torch.as_tensor(loaded.predict(x.numpy())), model(x).detach(), atol=1e-6)


def test_param_groups_and_a_second_optimizer_get_their_own_params_and_lr_keys() -> None:
    torch.manual_seed(0)
    model = Net()
    head = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(
        [{"params": model.fc1.parameters()}, {"params": model.fc2.parameters(), "lr": 0.01}], lr=0.1, momentum=0.5
    )
    head_optimizer = torch.optim.Adam(head.parameters(), lr=0.003)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    autolog_pytorch.autolog(log_models=False)
    with cairn.start_run() as run:
        for x, y in _loader():
            optimizer.zero_grad()
            head_optimizer.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y) + head(logits).pow(2).mean()
            loss.backward()
            optimizer.step()
            head_optimizer.step()
            scheduler.step()
    data = cairn.get_run(run.info.run_id).data
    assert data.params["optimizer_name"] == "SGD" and data.params["optimizer1.optimizer_name"] == "Adam"
    assert (data.params["lr"], data.params["group1.lr"], data.params["group1.momentum"]) == ("0.1", "0.01", "0.5")
    assert data.params["optimizer1.lr"] == "0.003" and data.params["optimizer1.betas"] == "(0.9, 0.999)"
    steps = list(range(1, 7))  # 6 batches: steps counted from the first optimizer only
    assert _history(run.info.run_id, "lr/opt0/group0") == [(s, 0.1 * 0.5 ** ((s - 1) // 3)) for s in steps]
    assert _history(run.info.run_id, "lr/opt0/group1") == [(s, 0.01 * 0.5 ** ((s - 1) // 3)) for s in steps]
    # the second optimizer is known from its first step on, after the first optimizer's step 1 was logged
    assert _history(run.info.run_id, "lr/opt1") == [(s, 0.003) for s in steps[1:]]
    assert [s for s, _ in _history(run.info.run_id, "loss")] == steps


def test_training_results_are_identical_with_autolog_on_and_off() -> None:
    plain, plain_losses, _ = _train(epochs=2)
    autolog_pytorch.autolog(checkpoint_every_n_steps=3, log_grad_norm=True, log_models=False)
    logged, logged_losses, _ = _train(epochs=2)
    run = cairn.active_run()
    assert run is not None
    cairn.end_run()
    assert plain_losses == logged_losses
    for (name, a), (_, b) in zip(plain.state_dict().items(), logged.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert len(_history(run.info.run_id, "grad_norm")) == 12
    assert [i.step for i in runs.list_run_checkpoints(run.info.run_id)] == [6, 9, 12]  # keep_last=3


def test_epoch_checkpoints_are_taken_after_the_per_epoch_code_and_at_run_end() -> None:
    autolog_pytorch.autolog(checkpoint_every_n_epochs=1, log_models=False)
    _train(epochs=2)  # the scheduler steps per batch; StepLR state must be in each checkpoint
    run = cairn.active_run()
    assert run is not None
    cairn.end_run()
    infos = runs.list_run_checkpoints(run.info.run_id)
    assert [(i.step, i.epoch, i.metadata["batch_in_epoch"]) for i in infos] == [(6, 1, 0), (12, 2, 0)]
    path = runs.checkpoint_path(run.info.run_id, 6)
    from cairn.checkpoint import load_component

    assert load_component(path, "scheduler")["last_epoch"] == 6


def test_nan_loss_is_logged_and_training_goes_on() -> None:
    autolog_pytorch.autolog()
    _, losses, _ = _train(epochs=1, nan_at=3)
    run = cairn.active_run()
    assert run is not None
    cairn.end_run()
    history = _history(run.info.run_id, "loss")
    assert [s for s, _ in history] == [1, 2, 3, 4, 5, 6]
    assert math.isnan(history[2][1]) and not any(math.isnan(v) for _, v in history[3:])
    assert [v for _, v in history[3:]] == pytest.approx(losses[3:], rel=1e-6)


def test_autolog_failures_are_warnings_and_the_step_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    autolog_pytorch.autolog(log_models=False)
    monkeypatch.setattr(Session, "emit", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain_model, _, _ = _train(epochs=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, AutologWarning)]
    assert len(messages) == 1 and "logging the optimizer step failed" in messages[0] and "boom" in messages[0]
    monkeypatch.undo()
    autolog_pytorch.autolog(disable=True)
    reference, _, _ = _train(epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(plain_model.parameters(), reference.parameters(), strict=True))
    cairn.end_run()


def test_disable_restores_everything() -> None:
    originals = (
        torch.Tensor.backward,
        torch.utils.data.DataLoader.__iter__,
        torch.utils.data.dataloader._BaseDataLoaderIter.__next__,
    )
    autolog_pytorch.autolog()
    assert torch.Tensor.backward is not originals[0]
    autolog_pytorch.autolog(disable=True)
    now = (
        torch.Tensor.backward,
        torch.utils.data.DataLoader.__iter__,
        torch.utils.data.dataloader._BaseDataLoaderIter.__next__,
    )
    assert now == originals
    assert not optimizer_module._global_optimizer_post_hooks
    assert not module_module._global_forward_pre_hooks and not module_module._global_forward_hooks
    _train(epochs=1)
    assert cairn.active_run() is None  # nothing started a run


def test_amp_grad_scaler_loss_is_unscaled() -> None:
    autolog_pytorch.autolog(log_models=False)
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = []
    for x, y in _loader():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        seen.append(loss.item())
    run = cairn.active_run()
    assert run is not None
    cairn.end_run()
    assert [v for _, v in _history(run.info.run_id, "loss")] == pytest.approx(seen, rel=1e-6)


def test_suppressed_and_lightning_driven_steps_log_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    autolog_pytorch.autolog()
    with autolog_pytorch.suppressed():
        _train(epochs=1)
    assert cairn.active_run() is None
    with monkeypatch.context() as patched:  # a step called from Lightning's code (a module named like it)
        patched.setitem(sys.modules, "pytorch_lightning", types.ModuleType("pytorch_lightning"))
        fake = types.ModuleType("pytorch_lightning.loops.fake")
        exec("def run(train):\n    return train(epochs=1)\n", fake.__dict__)
        fake.run(_train)
    assert cairn.active_run() is None


def test_system_metrics_are_sampled() -> None:
    autolog_pytorch.autolog(log_system_metrics=True, system_metrics_interval=0.05, log_models=False)
    with cairn.start_run() as run:
        _train(epochs=1)
        import time

        time.sleep(0.3)
    metrics = cairn.get_run(run.info.run_id).data.metrics
    for key in ("system/cpu_percent", "system/memory_used_mb", "system/disk_used_percent", "system/network_receive_mb"):
        assert key in metrics, key
    assert 0 <= metrics["system/cpu_percent"] <= 100 * os.cpu_count()  # type: ignore[operator]
    assert len(_history(run.info.run_id, "system/memory_used_mb")) >= 2


def _built_before_autolog() -> tuple[Net, Any, Any, torch.utils.data.DataLoader[Any]]:
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5), _loader()


def _epochs(model: Net, optimizer: Any, scheduler: Any, loader: Any, epochs: range) -> None:
    for _ in epochs:
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()


def test_an_optimizer_and_scheduler_built_before_autolog_are_checkpointed_and_resumed_exactly() -> None:
    reference = _built_before_autolog()
    _epochs(*reference, range(2))
    expected, expected_lr_steps = copy.deepcopy(reference[0].state_dict()), reference[2].last_epoch
    del reference  # the restarted script has only its own optimizer: the lookup must not be ambiguous

    first = _built_before_autolog()
    autolog_pytorch.autolog(checkpoint_every_n_steps=2, log_models=False)  # taken after steps 2 and 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutologWarning)  # no "scheduler cannot be found" warning
        _epochs(*first, range(1))
    run = cairn.active_run()
    assert run is not None
    runs.flush_checkpoints()
    autolog_pytorch.autolog(disable=True)  # the script dies here, in the middle of the run
    del first
    gc.collect()
    from cairn.checkpoint import load_component

    latest = runs.list_run_checkpoints(run.info.run_id)[-1]
    assert (latest.step, latest.metadata["batch_in_epoch"]) == (4, 4)
    assert load_component(runs.checkpoint_path(run.info.run_id, 4), "scheduler")["last_epoch"] == 4

    model, optimizer, scheduler, loader = _built_before_autolog()  # the restarted script, same order
    state: Any = autolog_pytorch.autolog(checkpoint_every_n_steps=2, log_models=False, resume=run.info.run_id)
    assert (state.step, state.epoch) == (4, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutologWarning)
        _epochs(model, optimizer, scheduler, loader, range(state.epoch, 2))  # the first epoch's last 2 batches
    cairn.end_run()
    assert scheduler.last_epoch == expected_lr_steps == 12
    for (name, a), (_, b) in zip(expected.items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_an_ambiguous_optimizer_built_before_autolog_is_reported_not_guessed() -> None:
    first = _built_before_autolog()
    autolog_pytorch.autolog(checkpoint_every_n_steps=2, log_models=False)
    _epochs(*first, range(1))
    run = cairn.active_run()
    assert run is not None
    runs.flush_checkpoints()
    autolog_pytorch.autolog(disable=True)
    _model, _optimizer, scheduler, loader = _built_before_autolog()  # `first` is still alive: two candidates
    autolog_pytorch.autolog(checkpoint_every_n_steps=2, log_models=False, resume=run.info.run_id)
    with pytest.warns(AutologWarning, match="several live optimizers"):
        next(iter(loader))
    cairn.end_run()
    assert scheduler.last_epoch == 0 and first[2].last_epoch == 6  # neither was overwritten


def test_log_checkpoint_and_resume_with_a_plain_dataloader_tracked_by_autolog() -> None:
    autolog_pytorch.autolog(log_models=False)
    loader = _loader()
    seen: list[list[int]] = []
    torch.manual_seed(1)
    with cairn.start_run() as run:
        for i, (x, _) in enumerate(loader):
            seen.append(x[:, 0].tolist())
            if i == 2:
                runs.log_checkpoint(step=3, epoch=0, loader=loader)
    torch.manual_seed(99)
    fresh = _loader()
    state = runs.resume(run.info.run_id, loader=fresh)
    assert state.batch_in_epoch == 3
    assert [x[:, 0].tolist() for x, _ in fresh] == seen[3:]
    cairn.end_run()


def test_ddp_only_rank_zero_logs(tmp_path: Path) -> None:
    env = {**os.environ, "CAIRN_TRACKING_URI": str(tmp_path / "store")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / "ddp_autolog.py"), str(tmp_path), str(rank), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    ids = [(tmp_path / f"rank{r}.txt").read_text().strip() for r in (0, 1)]
    assert ids[0] and ids[0] == ids[1]  # rank 1 knows the run id
    cairn.set_tracking_uri(tmp_path / "store")
    found = cairn.search_runs(output_format="list")
    assert [r.info.run_id for r in found] == [ids[0]]  # one run: rank 1 created none
    assert found[0].info.status.value == "FINISHED"  # ended at interpreter exit
    steps = [s for s, _ in _history(ids[0], "loss")]
    assert steps == list(range(1, 7))  # one point per step: rank 1 logged nothing
