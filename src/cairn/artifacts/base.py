"""The :class:`ArtifactStore` contract, and helpers shared by its implementations."""

from __future__ import annotations

import abc
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import InvalidArgument, UnsafePath
from cairn.tracking.entities import FileInfo

__all__ = [
    "ArtifactStore",
    "LocalFile",
    "collect_files",
    "commit_last",
    "is_inside",
    "replace_target",
    "should_show_progress",
    "transfer_progress",
]

PROGRESS_MIN_BYTES = 50 * 1024 * 1024
"""A transfer shows a progress bar when it moves more than this many bytes ..."""
PROGRESS_MIN_FILES = 200
"""... or more than this many files (and stderr is a terminal)."""


class ArtifactStore(abc.ABC):
    """Files stored under one root URI, usually one run's artifact root.

    Every ``path``/``artifact_path``/``artifact_file`` argument is relative to :attr:`root`, uses ``/``,
    and goes through :func:`cairn.artifacts.paths.safe_relpath` first: anything that could leave the
    root raises :class:`cairn.errors.UnsafePath` before storage is touched. ``None`` or ``""`` names
    the root itself. A missing path raises :class:`cairn.errors.ArtifactNotFound`, except that the root
    of a store nothing was written to yet lists as empty and downloads as an empty directory.

    Attributes:
        root: the root URI as given (trailing ``/`` removed); a plain absolute path for local stores.
    """

    root: str

    @abc.abstractmethod
    def put_file(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload one local file to ``<artifact_path>/<basename of local_path>``, replacing any file there.

        Raises:
            InvalidArgument: ``local_path`` is not an existing file.
        """

    @abc.abstractmethod
    def put_dir(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload the contents of ``local_dir``, recursively, under ``artifact_path`` (MLflow's log_artifacts).

        The whole tree is checked before anything is uploaded: a symlink inside ``local_dir`` that
        points outside it, a symlink cycle, or a file name that is not a safe artifact path raises
        :class:`UnsafePath` and uploads nothing. Symlinks that stay inside are followed. Empty
        directories are not recorded (object stores have no directories).

        Raises:
            InvalidArgument: ``local_dir`` is not a directory, or holds a special file or broken symlink.
            UnsafePath: see above.
        """

    @abc.abstractmethod
    def put_bytes(self, data: bytes, artifact_file: str) -> None:
        """Write ``data`` as the file ``artifact_file``, replacing it if present."""

    @abc.abstractmethod
    def open(self, path: str) -> BinaryIO:
        """Open the file at ``path`` for binary reading; the caller closes it.

        Raises:
            ArtifactNotFound: nothing exists at ``path``.
            InvalidArgument: ``path`` is a directory.
        """

    @abc.abstractmethod
    def list(self, path: str | None = None) -> list[FileInfo]:
        """List the direct children of the directory ``path``, sorted by path.

        Returned paths are relative to the root (``list("a")`` gives ``a/x``, ``a/sub``). Directories
        have ``file_size=None``. A path naming a file lists as ``[]`` (as in MLflow).

        Raises:
            ArtifactNotFound: ``path`` is not the root and nothing exists there.
        """

    @abc.abstractmethod
    def download(self, path: str | None, dst_dir: str | os.PathLike[str]) -> Path:
        """Copy the file or directory ``path`` into the local directory ``dst_dir`` (created if needed).

        As in MLflow, the relative path is kept: ``download("a/b.txt", d)`` writes and returns
        ``d/a/b.txt``; ``download(None, d)`` copies the whole root into ``d`` and returns ``d``.
        Each local file is written atomically.

        Raises:
            ArtifactNotFound: ``path`` is not the root and nothing exists there.
            UnsafePath: a stored name under ``path`` would land outside ``dst_dir``.
        """

    @abc.abstractmethod
    def delete(self, path: str | None = None) -> None:
        """Delete the file or directory (recursively) at ``path``; ``None`` deletes everything under the root.

        Raises:
            ArtifactNotFound: ``path`` is not the root and nothing exists there.
        """

    @abc.abstractmethod
    def exists(self, path: str | None = None) -> bool:
        """Whether a file or directory exists at ``path`` (for the root: whether anything was stored)."""

    def replace_dir(
        self,
        local_dir: str | os.PathLike[str],
        artifact_path: str,
        *,
        commit_file: str | None = None,
        durable_now: bool = True,
    ) -> None:
        """Make ``artifact_path`` hold exactly the files of ``local_dir``, replacing what was there.

        This default, for stores that cannot rename a directory: every new file is uploaded first
        (``commit_file``, a path relative to ``local_dir`` such as ``MLmodel``, after all others),
        then the old files the new directory does not have are deleted. Nothing is deleted before
        the new files are all in place. What a reader may see meanwhile: the old files until they
        are overwritten one by one, so a mix of old and new files under the old ``commit_file``
        until the new one lands (a model's hashes then refuse to load it), and the new files plus
        old leftovers until those are deleted. A writer killed half-way leaves such a mix behind
        until the next replace. :class:`~cairn.artifacts.local.LocalArtifactStore` swaps atomically.

        Args:
            local_dir: the new directory's contents.
            artifact_path: where under the root (not the root itself).
            commit_file: uploaded last.
            durable_now: ignored here (uploads are durable when they return).

        Raises:
            InvalidArgument: ``artifact_path`` is the root, or ``local_dir`` is not a directory.
        """
        del durable_now
        rel = replace_target(artifact_path)
        files = commit_last(collect_files(local_dir), commit_file)
        old = set(self._files_below(rel)) if self.exists(rel) else set()
        for item in files:
            self.put_file(item.source, join(rel, item.relpath).rpartition("/")[0])
        for stale in sorted(old - {join(rel, item.relpath) for item in files}):
            self.delete(stale)

    def _files_below(self, path: str) -> Iterator[str]:
        for info in self.list(path):
            if info.is_dir:
                yield from self._files_below(info.path)
            else:
                yield info.path

    def uri_for(self, path: str | None = None) -> str:
        """The URI of ``path`` under this store's root (the root itself for ``None``)."""
        rel = safe_relpath(path)
        return f"{self.root}/{rel}" if rel else self.root

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A regular local file found by :func:`collect_files`."""

    source: Path
    relpath: str
    size: int


def replace_target(artifact_path: str | None) -> str:
    """The safe relative path a ``replace_dir`` writes to; never the root.

    Raises:
        InvalidArgument: ``artifact_path`` names the root.
    """
    rel = safe_relpath(artifact_path)
    if not rel:
        raise InvalidArgument("replace_dir needs a path under the root, not the root itself")
    return rel


def commit_last(files: list[LocalFile], commit_file: str | None) -> list[LocalFile]:
    """``files`` with the one at ``commit_file`` (a relative path) moved to the end."""
    return sorted(files, key=lambda item: item.relpath == commit_file)


def is_inside(path: str, root: str) -> bool:
    """Whether the already-resolved ``path`` is ``root`` or below it (both absolute, from realpath)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def collect_files(
    directory: str | os.PathLike[str],
    *,
    boundary: str | os.PathLike[str] | None = None,
    skip: Callable[[str], bool] | None = None,
) -> list[LocalFile]:
    """List every regular file under ``directory`` with its safe ``/``-separated path relative to it.

    Args:
        directory: the local directory to walk.
        boundary: symlinks must resolve inside this directory (default: ``directory`` itself).
        skip: names (files or directories) for which this returns True are left out.

    Raises:
        InvalidArgument: ``directory`` is not a directory, or holds a broken symlink or a special file.
        UnsafePath: a symlink leads outside ``boundary`` or back to one of its own ancestors, or a
            name is not a safe artifact path (a backslash in a file name, for instance).
    """
    top = os.fspath(directory)
    if not os.path.isdir(top):
        raise InvalidArgument(f"{top} is not a directory")
    limit = os.path.realpath(os.fspath(boundary) if boundary is not None else top)
    found: list[LocalFile] = []

    def walk(current: str, prefix: str, ancestors: tuple[str, ...]) -> None:
        with os.scandir(current) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
        for entry in children:
            if skip is not None and skip(entry.name):
                continue
            rel = safe_relpath(join(prefix, entry.name))
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not is_inside(target, limit):
                    raise UnsafePath(
                        f"{entry.path} is a symlink to {target}, outside {limit}; refusing to copy through it"
                    )
                if os.path.isdir(target):
                    if target in ancestors:
                        raise UnsafePath(f"{entry.path} is a symlink to its own ancestor {target} (a cycle)")
                    walk(entry.path, rel, (*ancestors, target))
                    continue
                if not os.path.exists(target):
                    raise InvalidArgument(f"{entry.path} is a broken symlink (to {target})")
                info = os.stat(target)
            elif entry.is_dir(follow_symlinks=False):
                walk(entry.path, rel, (*ancestors, os.path.realpath(entry.path)))
                continue
            else:
                info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(f"{entry.path} is not a regular file (fifo, socket or device)")
            found.append(LocalFile(Path(entry.path), rel, info.st_size))

    walk(top, "", (os.path.realpath(top),))
    return found


def should_show_progress(total_bytes: int, n_files: int, stream: TextIO | None = None) -> bool:
    """Whether a transfer this big deserves a progress bar on ``stream`` (stderr by default)."""
    if total_bytes <= PROGRESS_MIN_BYTES and n_files <= PROGRESS_MIN_FILES:
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # closed stream
        return False


@contextmanager
def transfer_progress(
    description: str, *, total_bytes: int, n_files: int, count_files: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``, drawing a transient rich progress bar on stderr only for large transfers.

    Args:
        description: label shown left of the bar.
        total_bytes: bytes the transfer will move (decides, with ``n_files``, whether to show a bar).
        n_files: files the transfer will move.
        count_files: the caller advances by files rather than bytes.
    """
    if not should_show_progress(total_bytes, n_files):
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [MofNCompleteColumn()] if count_files else [DownloadColumn(), TransferSpeedColumn()]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *columns,
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=n_files if count_files else total_bytes)
        yield lambda n: progress.advance(task, n)
