"""Mirror the files of a Trainer's ``ModelCheckpoint`` callbacks into a run (see :mod:`cairn.autolog.lightning`).

Fed from public hooks only: ``Logger.after_save_checkpoint`` (right after each save, when a
``CairnLogger`` is attached) or the next hook of ``CairnCheckpointCallback`` (``on_train_batch_start``,
``on_train_epoch_start``, ``on_validation_start``, ``teardown``) after its ``on_save_checkpoint`` saw a
checkpoint being written. New files are handed to the uploader, pruned ones deleted from the run.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cairn.autolog._lightning_checkpoint_files import CheckpointFiles
from cairn.autolog._lightning_uploads import _kind_of, _remote_name, _Uploader


@dataclass
class _Watched:
    """One ``ModelCheckpoint``: its state dict (identity, also through Lightning's weakref proxy) and files."""

    state: dict[str, Any]
    subdir: str
    files: CheckpointFiles = field(default_factory=CheckpointFiles)


class CheckpointMirror:
    """Hands the files ``ModelCheckpoint`` callbacks write to an :class:`_Uploader`, and their removals.

    The files of the first ``ModelCheckpoint`` go to ``lightning_checkpoints/``, those of the next ones to
    ``lightning_checkpoints/1/``, ``.../2/``.
    """

    def __init__(self, uploader: _Uploader) -> None:
        self.uploader = uploader
        self._watched: list[_Watched] = []
        self._told_directories = False

    def watch(self, checkpoint_callbacks: Iterable[Any], *, older_than_ns: int | None = None) -> None:
        """Track these callbacks; files they already have (restored from a checkpoint) are not uploaded, or only
        those last modified before ``older_than_ns``."""
        for position, checkpoint_callback in enumerate(checkpoint_callbacks):
            watched = self._find(checkpoint_callback, "" if position == 0 else str(position))
            watched.files.baseline(checkpoint_callback, older_than_ns=older_than_ns)

    def sync(
        self,
        checkpoint_callbacks: Iterable[Any],
        meta: Mapping[str, Any],
        *,
        saved_by: Any = None,
        saved: bool = False,
        scan_dir: bool = False,
    ) -> None:
        """Upload what the callbacks wrote and delete what they removed since the last sync.

        Args:
            checkpoint_callbacks: the Trainer's ``checkpoint_callbacks``, in order.
            meta: index entry fields of this save (``global_step``, ``epoch``, ``log_step``).
            saved_by: the ``ModelCheckpoint`` known to have just saved (``after_save_checkpoint``'s argument).
            saved: some of them saved since the last sync (``on_save_checkpoint`` was called).
            scan_dir: also upload checkpoint files new in their ``dirpath`` (kind ``"exception"``): the file
                ``ModelCheckpoint(save_on_exception=True)`` writes is in none of its public attributes.
        """
        for position, checkpoint_callback in enumerate(checkpoint_callbacks):
            watched = self._find(checkpoint_callback, "" if position == 0 else str(position))
            just_saved = saved or (saved_by is not None and saved_by.__dict__ is watched.state)
            self._sync_one(watched, checkpoint_callback, meta, saved=just_saved, scan_dir=scan_dir)

    def sync_removals(self) -> None:
        """Delete from the run the files of every watched callback that are gone from disk."""
        for watched in self._watched:
            for path in watched.files.removed():
                self.uploader.delete(_remote_name(watched.subdir, path))

    def _find(self, checkpoint_callback: Any, subdir: str) -> _Watched:
        state = checkpoint_callback.__dict__
        for watched in self._watched:
            if watched.state is state:
                return watched
        watched = _Watched(state, subdir)
        self._watched.append(watched)
        return watched

    def _sync_one(
        self, watched: _Watched, checkpoint_callback: Any, meta: Mapping[str, Any], *, saved: bool, scan_dir: bool
    ) -> None:
        changes = watched.files.changes(checkpoint_callback, saved=saved, scan_dir=scan_dir)
        if changes.directories and not self._told_directories:
            self._told_directories = True
            self._tell_directories(changes.directories)
        for path in changes.removed:
            self.uploader.delete(_remote_name(watched.subdir, path))
        for path in changes.written:
            entry = {
                **meta,
                "kind": "exception" if path in changes.found_in_dir else _kind_of(checkpoint_callback, path),
                "local_path": os.path.abspath(path),
                "monitor": getattr(checkpoint_callback, "monitor", None),
                "score": _score(getattr(checkpoint_callback, "current_score", None)),
                "time": time.time_ns() // 1_000_000,
            }
            self.uploader.put(path, _remote_name(watched.subdir, path), entry)
        best = getattr(checkpoint_callback, "best_model_path", "")
        if changes.written and best:
            self.uploader.set_best(watched.subdir or "0", _remote_name(watched.subdir, best))

    def _tell_directories(self, paths: list[str]) -> None:
        from cairn.autolog.config import AutologWarning, logger

        message = (
            f"cairn lightning: ModelCheckpoint wrote a distributed checkpoint (a directory: {paths[0]}), as "
            "ModelParallelStrategy and sharded FSDP do; cairn uploads single-file .ckpt checkpoints only, so "
            "this run gets none of these and checkpoint_path cannot resume it: the checkpoints stay on local "
            "disk (ModelParallelStrategy(save_distributed_checkpoint=False) writes one consolidated file)"
        )
        if self.uploader.silent:
            logger.warning(message)
        else:
            warnings.warn(message, AutologWarning, stacklevel=2)


def _score(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
