"""Finding and cleaning what killed writers leave in a local artifact directory (``cairn gc``).

A write to a local store goes through hidden names: ``.cairn-tmp-*`` (a file being written, or the
staging directory of a model being logged) and ``.cairn-old-<name>`` (the previous ``<name>`` while a
replace without an atomic exchange swaps it). A process killed mid-write leaves them behind.

Whether an entry is still in use is decided by age alone: an entry is stale when nothing in it (the
entry itself, any file or directory below it) was modified for ``older_than`` seconds. A live writer
creates or writes a file at least every few seconds, so an hour is a safe default; no pid is
recorded, as a store may be shared by several machines. A stale ``.cairn-old-<name>`` whose
``<name>`` is missing is the only copy of that entry and is renamed back, never removed.

Beyond the artifact directories, ``cairn gc`` also finds:

- **emptied run directories** (:func:`find_empty_run_dirs`): ``<experiment root>/<run_id>/`` holding
  nothing but empty directories, of a run the store no longer has; removed with :func:`os.rmdir` only,
  so a file written meanwhile makes the removal fail harmlessly;
- **checkpoint staging** (:func:`find_checkpoint_leftovers`): partial checkpoint writes
  (``<staging>/<run_id>/checkpoints/.tmp-*``) and, in a staging area that belongs to one store, the
  whole staging directory of a run that store no longer has;
- **temporary staging directories** (:func:`find_dead_temp_dirs`): directories in the system temp dir
  named ``cairn-tmp-<pid>-<kind>-*`` (see :func:`temp_dir_prefix`) whose process is dead.

All of them only once stale, like the entries above.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cairn.artifacts.local import ASIDE_PREFIX, TEMP_PREFIX

__all__ = [
    "TEMP_DIR_PREFIX",
    "Leftover",
    "LeftoverAction",
    "clean_leftover",
    "find_checkpoint_leftovers",
    "find_dead_temp_dirs",
    "find_empty_run_dirs",
    "find_leftovers",
    "remove_empty_tree",
    "temp_dir_prefix",
]

TEMP_DIR_PREFIX = "cairn-tmp-"
"""Names of cairn's staging directories in the system temp dir: ``cairn-tmp-<pid>-<kind>-<random>``."""

CHECKPOINT_TEMP_PREFIX = ".tmp-"
"""A checkpoint being written in a staging area (:data:`cairn.checkpoint.local.TEMP_PREFIX`, which is
not imported here: :mod:`cairn.checkpoint` imports torch)."""

CHECKPOINT_DIR = "checkpoints"

_TEMP_DIR = re.compile(re.escape(TEMP_DIR_PREFIX) + r"(\d+)-")
_RUN_ID = re.compile(r"[0-9a-f]{32}")  # the ids of cairn's runs (and MLflow's, kept by imports)


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


def temp_dir_prefix(kind: str) -> str:
    """The ``prefix=`` of a staging directory in the system temp dir that ``cairn gc`` can find once its
    process is dead: ``cairn-tmp-<pid>-<kind>-``."""
    return f"{TEMP_DIR_PREFIX}{os.getpid()}-{kind}-"


def _stale(path: str, cutoff: float) -> tuple[int, float] | None:
    """``(size, newest mtime)`` of ``path`` when nothing in it changed after ``cutoff``, else ``None``."""
    try:
        size, newest = _usage(path)
    except FileNotFoundError:
        return None
    return (size, newest) if newest <= cutoff else None


def _has_files(path: str) -> bool:
    for _current, dirs, files in os.walk(path):
        if files or any(os.path.islink(os.path.join(_current, name)) for name in dirs):
            return True
    return False


def find_empty_run_dirs(
    root: str | os.PathLike[str], *, is_live: Callable[[str], bool], older_than: float, now: float | None = None
) -> list[Path]:
    """The run directories directly under the experiment artifact directory ``root`` (named like a run id:
    32 hex digits) that hold no file (only empty directories, e.g. ``artifacts/``), belong to no run
    (``is_live(name)`` is false) and were untouched for ``older_than`` seconds."""
    cutoff = (time.time() if now is None else now) - older_than
    found = []
    try:
        entries = sorted(os.scandir(os.fspath(root)), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        if not _RUN_ID.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        if _has_files(entry.path) or _stale(entry.path, cutoff) is None or is_live(entry.name):
            continue
        found.append(Path(entry.path))
    return found


def remove_empty_tree(path: str | os.PathLike[str], *, up_to: str | os.PathLike[str] | None = None) -> bool:
    """Remove ``path`` and the empty directories below it with :func:`os.rmdir` (never a file: one
    written meanwhile makes this fail), then its empty parents up to, not including, ``up_to``.

    Returns:
        Whether ``path`` was removed.
    """
    top = os.fspath(path)
    try:
        for current, _dirs, _files in os.walk(top, topdown=False):
            os.rmdir(current)
    except OSError:  # not empty (any more), or gone
        return False
    if up_to is not None:
        stop = os.path.realpath(up_to)
        parent = os.path.dirname(os.path.realpath(top))
        while parent.startswith(stop + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)
    return True


def find_checkpoint_leftovers(
    staging_root: str | os.PathLike[str],
    *,
    is_live: Callable[[str], bool] | None,
    older_than: float,
    now: float | None = None,
) -> list[Leftover]:
    """What killed checkpoint writers and purged runs left in a checkpoint staging area.

    Args:
        staging_root: the directory holding ``<run_id>/checkpoints/`` staging directories.
        is_live: whether a run id belongs to a run of the store; ``None`` when the staging area may be
            shared by several stores (then only partial writes are found, never a run's staging).
        older_than: seconds without any modification before an entry counts as stale.
        now: the current time (default: :func:`time.time`).
    """
    cutoff = (time.time() if now is None else now) - older_than
    found = []
    try:
        runs = sorted(os.scandir(os.fspath(staging_root)), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    for run in runs:
        if not run.is_dir(follow_symlinks=False):
            continue
        if is_live is not None and not is_live(run.name):
            usage = _stale(run.path, cutoff)
            if usage is not None:
                found.append(Leftover(Path(run.path), *usage, LeftoverAction.REMOVE))
            continue
        checkpoints = os.path.join(run.path, CHECKPOINT_DIR)
        try:
            entries = sorted(os.scandir(checkpoints), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name.startswith(CHECKPOINT_TEMP_PREFIX) and not entry.is_symlink():
                usage = _stale(entry.path, cutoff)
                if usage is not None:
                    found.append(Leftover(Path(entry.path), *usage, LeftoverAction.REMOVE))
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on Windows, where signal 0 would terminate it: always assumed)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def find_dead_temp_dirs(
    directory: str | os.PathLike[str] | None = None, *, older_than: float, now: float | None = None
) -> list[Leftover]:
    """This user's ``cairn-tmp-<pid>-*`` staging directories in ``directory`` (default: the system temp
    dir) whose process is dead and that were untouched for ``older_than`` seconds."""
    cutoff = (time.time() if now is None else now) - older_than
    uid = os.getuid() if hasattr(os, "getuid") else None
    found = []
    try:
        entries = sorted(os.scandir(os.fspath(directory or tempfile.gettempdir())), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _TEMP_DIR.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if uid is not None and entry.stat(follow_symlinks=False).st_uid != uid:
            continue
        if _alive(int(match.group(1))):
            continue
        usage = _stale(entry.path, cutoff)
        if usage is not None:
            found.append(Leftover(Path(entry.path), *usage, LeftoverAction.REMOVE))
    return found
