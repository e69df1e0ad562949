"""Finding and cleaning what killed writers leave in a local artifact directory (``cairn gc``).

A write to a local store goes through hidden names: ``.cairn-tmp-*`` (a file being written, or the
staging directory of a model being logged) and ``.cairn-old-<name>`` (the previous ``<name>`` while a
replace without an atomic exchange swaps it). A process killed mid-write leaves them behind.

Whether an entry is still in use is decided by age alone: an entry is stale when nothing in it (the
entry itself, any file or directory below it) was modified for ``older_than`` seconds. A live writer
creates or writes a file at least every few seconds, so an hour is a safe default; no pid is
recorded, as a store may be shared by several machines. A stale ``.cairn-old-<name>`` whose
``<name>`` is missing is the only copy of that entry and is renamed back, never removed.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cairn.artifacts.local import ASIDE_PREFIX, TEMP_PREFIX

__all__ = ["Leftover", "LeftoverAction", "clean_leftover", "find_leftovers"]


class LeftoverAction(Enum):
    REMOVE = "remove"
    RESTORE = "restore"


@dataclass(frozen=True)
class Leftover:
    """A stale hidden entry: ``size`` bytes of files, last modified at ``mtime`` (seconds since the epoch)."""

    path: Path
    size: int
    mtime: float
    action: LeftoverAction

    @property
    def original(self) -> Path:
        """For a ``.cairn-old-<name>`` entry, the ``<name>`` it was moved aside from."""
        return self.path.with_name(self.path.name[len(ASIDE_PREFIX) :])


def _usage(path: str) -> tuple[int, float]:
    """Total size of the files under ``path`` and the newest modification time of anything there."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size, info.st_mtime
    size, newest = 0, info.st_mtime
    for current, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                child = os.lstat(os.path.join(current, name))
            except FileNotFoundError:
                continue
            newest = max(newest, child.st_mtime)
            if not stat.S_ISDIR(child.st_mode):
                size += child.st_size
    return size, newest


def _hidden_entries(root: str) -> Iterator[str]:
    """Every ``.cairn-tmp-*``/``.cairn-old-*`` entry under ``root``, not descending into them or symlinks."""
    for current, dirs, files in os.walk(root):
        for name in files:
            if name.startswith((TEMP_PREFIX, ASIDE_PREFIX)):
                yield os.path.join(current, name)
        hidden = [name for name in dirs if name.startswith((TEMP_PREFIX, ASIDE_PREFIX))]
        dirs[:] = [name for name in dirs if name not in hidden and not os.path.islink(os.path.join(current, name))]
        for name in hidden:
            yield os.path.join(current, name)


def find_leftovers(root: str | os.PathLike[str], *, older_than: float, now: float | None = None) -> list[Leftover]:
    """The stale hidden entries under the local directory ``root`` (see the module docstring).

    Args:
        root: an artifact directory (an experiment's, a run's, or the whole artifact root).
        older_than: seconds without any modification before an entry counts as stale.
        now: the current time (default: :func:`time.time`).
    """
    cutoff = (time.time() if now is None else now) - older_than
    found = []
    for path in _hidden_entries(os.fspath(root)):
        try:
            size, newest = _usage(path)
        except FileNotFoundError:  # finished or cleaned meanwhile
            continue
        if newest > cutoff:
            continue
        name = os.path.basename(path)
        original = os.path.join(os.path.dirname(path), name[len(ASIDE_PREFIX) :])
        restore = name.startswith(ASIDE_PREFIX) and len(name) > len(ASIDE_PREFIX) and not os.path.lexists(original)
        found.append(Leftover(Path(path), size, newest, LeftoverAction.RESTORE if restore else LeftoverAction.REMOVE))
    return sorted(found, key=lambda item: str(item.path))


def clean_leftover(leftover: Leftover) -> bool:
    """Remove the entry, or rename a ``.cairn-old-<name>`` back to ``<name>``; ``False`` if it changed meanwhile."""
    path = os.fspath(leftover.path)
    if leftover.action is LeftoverAction.RESTORE:
        try:
            os.rename(path, os.fspath(leftover.original))
        except OSError:  # gone, or the entry was recreated meanwhile
            return False
        return True
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False
    return True
