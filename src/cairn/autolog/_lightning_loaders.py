"""Exact mid-epoch resume of the training ``DataLoader`` through Lightning's callback hooks.

Lightning 2.6 resumes a loader's position only when the loader itself is stateful (``state_dict`` /
``load_state_dict``, e.g. torchdata's ``StatefulDataLoader``), and keeps that state in its own loop state,
which a Trainer whose loader is not stateful then refuses to load. A plain ``DataLoader`` restarts the
epoch with a *new* shuffle, shortened to the batches that were left. So cairn keeps the position in
its own checkpoint entry (``"cairn_loaders"``; a Trainer without cairn ignores it) and replays it.

When Lightning 2.6 creates the epoch's iterator (``iter(loader)``: the worker base seed is drawn from the
loader's ``generator`` or the global torch RNG, then the sampler is iterated, which draws the shuffle):

- the fit's first epoch, and an epoch continued by a resumed fit: in ``FitLoop.setup_data``, after
  ``on_fit_start`` and ``on_load_checkpoint``, before ``on_train_start``; the DataLoader is made there
  (``train_dataloader()``), so no callback hook can reach it before its iterator exists;
- later epochs: in the epoch loop's ``on_run_start``, right after ``on_train_epoch_start``.

With ``num_workers=0`` the sampler is iterated lazily, at the first batch; with workers, at once (the
workers prefetch ``prefetch_factor * num_workers`` batches of indices). With ``persistent_workers=True`` the
iterator is the loader's own: later ``iter(loader)`` calls restart it (no new base seed, same workers).

So the epoch's random state is recorded where it is known (:meth:`LoaderPositions.epoch_started`, at
``on_train_epoch_start``): the state at that hook for later epochs (a base seed drawn after it unless the
workers persist); for an iterator made before the hook with ``num_workers=0``, the state at the hook (the
base seed was drawn, the shuffle not yet); with workers, the global state at ``on_fit_start`` (the base seed
and the shuffle are drawn after it), checked by replaying those draws and comparing with the state found at
the hook (a ``train_dataloader()`` that draws random numbers, or a loader with its own ``generator``, makes
the first epoch of such a fit not replayable: the checkpoint records why, and a resume says so).

``on_save_checkpoint``: :meth:`LoaderPositions.state` gives that state and the batches consumed (Lightning's
``batch_progress``). At ``on_train_start`` of the resumed fit, :meth:`LoaderPositions.resume` sets, for one
epoch, the loader's ``batch_sampler.sampler`` (a public attribute of torch's ``BatchSampler``) to an
:class:`_EpochTail`; with persistent workers it then calls ``iter(loader)``, which restarts the loader's own
iterator (the one Lightning's fetcher holds) from the tail. When the sampler is iterated, the tail puts the
random state back to the epoch's start, replays the base-seed draw, draws the same permutation from the
original sampler, skips the consumed indices, restores the checkpoint's RNG state (so the next training step
draws what the interrupted one would have), puts the original sampler back and yields the rest.

Nothing of the ``DataLoader`` or of Lightning is replaced or subclassed. Exact for one training
``DataLoader`` with a ``BatchSampler`` (``batch_size=...``) and ``num_workers=0`` or persistent workers.
Not exact, with a :class:`~cairn.checkpoint.resume.ResumeWarning` that says why and Lightning continuing the
epoch with a new shuffle: workers that do not persist (their iterator, which has already prefetched indices
of a new shuffle when the first hook can reach the loader, is held only by Lightning's private fetcher),
several training loaders (a ``CombinedLoader``), a custom batch sampler. With workers, random numbers drawn
*inside* the worker processes (augmentations in ``__getitem__``) are not replayed: the order is exact but
the workers' random streams start afresh (a persistent worker's stream runs across epochs, and a resumed
worker would have to load the consumed batches again to reach the interrupted one's position); a warning
says so at every resume with workers. A hook that draws random numbers between cairn's recording and the
iterator's creation would change the replayed order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from cairn.autolog._lightning_frameworks import _rng_from_checkpoint, _rng_to_checkpoint
from cairn.checkpoint.dataloader import loader_generators
from cairn.checkpoint.resume import ResumeWarning
from cairn.errors import CheckpointCorrupt

# 1: written by the class-swapping version (epoch start taken right before iter()); 2: "iter_after";
# 3: "seed_draw" (2's "iter_after" under the name of what it means) and "unsupported"
_FORMAT = 3


@dataclass
class _EpochStart:
    """The random state one epoch's shuffle is drawn from."""

    rng: dict[str, Any]
    generators: dict[str, Any]
    seed_draw: bool  # the iterator's worker base seed was drawn from this state before the shuffle


@dataclass
class _Pending:
    start: _EpochStart | None
    batches: int
    shape: dict[str, int]  # batch_size and samples of the loader that wrote it (empty: not recorded)
    unsupported: str | None = None  # why the recorded position cannot be replayed (then start is None)


