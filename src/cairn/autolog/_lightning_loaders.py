"""Exact mid-epoch resume of the training ``DataLoader`` through Lightning's callback hooks.

Lightning 2.6 resumes a loader's position only when the loader itself is stateful (``state_dict`` /
``load_state_dict``, e.g. torchdata's ``StatefulDataLoader``), and keeps that state in its own loop state,
which a Trainer whose loader is not stateful then refuses to load. A plain ``DataLoader`` restarts the
epoch with a *new* shuffle, shortened to the batches that were left. So cairn keeps the position in
its own checkpoint entry (``"cairn_loaders"``; a Trainer without cairn ignores it) and replays it:

- ``on_train_epoch_start``: :meth:`LoaderPositions.epoch_started` records the random state the epoch's
  shuffle is drawn from (global RNGs and the loader's ``torch.Generator`` s), and whether Lightning
  creates the epoch's iterator after this hook (one more seed draw to replay).
- ``on_save_checkpoint``: :meth:`LoaderPositions.state` gives that state and the batches consumed
  (Lightning's ``batch_progress``).
- ``on_train_start`` of the resumed fit, before the first batch is fetched: :meth:`LoaderPositions.resume`
  sets, for one epoch, the loader's ``batch_sampler.sampler`` (a public attribute of torch's
  ``BatchSampler``) to an :class:`_EpochTail`. When Lightning fetches the first batch, the tail puts the
  random state back to the epoch's start, draws the same permutation from the original sampler, skips the
  consumed indices, restores the checkpoint's RNG state (so the next training step draws what the
  interrupted one would have), puts the original sampler back and yields the rest.

Nothing of the ``DataLoader`` or of Lightning is replaced or subclassed. Exact for one training
``DataLoader`` with a ``BatchSampler`` (``batch_size=...``) and ``num_workers=0``; otherwise (worker
processes prefetch indices before any callback hook runs, several training loaders, a custom batch
sampler) a warning says the epoch continues with Lightning's new shuffle. The shuffle is replayed from
the state at cairn's ``on_train_epoch_start``: a hook running after it that draws random numbers before
the first batch would change the replayed order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Sampler

from cairn.autolog._lightning_frameworks import _rng_from_checkpoint, _rng_to_checkpoint
from cairn.checkpoint.dataloader import loader_generators
from cairn.errors import CheckpointCorrupt

_FORMAT = 2  # 1: written by the class-swapping version (epoch start taken right before iter())


@dataclass
class _EpochStart:
    """The random state one epoch's shuffle is drawn from."""

    rng: dict[str, Any]
    generators: dict[str, Any]
    iter_after: bool  # Lightning created the epoch's iterator after the state was taken


@dataclass
class _Pending:
    start: _EpochStart
    batches: int
    shape: dict[str, int]  # batch_size and samples of the loader that wrote it (empty: not recorded)


def _shape(loader: DataLoader[Any]) -> dict[str, int]:
    """What must not change for a recorded position to mean the same batches."""
    batch_sampler = loader.batch_sampler
    if not isinstance(batch_sampler, BatchSampler):
        return {}
    return {"batch_size": int(batch_sampler.batch_size), "samples": len(batch_sampler.sampler)}  # type: ignore[arg-type]


