"""Resume a DataLoader in the middle of an epoch with the same shuffled order and the same remaining batches.

How it works: a shuffling ``RandomSampler`` draws its permutation when the epoch's iteration starts,
from the loader's ``generator`` if it has one, else from the global torch RNG. So the state to keep is
the RNG *at the start of the epoch* (all global generators plus every ``torch.Generator`` the loader and
its sampler hold), and the number of batches consumed. To resume, :func:`resumable_position` puts
those generators back to the epoch start, starts the iteration (same permutation, same worker seeds),
skips the consumed batches, then puts the global RNG back to what it was on entry (the checkpoint's
state, restored beforehand by ``restore_training_state``), and returns the iterator.

Skipping: with ``num_workers=0`` and a map-style dataset, consumed batches are skipped at the index
level, without loading them. Otherwise (worker processes, iterable datasets) they are loaded and
discarded, which also replays any random augmentation inside the workers exactly.

:class:`ResumableLoader` does the bookkeeping: wrap the loader once, iterate the wrapper as usual, and
pass it as ``dataloader=`` to ``capture_training_state``/``restore_training_state``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from cairn.checkpoint._fs import MAX_COUNT, is_count
from cairn.checkpoint.rng import capture_rng_state, check_rng_state, restore_rng_state
from cairn.errors import CheckpointCorrupt, InvalidArgument

__all__ = [
    "EpochStart",
    "LoaderState",
    "ResumableLoader",
    "capture_epoch_start",
    "loader_generators",
    "resumable_position",
]


@dataclass
class EpochStart:
    """The random state an epoch's shuffle depends on, taken just before ``iter(loader)``."""

    rng: dict[str, Any]
    generators: dict[str, torch.Tensor]

    def to_tree(self) -> dict[str, Any]:
        return {"rng": self.rng, "generators": dict(self.generators)}

    @classmethod
    def from_tree(cls, tree: Any, source: str = "data-loader state") -> EpochStart:
        """Parse and check what :meth:`to_tree` wrote.

        Raises:
            CheckpointCorrupt: ``tree`` has another shape; the message starts with ``source``.
        """
        if not isinstance(tree, dict) or "rng" not in tree:
            raise CheckpointCorrupt(f"{source}: the data-loader epoch start has no RNG state")
        check_rng_state(tree["rng"], f"{source}: epoch start")
        generators = tree.get("generators", {})
        size = torch.Generator().get_state().numel()
        valid = isinstance(generators, dict) and all(
            isinstance(role, str) and _is_generator_state(state, size) for role, state in generators.items()
        )
        if not valid:
            raise CheckpointCorrupt(
                f"{source}: data-loader generator states must map a role to a uint8 tensor of {size} bytes"
            )
        return cls(rng=tree["rng"], generators=dict(generators))


def _is_generator_state(state: Any, size: int) -> bool:
    return isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.shape == (size,)


@dataclass
class LoaderState:
    """A loader's position: the epoch start, batches consumed, and whether the epoch ran to its end."""

    epoch_start: EpochStart | None
    batch_in_epoch: int = 0
    epoch_finished: bool = False

    def to_tree(self) -> dict[str, Any]:
        return {
            "epoch_start": None if self.epoch_start is None else self.epoch_start.to_tree(),
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_finished": self.epoch_finished,
        }

    @classmethod
    def from_tree(cls, tree: Any, source: str = "data-loader state") -> LoaderState:
        """Parse and check what :meth:`to_tree` wrote.

        Raises:
            CheckpointCorrupt: ``tree`` has another shape; the message starts with ``source``.
        """
        if not isinstance(tree, dict) or not is_count(tree.get("batch_in_epoch")):
            raise CheckpointCorrupt(f"{source}: batch_in_epoch must be an integer between 0 and {MAX_COUNT}")
        finished = tree.get("epoch_finished", False)
        if type(finished) is not bool:
            raise CheckpointCorrupt(f"{source}: epoch_finished must be a boolean")
        start = tree.get("epoch_start")
        return cls(
            epoch_start=None if start is None else EpochStart.from_tree(start, source),
            batch_in_epoch=tree["batch_in_epoch"],
            epoch_finished=finished,
        )


def loader_generators(loader: DataLoader[Any]) -> dict[str, torch.Generator]:
    """Every distinct ``torch.Generator`` the loader's shuffling can draw from, by role."""
    candidates = {
        "loader": getattr(loader, "generator", None),
        "sampler": getattr(loader.sampler, "generator", None),
        "batch_sampler.sampler": getattr(getattr(loader.batch_sampler, "sampler", None), "generator", None),
    }
    found: dict[str, torch.Generator] = {}
    for role, generator in candidates.items():
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found.values()):
            found[role] = generator
    return found


