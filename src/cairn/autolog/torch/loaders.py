"""DataLoader tracking: epochs, batches and positions of the loaders a training loop iterates.

:class:`DataTracking` holds one :class:`LoaderTrack` per DataLoader (weakly), knows the *training*
loader (the one whose batches are followed by optimizer steps) and starts epochs, fast-forwarding an
epoch armed with a checkpoint's position. When checkpoints are taken and restored is decided by the
integration (:mod:`cairn.autolog.torch.integration`).
"""

from __future__ import annotations

import weakref
from typing import Any

from torch.utils.data import DataLoader

from cairn.checkpoint.dataloader import EpochStart, LoaderState, capture_epoch_start, resumable_position

__all__ = ["DataTracking", "LoaderTrack", "PositionView", "fingerprint", "fingerprint_changes", "fits"]

ArmedPosition = tuple[dict[str, Any] | None, int | None]
"""A checkpoint's loader position tree and the epoch it belongs to."""


class LoaderTrack:
    """Epoch and batch bookkeeping of one DataLoader."""

    __slots__ = ("__weakref__", "armed", "batch", "epoch", "epoch_start", "finished", "length", "loader", "train")

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = weakref.ref(loader)
        self.epoch = -1
        self.batch = 0
        self.finished = False
        self.train = False
        self.epoch_start: EpochStart | None = None
        self.armed: ArmedPosition | None = None
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
        return {**state.to_tree(), "fingerprint": fingerprint(loader) if loader is not None else None}

    def batch_follows(self) -> bool:
        """Whether another batch of this epoch follows (so the present moment is a batch boundary)."""
        return self.length is None or self.batch < self.length


def fingerprint(loader: DataLoader[Any]) -> dict[str, Any]:
    """What tells the training loader apart from others when a resumed process iterates them."""
    dataset = loader.dataset
    try:
        size: int | None = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
    return {
        "dataset": _qualname(dataset),
        "size": size,
        "batch_size": loader.batch_size,
        "sampler": _qualname(loader.sampler),
        "drop_last": loader.drop_last,
        "num_replicas": getattr(loader.sampler, "num_replicas", None),  # a DistributedSampler's world size
    }


def _qualname(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def fingerprint_changes(recorded: Any, loader: DataLoader[Any] | None) -> list[str]:
    """What differs between a checkpoint's recorded fingerprint and ``loader``'s, as ``key old -> new``
    (keys an older checkpoint did not record are not compared)."""
    if not isinstance(recorded, dict) or loader is None:
        return []
    now = fingerprint(loader)
    return [f"{key} {recorded[key]!r} -> {now[key]!r}" for key in now if key in recorded and recorded[key] != now[key]]


def fits(tree: dict[str, Any] | None, loader: DataLoader[Any]) -> bool:
    """Whether ``loader`` looks like the loader whose position ``tree`` holds (True when unknown)."""
    recorded = tree.get("fingerprint") if isinstance(tree, dict) else None
    return recorded is None or not fingerprint_changes(recorded, loader)


class PositionView:
    """Gives ``log_checkpoint(loader=...)`` a tracked plain DataLoader's position (``state_dict()``)."""

    def __init__(self, tree: dict[str, Any]) -> None:
        self._tree = tree

    def state_dict(self) -> dict[str, Any]:
        return self._tree


class DataTracking:
    """The DataLoaders seen by the patched ``__iter__``/``__next__`` and which of them trains."""

    def __init__(self) -> None:
        self.loaders: weakref.WeakKeyDictionary[DataLoader[Any], LoaderTrack] = weakref.WeakKeyDictionary()
        self.current: LoaderTrack | None = None  # the loader that gave the last batch
        self.train_track: LoaderTrack | None = None
        self.in_replay = False  # fast-forwarding: the iter() inside is not a new epoch
        self.waiting_position: ArmedPosition | None = None  # a checkpoint's position for a later matching loader

    def track(self, loader: DataLoader[Any]) -> LoaderTrack:
        found = self.loaders.get(loader)
        if found is None:
            found = LoaderTrack(loader)
            self.loaders[loader] = found
        return found

    def mark_training(self, track: LoaderTrack) -> None:
        track.train = True
        self.train_track = track

    def forget_session(self) -> None:
        """A finished session's loaders must not become the next session's training loader."""
        self.current = None
        self.train_track = None

    def take_waiting_position(self, loader: DataLoader[Any], track: LoaderTrack) -> None:
        """Arm ``track`` with a waiting checkpoint position if ``loader`` fits it."""
        if self.waiting_position is not None and fits(self.waiting_position[0], loader):
            track.armed, self.waiting_position = self.waiting_position, None
            self.mark_training(track)

    def begin_epoch(self, loader: DataLoader[Any], track: LoaderTrack) -> Any:
        """Start ``track``'s next epoch (or the armed one); returns an iterator when it resumes mid-way, else None."""
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
            self.in_replay = True
            try:
                iterator = resumable_position(loader, position.batch_in_epoch, epoch_start=position.epoch_start)
            finally:
                self.in_replay = False
            track.batch = position.batch_in_epoch
            return iterator
        track.epoch_start = capture_epoch_start(loader)  # ~0.1 ms per epoch: what a mid-epoch resume needs
        return None