def _shape(loader: DataLoader[Any]) -> dict[str, int]:
    """What must not change for a recorded position to mean the same batches."""
    batch_sampler = loader.batch_sampler
    if not isinstance(batch_sampler, BatchSampler):
        return {}
    return {"batch_size": int(batch_sampler.batch_size), "samples": len(batch_sampler.sampler)}  # type: ignore[arg-type]


def _training_loaders(trainer: Any) -> list[Any]:
    """The fit's training loaders (the leaves of the list/tuple/dict given to ``fit``)."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    return list(loaders) if isinstance(loaders, list | tuple) else [] if loaders is None else [loaders]


def training_loader(trainer: Any) -> DataLoader[Any] | None:
    """The fit's only training ``DataLoader``, or None (none, several, not a DataLoader, or a stateful one:
    Lightning resumes a loader with ``state_dict``/``load_state_dict`` itself)."""
    loaders = _training_loaders(trainer)
    if len(loaders) != 1 or not isinstance(loaders[0], DataLoader) or hasattr(loaders[0], "load_state_dict"):
        return None
    return loaders[0]


def _persistent(loader: DataLoader[Any]) -> bool:
    return bool(loader.persistent_workers) and loader.num_workers > 0


def _draw_base_seed(loader: DataLoader[Any]) -> None:
    """The draw torch's ``_BaseDataLoaderIter.__init__`` makes for the workers' base seed, before the shuffle."""
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)


class LoaderPositions:
    """The training loader's epoch start and position, for the callback's checkpoint hooks."""

    def __init__(self) -> None:
        self._start: _EpochStart | None = None
        self._unsupported: str | None = None
        self._fit_start: dict[str, Any] | None = None
        self._pending: _Pending | None = None
        self._tail: _EpochTail | None = None
        self._shape: dict[str, int] = {}

    @property
    def pending(self) -> bool:
        """A checkpoint with a mid-epoch position was loaded and awaits :meth:`resume`."""
        return self._pending is not None

    def fit_started(self) -> None:
        """At ``on_fit_start`` and after ``on_load_checkpoint`` restored the RNG (whichever comes later): the
        global random state the fit's first iterator draws from."""
        from cairn.checkpoint.rng import capture_rng_state

        self._fit_start = capture_rng_state()

    def epoch_started(self, trainer: Any) -> None:
        """At ``on_train_epoch_start``: record the random state this epoch's shuffle is drawn from."""
        from cairn.checkpoint.dataloader import capture_epoch_start

        self._start, self._unsupported = None, None
        loaders = _training_loaders(trainer)
        if len(loaders) > 1:
            self._unsupported = (
                f"cairn replays one training DataLoader; this fit has {len(loaders)} training DataLoaders"
            )
            return
        loader = training_loader(trainer)
        if loader is None:
            return
        fit_loop = trainer.fit_loop
        # Lightning's own condition (training_epoch_loop.on_run_start) for calling iter() after this hook
        iter_after = trainer.current_epoch > 0 and not fit_loop.is_resuming and not fit_loop.epoch_loop.restarting
        if iter_after or loader.num_workers == 0:
            start = capture_epoch_start(loader)
            # iter() after the hook draws a base seed unless the workers persist; before it, it was drawn already
            self._start = _EpochStart(start.rng, start.generators, iter_after and not _persistent(loader))
        else:
            self._start, self._unsupported = self._first_iterator_start(loader)
        self._shape = _shape(loader)

    def _first_iterator_start(self, loader: DataLoader[Any]) -> tuple[_EpochStart | None, str | None]:
        """With workers, the iterator made in ``FitLoop.setup_data`` drew its base seed and shuffle from the state
        at ``on_fit_start``: check that by replaying those draws, and return that start (or why there is none)."""
        from cairn.checkpoint.rng import capture_rng_state, restore_rng_state

        why = "its worker processes drew the first epoch's shuffle before any callback hook could record "
        if self._fit_start is None:
            return None, why + "the random state (no on_fit_start)"
        if loader_generators(loader):
            return None, why + "the state of the loader's own generator"
        batch_sampler = loader.batch_sampler
        if not isinstance(batch_sampler, BatchSampler):
            return None, "it has no torch BatchSampler (batch_size=None or a custom batch_sampler)"
        now = capture_rng_state()
        try:
            restore_rng_state(self._fit_start)
            _draw_base_seed(loader)
            next(iter(batch_sampler.sampler), None)  # a RandomSampler makes all its global draws at the first index
            replayed = torch.equal(torch.get_rng_state(), now["torch"])
        finally:
            restore_rng_state(now)
        if not replayed:
            return None, why + "it (random numbers were drawn between on_fit_start and the loader's first iterator)"
        return _EpochStart(self._fit_start, {}, True), None

    def state(self, trainer: Any) -> list[dict[str, Any]]:
        """For ``on_save_checkpoint``: the position in the current epoch (tensors, numbers, tuples only)."""
        start = self._start
        if start is None and self._unsupported is None:
            return []
        progress = trainer.fit_loop.epoch_loop.batch_progress
        batches = int(progress.current.ready)
        limit = trainer.num_training_batches
        finished = bool(progress.is_last_batch) or (limit != float("inf") and batches >= limit)
        entry: dict[str, Any] = {
            "index": 0,
            "cairn_loader": _FORMAT,
            "batch_in_epoch": batches,
            "epoch_finished": finished,
        }
        if start is None:
            return [{**entry, "unsupported": self._unsupported}]
        epoch_start = {"rng": _rng_to_checkpoint(start.rng), "generators": dict(start.generators)}
        return [{**entry, **self._shape, "epoch_start": {**epoch_start, "seed_draw": start.seed_draw}}]

    def load(self, states: Any) -> None:
        """For ``on_load_checkpoint``: keep the position of an unfinished epoch for :meth:`resume`.

        Raises:
            CheckpointCorrupt: the entry was not written by cairn.
        """
        self._pending = None
        for state in states or []:
            if not isinstance(state, dict) or state.get("cairn_loader") not in (1, 2, _FORMAT):
                raise CheckpointCorrupt("the training DataLoader state in this checkpoint was not written by cairn")
            batches = state.get("batch_in_epoch")
            if type(batches) is not int:
                raise CheckpointCorrupt("the training DataLoader state lacks batch_in_epoch")
            if state.get("index") != 0 or state.get("epoch_finished") or batches <= 0:
                continue
            unsupported = state.get("unsupported")
            if isinstance(unsupported, str):
                self._pending = _Pending(None, batches, {}, unsupported)
                self._start, self._unsupported = None, unsupported  # a checkpoint later in this epoch says the same
                continue
            start = state.get("epoch_start")
            if start is None:
                continue
            # formats 1 and 2: "iter_after" (format 1 took the state right before iter(), with num_workers=0)
            seed_draw = bool(start.get("seed_draw", start.get("iter_after", True)))
            epoch_start = _EpochStart(
                _rng_from_checkpoint(start["rng"]), dict(start.get("generators") or {}), seed_draw
            )
            shape = {key: state[key] for key in ("batch_size", "samples") if type(state.get(key)) is int}
            self._pending = _Pending(epoch_start, batches, shape)
            self._start, self._shape = epoch_start, shape  # a checkpoint later in this epoch records the same
            self._unsupported = None

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
        reason = pending.unsupported or _not_resumable(loader, pending)
        if reason is not None:
            warnings.warn(
                f"cairn: the training DataLoader cannot continue its epoch exactly ({reason}); Lightning continues "
                "it with a new shuffle of the remaining batches",
                ResumeWarning,
                stacklevel=2,
            )
            return
        assert loader is not None
        batch_sampler = loader.batch_sampler
        assert isinstance(batch_sampler, BatchSampler)
        self._tail = _EpochTail(loader, batch_sampler, pending, rng_after)
        batch_sampler.sampler = self._tail
        if loader.num_workers > 0:
            iter(loader)  # persistent (checked): restarts the loader's own iterator, the one Lightning fetches from
            warnings.warn(
                f"cairn: the training DataLoader continues its epoch in the same order after {pending.batches} "
                "batches, but random numbers drawn inside its worker processes (e.g. augmentations in "
                "__getitem__) are not replayed: the workers' random streams do not continue where the interrupted "
                "workers' were, so a dataset that draws random numbers gives other samples than the uninterrupted fit",
                ResumeWarning,
                stacklevel=2,
            )

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
    if loader.num_workers > 0 and not _persistent(loader):
        return (
            "with num_workers > 0 and persistent_workers=False, Lightning starts the epoch's workers, which prefetch "
            "indices of a new shuffle at once, before any callback hook can reach the DataLoader, and only its "
            "private fetcher holds that iterator; pass persistent_workers=True (cairn then restarts the loader's "
            "own iterator) or num_workers=0"
        )
    if pending.start is None:
        return "the checkpoint records no epoch start"
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
        assert start is not None  # checked by resume()
        after = self._rng_after if self._rng_after is not None else capture_rng_state()
        restore_rng_state(start.rng)
        for role, generator in loader_generators(self._loader).items():  # the roles were checked by resume()
            generator.set_state(start.generators[role])
        if start.seed_draw:
            _draw_base_seed(self._loader)  # the interrupted epoch's iterator drew its base seed from this state
        indices = iter(self._original)
        for _ in range(self._pending.batches * self._batch_sampler.batch_size):
            next(indices)
        restore_rng_state(after)
        yield from indices
