"""Plain-PyTorch autolog on a nanoGPT-style loop: batches from ``torch.randint`` (no DataLoader), gradient
accumulation with ``(loss / k).backward()``, the learning rate set by hand in ``param_group['lr']``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[torch]')")

from torch import nn  # noqa: E402

import cairn  # noqa: E402
from cairn.autolog import pytorch as autolog_pytorch  # noqa: E402

ACCUMULATION = 4
LEARNING_RATE = 6e-3
WARMUP = 5
VOCAB, BLOCK, BATCH = 32, 8, 4


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(torch.tanh(self.embed(idx)))
        return logits, nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


@pytest.fixture(autouse=True)
def _disable_after() -> Iterator[None]:
    yield
    autolog_pytorch.autolog(disable=True)


def _get_batch(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - BLOCK - 1, (BATCH,))
    x = torch.stack([data[i : i + BLOCK] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + BLOCK] for i in ix])
    return x, y


def _lr(it: int) -> float:
    return LEARNING_RATE * (it + 1) / WARMUP if it < WARMUP else LEARNING_RATE


def _train(iters: int, *, pause: float = 0.0) -> tuple[list[float], list[float]]:
    """nanoGPT's loop shape: returns each step's summed scaled micro-losses and the lr it used."""
    torch.manual_seed(0)
    data = torch.randint(VOCAB, (1000,))
    model = TinyLM()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=(0.9, 0.95),
    )
    sums, lrs = [], []
    x, y = _get_batch(data)  # prefetched, as nanoGPT does
    for it in range(iters):
        lr = _lr(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(ACCUMULATION):
            _, loss = model(x, y)
            loss = loss / ACCUMULATION
            x, y = _get_batch(data)
            loss.backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sums.append(total)
        lrs.append(lr)
        if pause:
            time.sleep(pause)
    return sums, lrs


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in cairn.Client().get_metric_history(run_id, key)]


@pytest.mark.parametrize("every", [1, 3])
def test_accumulated_loss_is_the_sum_of_the_backward_scalars_of_a_step(every: int) -> None:
    autolog_pytorch.autolog(log_every_n_steps=every, log_models=False)
    with cairn.start_run() as run:
        sums, lrs = _train(9)
    loss = _history(run.info.run_id, "loss")
    assert [s for s, _ in loss] == list(range(every, 10, every))
    for step, value in loss:  # the interval's mean of per-step sums (= the mean of the unscaled micro-losses)
        expected = math.fsum(sums[step - every : step]) / every
        assert value == pytest.approx(expected, rel=1e-6)
    assert _history(run.info.run_id, "lr/group1") == [(s, lrs[s - 1]) for s in range(every, 10, every)]


def test_optimizer_params_are_the_constructors_values_not_the_first_steps() -> None:
    autolog_pytorch.autolog(log_models=False)
    with cairn.start_run() as run:
        _, lrs = _train(2)
    assert lrs[0] != LEARNING_RATE  # the first step ran at a warm-up rate
    params = cairn.get_run(run.info.run_id).data.params
    assert params["optimizer_name"] == "AdamW"
    assert float(params["lr"]) == LEARNING_RATE
    assert params["betas"] == "(0.9, 0.95)"
    assert float(params["group1.lr"]) == LEARNING_RATE
    assert (params["group0.weight_decay"], params["group1.weight_decay"]) == ("0.1", "0.0")


def test_system_metrics_are_logged_at_the_training_step_and_wall_time() -> None:
    autolog_pytorch.autolog(log_models=False, log_system_metrics=True, system_metrics_interval=0.01)
    started = time.time() * 1000
    with cairn.start_run() as run:
        _train(8, pause=0.03)
    ended = time.time() * 1000
    client = cairn.Client()
    points = client.get_metric_history(run.info.run_id, "system/memory_used_mb")
    losses = {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, "loss")}
    assert len(points) >= 4
    steps = [p.step for p in points]
    assert steps == sorted(steps) and set(steps) <= set(range(9))
    assert steps[-1] == 8  # the final sample, when the run ends, is at the last step
    assert len(set(steps)) >= 3  # the samples follow training
    for point in points:
        assert started - 1 <= point.timestamp <= ended + 1
        if point.step >= 1:  # sampled after that step was taken
            assert point.timestamp >= losses[point.step] - 1


def test_a_closure_optimizer_logs_the_loss_it_returns_not_the_sum_of_its_evaluations() -> None:
    """LBFGS calls the closure (forward + backward) several times inside one step(): those are not accumulation."""
    autolog_pytorch.autolog(log_models=False)
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with cairn.start_run() as run:
        returned = [float(optimizer.step(closure)) for _ in range(3)]
    assert _history(run.info.run_id, "loss") == [
        (step + 1, pytest.approx(v, rel=1e-6)) for step, v in enumerate(returned)
    ]
