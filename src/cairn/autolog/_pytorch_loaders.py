"""Plain-PyTorch autolog: DataLoader tracking (epochs, batches, positions) for :mod:`cairn.autolog.pytorch`.

Per-loader bookkeeping (:class:`_LoaderTrack`), what tells the training loader apart on resume, and the
patched ``DataLoader.__iter__`` with its epoch start (``_BaseDataLoaderIter.__next__``, once per batch,
stays in :mod:`cairn.autolog.pytorch` next to the state it updates). What lives there (``_state``,
``_report``) is reached through it at call time.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

from cairn.checkpoint.dataloader import EpochStart, LoaderState, capture_epoch_start, resumable_position

# -- state -----------------------------------------------------------------------------------------


class _LoaderTrack:
    """Epoch and batch bookkeeping of one DataLoader."""

    __slots__ = ("__weakref__", "armed", "batch", "epoch", "epoch_start", "finished", "length", "loader", "train")

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = weakref.ref(loader)
        self.epoch = -1
        self.batch = 0
        self.finished = False
        self.train = False
        self.epoch_start: EpochStart | None = None
        self.armed: tuple[dict[str, Any] | None, int | None] | None = None
        try:
            self.length: int | None = len(loader)
        except TypeError:
            self.length = None

    def position(self, *, boundary: bool) -> dict[str, Any]:
        """This loader's position as a checkpoint tree (``boundary``: the next epoch has not started)."""
        if boundary:
            state = LoaderState(epoch_start=None, batch_in_epoch=0, epoch_finished=True)
        else:
            state = LoaderState(epoch_start=self.epoch_start, batch_in_epoch=self.batch, epoch_finished=self.finished)
        loader = self.loader()
        return {**state.to_tree(), "fingerprint": _fingerprint(loader) if loader is not None else None}


def _fingerprint(loader: DataLoader[Any]) -> dict[str, Any]:
    """What tells the training loader apart from others when a resumed process iterates them."""
    dataset = loader.dataset
    try:
        size: int | None = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
    kind = type(dataset)
    return {"dataset": f"{kind.__module__}.{kind.__qualname__}", "size": size, "batch_size": loader.batch_size}


def _fits(tree: dict[str, Any] | None, loader: DataLoader[Any]) -> bool:
    """Whether ``loader`` looks like the loader whose position ``tree`` holds (True when unknown)."""
    recorded = tree.get("fingerprint") if isinstance(tree, dict) else None
    return recorded is None or recorded == _fingerprint(loader)


class _PositionView:
    """Gives ``log_checkpoint(loader=...)`` a tracked plain DataLoader's position (``state_dict()``)."""

    def __init__(self, tree: dict[str, Any]) -> None:
        self._tree = tree

    def state_dict(self) -> dict[str, Any]:
        return self._tree


# -- patched methods ------------------------------------------------------------------------------


def _wrap_iter(original: Callable[..., Any]) -> Callable[..., Any]:
    def __iter__(self: DataLoader[Any]) -> Any:
        from cairn.autolog import pytorch as core

        state = core._state
        if state.config is None or state.in_replay:
            return original(self)
        track = None
        iterator = None
        try:
            track = state.loaders.get(self)
            if track is None:
                track = _LoaderTrack(self)
                state.loaders[self] = track
            iterator = _start_epoch(self, track)
        except Exception as exc:
            core._report("tracking the DataLoader epoch", exc)
        if iterator is None:
            iterator = original(self)
        if track is not None:
            with contextlib.suppress(AttributeError, TypeError):
                iterator._cairn_track = track
        return iterator

    return __iter__


def _start_epoch(loader: DataLoader[Any], track: _LoaderTrack) -> Any:
    """Bookkeeping at ``iter(loader)``: epoch-boundary checkpoint, pending resume, epoch start.

    Returns an iterator when the epoch resumes mid-way (else ``None``: the caller iterates normally).
    """
    from cairn.autolog import pytorch as core
    from cairn.autolog._pytorch_checkpoints import _apply_restore, _checkpoint_now

    state = core._state
    config = state.config
    assert config is not None
    session = state.session
    if session is not None and track.train and track.epoch >= 0:
        every = config.checkpoint_every_n_epochs or 0
        epoch_due = every > 0 and track.finished and (track.epoch + 1) % every == 0
        if session.ckpt_due or epoch_due:
            _checkpoint_now(session, track, boundary=True)
    if state.restore is not None:
        if _fits(state.restore.dataloader_state, loader):
            _apply_restore(track)
        elif state.restore.unfit is None:
            state.restore.unfit = track  # restored at the model's first training forward, epoch from its start
    elif state.restore_position is not None and _fits(state.restore_position[0], loader):
        track.armed, state.restore_position = state.restore_position, None
        track.train = True
        state.train_track = track
    armed, track.armed = track.armed, None
    if armed is not None:
        tree, epoch = armed
        track.epoch = epoch if epoch is not None else track.epoch + 1
    else:
        tree = None
        track.epoch += 1
    track.batch = 0
    track.finished = False
    position = LoaderState.from_tree(tree) if tree is not None else None
    if position is not None and position.epoch_start is not None and not position.epoch_finished:
        track.epoch_start = position.epoch_start
        state.in_replay = True
        try:
            iterator = resumable_position(loader, position.batch_in_epoch, epoch_start=position.epoch_start)
        finally:
            state.in_replay = False
        track.batch = position.batch_in_epoch
        return iterator
    track.epoch_start = capture_epoch_start(loader)  # ~0.1 ms per epoch: what a mid-epoch resume needs
    return None
