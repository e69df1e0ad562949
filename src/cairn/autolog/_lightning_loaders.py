"""The resumable training ``DataLoader`` of the Lightning integration (see :mod:`cairn.autolog.lightning`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

from cairn.autolog._lightning_frameworks import _rng_from_checkpoint, _rng_to_checkpoint
from cairn.errors import CheckpointCorrupt

# ------------------------------------------------------------------------------------------------ resumable loader


class _ResumableLoaderMethods:
    """The methods given to a training ``DataLoader`` while ``fit`` runs (see the module docstring).

    The callback stores ``_cairn_state_dict()`` in each checkpoint and, when resuming, hands it to
    ``_cairn_load_state_dict()`` before Lightning iterates the loader, so the next ``iter()`` yields
    exactly the batches the interrupted epoch had left, in the same shuffled order. (Public
    ``state_dict`` methods would make Lightning store the position in its own loop state, which a
    Trainer without the callback then fails to load.) The loader's class is swapped for a
    direct subclass of its own class holding these methods (a mixin base would change the instance
    layout, which forbids swapping ``__class__`` back), so they reach the original through
    ``_cairn_original`` rather than ``super()``.
    """

    _cairn_original: type
    _cairn_state: Any
    _cairn_pending: Any
    _cairn_raw: bool
    _cairn_limit: int | None

    def __iter__(self) -> Iterator[Any]:
        from cairn.checkpoint.dataloader import LoaderState, capture_epoch_start, resumable_position

        loader: Any = self
        original: Any = type(self)._cairn_original
        base_iter: Callable[[], Iterator[Any]] = original.__iter__.__get__(self)
        if self._cairn_raw:
            return base_iter()
        pending, self._cairn_pending = self._cairn_pending, None
        self._cairn_raw = True  # resumable_position/capture call iter(loader): plain iteration inside
        try:
            if pending is not None:
                iterator = resumable_position(loader, pending.batch_in_epoch, epoch_start=pending.epoch_start)
                state = LoaderState(pending.epoch_start, pending.batch_in_epoch)
            else:
                state = LoaderState(capture_epoch_start(loader))
                iterator = base_iter()
        finally:
            self._cairn_raw = False
        self._cairn_state = state
        return _tracked(iterator, state)

    def _cairn_state_dict(self) -> dict[str, Any]:
        """Position in the epoch, as tensors, numbers and tuples (loads under ``weights_only=True``)."""
        state = self._cairn_state
        start = state.epoch_start
        limit = self._cairn_limit
        finished = state.epoch_finished or (limit is not None and state.batch_in_epoch >= limit)
        return {
            "cairn_loader": 1,
            "batch_in_epoch": state.batch_in_epoch,
            "epoch_finished": finished,
            "epoch_start": None
            if start is None
            else {"rng": _rng_to_checkpoint(start.rng), "generators": dict(start.generators)},
        }

    def _cairn_load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` resume the recorded epoch where it stopped (nothing if it had ended)."""
        from cairn.checkpoint.dataloader import EpochStart, LoaderState

        if not isinstance(state, dict) or state.get("cairn_loader") != 1:
            raise CheckpointCorrupt("the training DataLoader state in this checkpoint was not written by cairn")
        start = state.get("epoch_start")
        batches = state.get("batch_in_epoch")
        if type(batches) is not int:
            raise CheckpointCorrupt("the training DataLoader state lacks batch_in_epoch")
        size = len(self)  # type: ignore[arg-type]
        if start is None or state.get("epoch_finished") or batches <= 0 or batches >= size:
            self._cairn_pending = None
            return
        epoch_start = EpochStart(_rng_from_checkpoint(start["rng"]), dict(start.get("generators") or {}))
        self._cairn_pending = LoaderState(epoch_start, batches)


def _tracked(iterator: Iterator[Any], state: Any) -> Iterator[Any]:
    for batch in iterator:
        state.batch_in_epoch += 1  # before the step runs: a checkpoint taken during it includes this batch
        yield batch
    state.epoch_finished = True


_resumable_classes: dict[type, type] = {}


def _make_resumable(loader: DataLoader[Any]) -> type | None:
    """Give ``loader`` a resumable class (a subclass of its own); return the original class, or None if
    the loader already has a ``state_dict`` of its own or is not a ``DataLoader``."""
    from cairn.checkpoint.dataloader import LoaderState

    original = type(loader)
    if not isinstance(loader, DataLoader) or hasattr(loader, "state_dict") or not hasattr(loader, "__len__"):
        return None
    try:
        len(loader)
    except TypeError:  # an IterableDataset without __len__
        return None
    resumable = _resumable_classes.get(original)
    if resumable is None:
        methods = {
            name: value
            for name, value in vars(_ResumableLoaderMethods).items()
            if name in ("__iter__", "_cairn_state_dict", "_cairn_load_state_dict")
        }
        namespace = {**methods, "_cairn_original": original, "__module__": original.__module__}
        resumable = type(original.__name__, (original,), namespace)
        _resumable_classes[original] = resumable
    state = {"_cairn_state": LoaderState(None), "_cairn_pending": None, "_cairn_raw": False, "_cairn_limit": None}
    for name, value in state.items():
        object.__setattr__(loader, name, value)
    loader.__class__ = resumable
    return original


def _undo_resumable(loader: Any, original: type) -> None:
    if type(loader).__dict__.get("_cairn_original") is original:
        loader.__class__ = original
        for name in ("_cairn_state", "_cairn_pending", "_cairn_raw", "_cairn_limit"):
            loader.__dict__.pop(name, None)
