"""Which files a ``ModelCheckpoint`` wrote or removed, read from its public attributes.

Lightning tells loggers *that* a ``ModelCheckpoint`` saved (``Logger.after_save_checkpoint``), and tells
callbacks that a checkpoint is being written (``Callback.on_save_checkpoint``), but neither says which
file. Like Lightning's own loggers (``lightning.pytorch.loggers.utilities._scan_checkpoints``, used by
``MLFlowLogger`` and ``WandbLogger``), :class:`CheckpointFiles` reads the candidates from the public
``last_model_path``, ``best_model_path`` and ``best_k_models`` and tells a new write by its ``stat``.
A removal is a file seen before that is gone from disk (``ModelCheckpoint`` prunes with
``strategy.remove_checkpoint``).

File times have the resolution of the kernel's clock tick, so a file rewritten in place (``last.ckpt``)
twice within one tick keeps its ``stat``. When the caller knows a save happened but no candidate
changed, the newest candidates count as written: uploading an unchanged file again is harmless,
missing a new one is not.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

_CLOCK_MARGIN_NS = 50_000_000  # file mtimes come from a coarser clock than time.time_ns()


@dataclass(frozen=True)
class _Stamp:
    """What tells two versions of a file apart without reading it."""

    mtime_ns: int
    ctime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: str) -> _Stamp | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return cls(info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino)


@dataclass
class FileChanges:
    """Files written since the last look (oldest first) and files removed since then."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    found_in_dir: list[str] = field(default_factory=list)  # of ``written``: known from ``dirpath`` only
    directories: list[str] = field(default_factory=list)  # tracked paths that are directories (not uploaded)

    def __bool__(self) -> bool:
        return bool(self.written or self.removed)


def candidate_paths(checkpoint_callback: Any) -> list[str]:
    """The files a ``ModelCheckpoint`` currently keeps track of (public attributes only)."""
    paths = [getattr(checkpoint_callback, "last_model_path", ""), getattr(checkpoint_callback, "best_model_path", "")]
    paths.extend(getattr(checkpoint_callback, "best_k_models", {}) or {})
    unique: dict[str, None] = {}
    for path in paths:
        if isinstance(path, str | os.PathLike) and os.fspath(path):
            unique.setdefault(os.fspath(path), None)
    return list(unique)


class CheckpointFiles:
    """The files of one ``ModelCheckpoint`` as last seen, to report what changed since."""

    def __init__(self) -> None:
        self._seen: dict[str, _Stamp] = {}
        self._looked_ns = time.time_ns()

    def baseline(self, checkpoint_callback: Any, *, older_than_ns: int | None = None) -> None:
        """Take the files present now (or only those last modified before ``older_than_ns``) as seen: e.g.
        restored from a checkpoint, written by an earlier fit."""
        present = {path: _Stamp.of(path) for path in candidate_paths(checkpoint_callback)}
        present.update(_files_in_dir(checkpoint_callback))  # in dirpath, not this fit's (unless rewritten)
        for path, stamp in present.items():
            if stamp is not None and (older_than_ns is None or stamp.mtime_ns < older_than_ns):
                self._seen[path] = stamp
        self._looked_ns = time.time_ns()

    def changes(self, checkpoint_callback: Any, *, saved: bool, scan_dir: bool = False) -> FileChanges:
        """What was written or removed since the last call; ``saved``: a write is known to have happened.

        Args:
            scan_dir: also take the checkpoint files in ``dirpath`` written since the last look (a file
                ``ModelCheckpoint`` saves on an exception is in none of its public attributes).
        """
        changes = FileChanges()
        current: dict[str, _Stamp] = {}
        for path in candidate_paths(checkpoint_callback):
            stamp = _Stamp.of(path)
            if stamp is not None and os.path.isfile(path):
                current[path] = stamp
            elif os.path.isdir(path):  # a distributed checkpoint (ModelParallelStrategy, sharded FSDP): a folder
                changes.directories.append(path)
        if scan_dir:
            found = {p: st for p, st in self._new_in_dir(checkpoint_callback).items() if p not in current}
            current.update(found)
            changes.found_in_dir = [p for p in found if self._seen.get(p) != found[p]]
        self._looked_ns = time.time_ns()
        changes.written = [path for path, stamp in current.items() if self._seen.get(path) != stamp]
        if saved and not changes.written and current:
            newest = max(stamp.mtime_ns for stamp in current.values())
            changes.written = [path for path, stamp in current.items() if stamp.mtime_ns == newest]
        changes.written.sort(key=lambda path: current[path].mtime_ns)
        changes.removed = self.removed(keep=current)
        self._seen.update(current)
        return changes

    def _new_in_dir(self, checkpoint_callback: Any) -> dict[str, _Stamp]:
        """Checkpoint files in ``dirpath`` modified since the last look (less a margin for the file system's
        coarser clock; files seen unchanged are not new)."""
        since = self._looked_ns - _CLOCK_MARGIN_NS
        return {path: stamp for path, stamp in _files_in_dir(checkpoint_callback).items() if stamp.mtime_ns >= since}

    def removed(self, keep: dict[str, _Stamp] | None = None) -> list[str]:
        """Forget and return the files seen before that are gone from disk (those in ``keep`` are not)."""
        gone = [path for path in self._seen if path not in (keep or {}) and not os.path.exists(path)]
        for path in gone:
            del self._seen[path]
        return gone


def _files_in_dir(checkpoint_callback: Any) -> dict[str, _Stamp]:
    """The checkpoint files in ``dirpath`` (public attributes ``dirpath``, ``FILE_EXTENSION``) with their stamps."""
    dirpath = getattr(checkpoint_callback, "dirpath", None)
    extension = getattr(checkpoint_callback, "FILE_EXTENSION", ".ckpt")
    if not dirpath or not os.path.isdir(dirpath):
        return {}
    found: dict[str, _Stamp] = {}
    with os.scandir(dirpath) as entries:
        for entry in entries:
            if entry.name.endswith(extension) and entry.is_file():
                path = os.path.join(os.fspath(dirpath), entry.name)
                stamp = _Stamp.of(path)
                if stamp is not None:
                    found[path] = stamp
    return found