def capture_epoch_start(loader: DataLoader[Any]) -> EpochStart:
    """Record the random state of the epoch about to start; call right before ``iter(loader)``."""
    return EpochStart(
        rng=capture_rng_state(),
        generators={role: g.get_state() for role, g in loader_generators(loader).items()},
    )


def resumable_position(loader: DataLoader[Any], batch_in_epoch: int, *, epoch_start: EpochStart) -> Iterator[Any]:
    """Return an iterator over the batches of the epoch that started at ``epoch_start``, minus the first
    ``batch_in_epoch``: exactly the batches an uninterrupted run would still see.

    Call it after the global RNG was restored to the checkpoint (``restore_training_state`` does that):
    the RNG found on entry is put back before returning, so the next draw is the interrupted run's.
    With ``batch_in_epoch=0`` the global RNG is left at the epoch start instead, since the epoch has
    not drawn anything yet.

    Raises:
        InvalidArgument: ``batch_in_epoch`` is negative, or the loader's generators differ in kind from
            the ones recorded (e.g. a ``generator=`` was added or removed).
    """
    if batch_in_epoch < 0:
        raise InvalidArgument(f"batch_in_epoch must be >= 0, got {batch_in_epoch}")
    generators = loader_generators(loader)
    if set(generators) != set(epoch_start.generators):
        raise InvalidArgument(
            f"the loader draws its shuffle from generators {sorted(generators) or 'global RNG only'} but the "
            f"checkpoint recorded {sorted(epoch_start.generators) or 'global RNG only'}; build it the same way"
        )
    now = capture_rng_state()
    restore_rng_state(epoch_start.rng)
    for role, generator in generators.items():
        generator.set_state(epoch_start.generators[role])
    if batch_in_epoch == 0:
        # Nothing consumed: the epoch simply starts again from its recorded random state. (The shuffle is
        # drawn lazily at the first batch, so there is no later state to return to.)
        return iter(loader)
    try:
        iterator = iter(loader)
        _skip(loader, iterator, batch_in_epoch)
    except StopIteration:
        return iter(())
    finally:
        # The loader's own generators stay where the replay left them: the uninterrupted run's state.
        restore_rng_state(now)
    return iterator


def _skip(loader: DataLoader[Any], iterator: Any, count: int) -> None:
    sampler_iter = getattr(iterator, "_sampler_iter", None)
    index_level = (
        loader.num_workers == 0 and not isinstance(loader.dataset, IterableDataset) and sampler_iter is not None
    )
    for _ in range(count):
        if index_level and sampler_iter is not None:
            next(sampler_iter)
            iterator._num_yielded += 1
        else:
            next(iterator)


class ResumableLoader:
    """Wrap a ``DataLoader`` to record each epoch's start and position, and to resume mid-epoch.

    Iterate it like the loader. ``state_dict()`` gives the position (for ``capture_training_state(...,
    dataloader=wrapper)``); after ``load_state_dict()`` the *next* iteration yields only the batches the
    interrupted epoch had left. Other attributes are forwarded to the wrapped loader.
    """

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader
        self._state = LoaderState(epoch_start=None)
        self._pending: LoaderState | None = None

    @property
    def batch_in_epoch(self) -> int:
        """Batches of the current epoch handed out so far."""
        return self._state.batch_in_epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "_state", "_pending"):  # not yet set (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        if pending is not None and pending.epoch_start is not None:
            iterator = resumable_position(self.loader, pending.batch_in_epoch, epoch_start=pending.epoch_start)
            self._state = LoaderState(pending.epoch_start, pending.batch_in_epoch)
        else:
            self._state = LoaderState(capture_epoch_start(self.loader))
            iterator = iter(self.loader)
        return self._track(iterator, self._state)

    def _track(self, iterator: Iterator[Any], state: LoaderState) -> Iterator[Any]:
        for batch in iterator:
            state.batch_in_epoch += 1  # counted before the body runs: a checkpoint inside it includes this batch
            yield batch
        state.epoch_finished = True

    def state_dict(self) -> dict[str, Any]:
        """The position as a state tree (RNG states as tensors and tuples; no pickle needed)."""
        return self._state.to_tree()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration resume the epoch recorded in ``state`` where it stopped.

        A state whose epoch had run to its end resumes nothing: the next iteration is a fresh epoch.
        """
        loaded = LoaderState.from_tree(state)
        self._state = loaded
        self._pending = None if loaded.epoch_finished or loaded.epoch_start is None else loaded