def training_loader(trainer: Any) -> DataLoader[Any] | None:
    """The fit's only training ``DataLoader``, or None (none, several, not a DataLoader, or a stateful one:
    Lightning resumes a loader with ``state_dict``/``load_state_dict`` itself)."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, list | tuple) and len(loaders) == 1:
        loaders = loaders[0]
    if not isinstance(loaders, DataLoader) or hasattr(loaders, "load_state_dict"):
        return None
    return loaders


class LoaderPositions:
    """The training loader's epoch start and position, for the callback's checkpoint hooks."""

    def __init__(self) -> None:
        self._start: _EpochStart | None = None
        self._pending: _Pending | None = None
        self._tail: _EpochTail | None = None
        self._shape: dict[str, int] = {}

    @property
    def pending(self) -> bool:
        """A checkpoint with a mid-epoch position was loaded and awaits :meth:`resume`."""
        return self._pending is not None

    def epoch_started(self, trainer: Any) -> None:
        """At ``on_train_epoch_start``: record the random state this epoch's shuffle is drawn from."""
        from cairn.checkpoint.dataloader import capture_epoch_start

        loader = training_loader(trainer)
        if loader is None:
            self._start = None
            return
        fit_loop = trainer.fit_loop
        # Lightning's own condition (training_epoch_loop.on_run_start) for calling iter() after this hook
        iter_after = trainer.current_epoch > 0 and not fit_loop.is_resuming and not fit_loop.epoch_loop.restarting
        start = capture_epoch_start(loader)
        self._start = _EpochStart(start.rng, start.generators, iter_after)
        self._shape = _shape(loader)

    def state(self, trainer: Any) -> list[dict[str, Any]]:
        """For ``on_save_checkpoint``: the position in the current epoch (tensors, numbers, tuples only)."""
        start = self._start
        if start is None:
            return []
        progress = trainer.fit_loop.epoch_loop.batch_progress
        batches = int(progress.current.ready)
        limit = trainer.num_training_batches
        finished = bool(progress.is_last_batch) or (limit != float("inf") and batches >= limit)
        return [
            {
                "index": 0,
                "cairn_loader": _FORMAT,
                "batch_in_epoch": batches,
                "epoch_finished": finished,
                **self._shape,
                "epoch_start": {
                    "rng": _rng_to_checkpoint(start.rng),
                    "generators": dict(start.generators),
                    "iter_after": start.iter_after,
                },
            }
        ]

    def load(self, states: Any) -> None:
        """For ``on_load_checkpoint``: keep the position of an unfinished epoch for :meth:`resume`.

        Raises:
            CheckpointCorrupt: the entry was not written by cairn.
        """
        self._pending = None
        for state in states or []:
            if not isinstance(state, dict) or state.get("cairn_loader") not in (1, _FORMAT):
                raise CheckpointCorrupt("the training DataLoader state in this checkpoint was not written by cairn")
            batches = state.get("batch_in_epoch")
            if type(batches) is not int:
                raise CheckpointCorrupt("the training DataLoader state lacks batch_in_epoch")
            start = state.get("epoch_start")
            if state.get("index") != 0 or start is None or state.get("epoch_finished") or batches <= 0:
                continue
            iter_after = bool(start.get("iter_after", True))  # format 1 took the state right before iter()
            epoch_start = _EpochStart(
                _rng_from_checkpoint(start["rng"]), dict(start.get("generators") or {}), iter_after
            )
            shape = {key: state[key] for key in ("batch_size", "samples") if type(state.get(key)) is int}
            self._pending = _Pending(epoch_start, batches, shape)
            self._start, self._shape = epoch_start, shape  # a checkpoint later in this epoch records the same

    def resume(self, trainer: Any, rng_after: dict[str, Any] | None) -> None:
        """At ``on_train_start``: make the first fetch of the resumed epoch continue it exactly.

        Args:
            rng_after: the RNG state to leave once the consumed batches are skipped (the checkpoint's);
                None keeps the state found when the first batch is fetched.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        loader = training_loader(trainer)
        reason = _not_resumable(loader, pending)
        if reason is not None:
            warnings.warn(
                f"cairn: the training DataLoader cannot continue its epoch exactly ({reason}); Lightning continues "
                "it with a new shuffle of the remaining batches",
                UserWarning,
                stacklevel=2,
            )
            return
        assert loader is not None
        batch_sampler = loader.batch_sampler
        assert isinstance(batch_sampler, BatchSampler)
        self._tail = _EpochTail(loader, batch_sampler, pending, rng_after)
        batch_sampler.sampler = self._tail

    def close(self) -> None:
        """Put the loader's sampler back if the resumed epoch never started (an error before it)."""
        tail, self._tail = self._tail, None
        if tail is not None:
            tail.put_back()
        self._pending = None


def _not_resumable(loader: DataLoader[Any] | None, pending: _Pending) -> str | None:
    if loader is None:
        return "cairn replays one training DataLoader; this fit has none or several"
    batch_sampler = loader.batch_sampler
    if not isinstance(batch_sampler, BatchSampler):
        return "it has no torch BatchSampler (batch_size=None or a custom batch_sampler)"
    if loader.num_workers > 0:
        return "with num_workers > 0 the workers prefetch indices before any callback hook runs"
    now = _shape(loader)
    if pending.shape and pending.shape != now:
        return f"the checkpoint's loader had {pending.shape}, this one has {now}"
    roles = sorted(loader_generators(loader))
    if roles != sorted(pending.start.generators):
        recorded = sorted(pending.start.generators) or "the global RNG only"
        return f"it shuffles with generators {roles or 'the global RNG only'}, the checkpoint's loader with {recorded}"
    if pending.batches >= len(batch_sampler):
        return f"the checkpoint consumed {pending.batches} batches but an epoch now has {len(batch_sampler)}"
    return None


class _EpochTail(Sampler[int]):
    """Stands in for a ``BatchSampler``'s sampler for one epoch: the interrupted epoch's remaining indices."""

    def __init__(
        self, loader: DataLoader[Any], batch_sampler: BatchSampler, pending: _Pending, rng_after: dict[str, Any] | None
    ) -> None:
        self._loader = loader
        self._batch_sampler = batch_sampler
        self._original: Any = batch_sampler.sampler
        self._pending = pending
        self._rng_after = rng_after

    def __len__(self) -> int:
        return len(self._original)

    def put_back(self) -> None:
        if self._batch_sampler.sampler is self:
            self._batch_sampler.sampler = self._original

    def __iter__(self) -> Iterator[int]:
        from cairn.checkpoint.rng import capture_rng_state, restore_rng_state

        self.put_back()  # one epoch only
        start = self._pending.start
        after = self._rng_after if self._rng_after is not None else capture_rng_state()
        restore_rng_state(start.rng)
        for role, generator in loader_generators(self._loader).items():  # the roles were checked by resume()
            generator.set_state(start.generators[role])
        if start.iter_after:
            iter(self._loader)  # the seed draw of the iterator the interrupted epoch created after the state
        indices = iter(self._original)
        for _ in range(self._pending.batches * self._batch_sampler.batch_size):
            next(indices)
        restore_rng_state(after)
        yield from indices
