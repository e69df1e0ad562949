"""Mid-epoch resume of a shuffling DataLoader: first k batches + resumed batches == the uninterrupted epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from cairn.checkpoint import (
    ResumableLoader,
    capture_epoch_start,
    capture_rng_state,
    capture_training_state,
    restore_rng_state,
    restore_training_state,
    resumable_position,
    write_checkpoint,
)
from cairn.checkpoint.state_tree import load_state_tree, save_state_tree
from cairn.errors import InvalidArgument
from tests.checkpoint._helpers import TinyNet, weights_equal

N, BATCH = 22, 4  # 6 batches, the last one short


def make_loader(explicit_generator: bool, seed: int, **kwargs: Any) -> DataLoader[Any]:
    dataset = TensorDataset(torch.arange(N))
    generator = torch.Generator().manual_seed(seed) if explicit_generator else None
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=generator, **kwargs)


def as_lists(batches: list[Any]) -> list[list[float]]:
    return [b[0].tolist() for b in batches]


def fresh_process(seed: int = 12345) -> None:
    """Scramble the global RNG as a restarted process would have it."""
    torch.manual_seed(seed)


@pytest.mark.parametrize("explicit_generator", [False, True], ids=["global-rng", "generator"])
@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_remaining_batches_are_those_of_the_uninterrupted_epoch(explicit_generator: bool, k: int) -> None:
    torch.manual_seed(0)
    loader = make_loader(explicit_generator, seed=7)
    uninterrupted = [as_lists(list(loader)) for _ in range(3)]
    assert uninterrupted[0] != uninterrupted[1]  # it really shuffles

    torch.manual_seed(0)
    loader = make_loader(explicit_generator, seed=7)
    list(loader)  # epoch 0 runs to its end
    start = capture_epoch_start(loader)  # epoch 1 starts
    iterator = iter(loader)
    first = [next(iterator) for _ in range(k)]
    rng_at_checkpoint = capture_rng_state()

    fresh_process()
    loader = make_loader(explicit_generator, seed=999)  # same construction, different generator state
    restore_rng_state(rng_at_checkpoint)
    rest = list(resumable_position(loader, k, epoch_start=start))
    assert as_lists(first) + as_lists(rest) == uninterrupted[1]
    assert as_lists(list(loader)) == uninterrupted[2]  # and the next epoch shuffles the same way too


class NoisyDataset(Dataset[torch.Tensor]):
    """Random augmentation drawn from the (worker's) global RNG."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        return index + torch.rand(())


def test_worker_processes_replay_their_random_augmentation() -> None:
    def make() -> DataLoader[Any]:
        return DataLoader(NoisyDataset(), batch_size=3, shuffle=True, num_workers=2)

    torch.manual_seed(0)
    uninterrupted = [b.tolist() for b in make()]
    torch.manual_seed(0)
    loader = make()
    start = capture_epoch_start(loader)
    iterator = iter(loader)
    first = [next(iterator).tolist()]
    del iterator
    rng = capture_rng_state()
    fresh_process()
    restore_rng_state(rng)
    rest = [b.tolist() for b in resumable_position(make(), 1, epoch_start=start)]
    assert first + rest == uninterrupted


class RandomStream(IterableDataset[torch.Tensor]):
    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(10):
            yield torch.rand(())


def test_iterable_dataset_is_replayed() -> None:
    torch.manual_seed(0)
    uninterrupted = [b.tolist() for b in DataLoader(RandomStream(), batch_size=2)]
    torch.manual_seed(0)
    loader = DataLoader(RandomStream(), batch_size=2)
    start = capture_epoch_start(loader)
    iterator = iter(loader)
    first = [next(iterator).tolist() for _ in range(2)]
    rng = capture_rng_state()
    fresh_process()
    restore_rng_state(rng)
    rest = [b.tolist() for b in resumable_position(loader, 2, epoch_start=start)]
    assert first + rest == uninterrupted


def test_loader_built_differently_is_refused() -> None:
    start = capture_epoch_start(make_loader(True, seed=1))
    with pytest.raises(InvalidArgument, match="build it the same way"):
        resumable_position(make_loader(False, seed=1), 2, epoch_start=start)


@pytest.mark.parametrize("explicit_generator", [False, True], ids=["global-rng", "generator"])
def test_resumable_loader_state_survives_disk(tmp_path: Path, explicit_generator: bool) -> None:
    torch.manual_seed(0)
    uninterrupted = [as_lists(list(make_loader(explicit_generator, 3))) for _ in range(1)]
    torch.manual_seed(0)
    wrapped = ResumableLoader(make_loader(explicit_generator, 3))
    first = []
    for batch in wrapped:
        first.append(batch)
        if len(first) == 2:
            break
    assert wrapped.batch_in_epoch == 2 and len(wrapped) == 6 and wrapped.batch_size == BATCH
    save_state_tree({"loader": wrapped.state_dict(), "rng": capture_rng_state()}, tmp_path)

    fresh_process()
    saved = load_state_tree(tmp_path)
    wrapped = ResumableLoader(make_loader(explicit_generator, 42))
    wrapped.load_state_dict(saved["loader"])
    restore_rng_state(saved["rng"])
    rest = list(wrapped)
    assert as_lists(first) + as_lists(rest) == uninterrupted[0]
    assert wrapped.batch_in_epoch == 6 and wrapped.state_dict()["epoch_finished"] is True


def _train(
    stop_at: tuple[int, int] | None, checkpoints: Path, explicit_generator: bool, resume: bool = False
) -> nn.Module:
    """Two epochs over a shuffling loader; optionally stop after (epoch, batch) with a checkpoint, or resume."""
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    data = TensorDataset(torch.randn(N, 4), torch.randint(0, 3, (N,)))
    generator = torch.Generator().manual_seed(5) if explicit_generator else None
    loader = ResumableLoader(DataLoader(data, batch_size=BATCH, shuffle=True, generator=generator))
    step, first_epoch = 0, 0
    if resume:
        torch.manual_seed(777)  # a restarted process: the restore must override all of this
        state = restore_training_state(
            checkpoints / "step-8", model=model, optimizer=optimizer, scheduler=scheduler, dataloader=loader
        )
        step, first_epoch = state.step, state.epoch or 0
    for epoch in range(first_epoch, 2):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if stop_at == (epoch, loader.batch_in_epoch):
                snapshot = capture_training_state(
                    model=model, optimizer=optimizer, scheduler=scheduler, step=step, epoch=epoch, dataloader=loader
                )
                write_checkpoint(snapshot, checkpoints)
                return model
    return model


@pytest.mark.parametrize("explicit_generator", [False, True], ids=["global-rng", "generator"])
def test_training_killed_mid_epoch_resumes_bit_identical(tmp_path: Path, explicit_generator: bool) -> None:
    reference = _train(None, tmp_path, explicit_generator)
    _train((1, 2), tmp_path, explicit_generator)  # 6 batches in epoch 0, 2 in epoch 1: step 8
    resumed = _train(None, tmp_path, explicit_generator, resume=True)
    assert weights_equal(resumed, reference)
    assert not weights_equal(TinyNet(), reference)


def test_resumed_state_fast_forwards_a_plain_loader(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain: Callable[[], DataLoader[Any]] = lambda: make_loader(False, 0)  # noqa: E731
    uninterrupted = as_lists(list(plain()))
    torch.manual_seed(0)
    wrapped = ResumableLoader(plain())
    iterator = iter(wrapped)
    first = [next(iterator) for _ in range(4)]
    info = write_checkpoint(capture_training_state(step=4, epoch=0, dataloader=wrapped), tmp_path)
    fresh_process()
    state = restore_training_state(info.path)
    assert state.batch_in_epoch == 4
    assert as_lists(first) + as_lists(list(state.fast_forward(plain()))) == uninterrupted
    no_loader = restore_training_state(write_checkpoint(capture_training_state(step=5, epoch=0), tmp_path).path)
    with pytest.raises(InvalidArgument, match="no data-loader position"):
        no_loader.fast_forward(plain())
