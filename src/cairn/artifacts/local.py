"""Artifacts in a local directory, with symlink confinement and atomic per-file writes."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cairn.artifacts.base import ArtifactStore, collect_files, is_inside, transfer_progress
from cairn.artifacts.durability import fsync_dirs, fsync_file, fsync_in_background
from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import ArtifactNotFound, InvalidArgument, UnsafePath
from cairn.tracking.entities import FileInfo

__all__ = ["TEMP_PREFIX", "LocalArtifactStore", "atomic_copy", "atomic_write_bytes"]

TEMP_PREFIX = ".cairn-tmp-"
"""Name prefix of in-flight files; they are hidden from listings and downloads."""

_COPY_BUFFER = 1024 * 1024


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _write_atomically(dest: str, source: str | os.PathLike[str] | bytes, mode: int) -> None:
    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InvalidArgument(f"cannot write {dest}: a file is in the way of its directory ({exc})") from exc
    if os.path.isdir(dest) and not os.path.islink(dest):
        raise InvalidArgument(f"cannot write {dest}: a directory of that name exists")
    tmp = os.path.join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    # os.open applies the umask to ``mode``, which mkstemp (always 0600) would not.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
            else:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out, _COPY_BUFFER)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``dest`` through a fsynced temporary file in the same directory and ``os.replace``."""
    target = os.path.abspath(os.fspath(dest))
    _write_atomically(target, data, 0o666)
    fsync_dirs({os.path.dirname(target)})


def atomic_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy the file ``src`` to ``dest`` atomically, keeping its permission bits (always owner-writable)."""
    target = os.path.abspath(os.fspath(dest))
    _write_atomically(target, src, _mode_of(src))
    fsync_dirs({os.path.dirname(target)})


def _mode_of(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode) | 0o600


def _file_uri_to_path(uri: str) -> str:
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidArgument(f"file URI {uri!r} names host {parsed.netloc!r}; only local files are supported")
    return url2pathname(parsed.path)


class LocalArtifactStore(ArtifactStore):
    """Artifacts in a local directory, created on first write.

    Besides the lexical checks of :func:`safe_relpath`, every path is resolved (following symlinks)
    and must stay inside the resolved root, so a symlink placed in the artifact directory cannot be
    used to read, list, write or delete anything outside it. Each file is written to a temporary
    file in its destination directory, fsynced, then renamed into place, so readers never see a
    partial file.

    Args:
        root: a directory path or ``file://`` URI; relative paths and ``~`` are made absolute.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        text = os.fspath(root)
        if text.startswith("file:"):
            text = _file_uri_to_path(text)
        self.root = os.path.abspath(os.path.expanduser(text))

    # -- path resolution -------------------------------------------------------------------------

    def _lexical(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/")) if rel else self.root

    def _resolve(self, path: str | None) -> tuple[str, str]:
        """Return ``(relpath, resolved local path)``, refusing anything that resolves outside the root."""
        rel = safe_relpath(path)
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(self._lexical(rel))
        if not is_inside(real, real_root):
            raise UnsafePath(
                f"unsafe artifact path {rel!r}: it resolves through a symlink to {real}, "
                f"outside the artifact root {self.root}"
            )
        return rel, real

    def local_path(self, path: str | None = None) -> Path:
        """The resolved local path of the artifact ``path`` (which need not exist), confined to the root.

        Raises:
            UnsafePath: ``path`` is unsafe or resolves outside the root.
        """
        return Path(self._resolve(path)[1])

    def _missing(self, rel: str) -> ArtifactNotFound:
        return ArtifactNotFound(f"no artifact at {rel!r} under {self.root}")

    # -- writes ----------------------------------------------------------------------------------

    def put_file(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        source = Path(local_path)
        if not source.is_file():
            raise InvalidArgument(f"cannot upload {source}: it is not an existing file")
        _, dest = self._resolve(join(safe_relpath(artifact_path), source.name))
        _write_atomically(dest, source, _mode_of(source))
        fsync_dirs({os.path.dirname(dest)})

    def put_dir(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        base = safe_relpath(artifact_path)
        files = collect_files(local_dir)
        targets = [self._resolve(join(base, item.relpath))[1] for item in files]  # check all before writing
        total = sum(item.size for item in files)
        with transfer_progress(f"Uploading {len(files)} files", total_bytes=total, n_files=len(files)) as advance:
            for item, dest in zip(files, targets, strict=True):
                _write_atomically(dest, item.source, _mode_of(item.source))
                advance(item.size)
        fsync_dirs({os.path.dirname(dest) for dest in targets})

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A new empty directory inside the root, hidden from listings, for files to hand to :meth:`move_dir`.

        Being on the store's filesystem is what lets :meth:`move_dir` rename instead of copy. The
        directory and anything left in it are removed on exit.
        """
        os.makedirs(self.root, exist_ok=True)
        path = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.root)
        try:
            yield Path(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def move_dir(
        self, local_dir: str | os.PathLike[str], artifact_path: str | None = None, *, durable_now: bool = True
    ) -> None:
        """:meth:`put_dir` for files the caller gives up: each is renamed into place, not copied.

        A file on another filesystem is copied as :meth:`put_dir` does. Either way each file appears
        at its destination whole (rename), and ``local_dir`` loses the files that were renamed.

        Args:
            local_dir: the files to move (on this store's filesystem, see :meth:`staging_dir`).
            artifact_path: where under the root.
            durable_now: fsync each file before returning (as every other write does). With ``False``
                the fsyncs run in :mod:`cairn.artifacts.durability`'s thread, which ``end_run`` and
                interpreter exit wait for.
        """
        base = safe_relpath(artifact_path)
        files = collect_files(local_dir)
        targets = [self._resolve(join(base, item.relpath))[1] for item in files]  # check all before writing
        for item, dest in zip(files, targets, strict=True):
            parent = os.path.dirname(dest)
            try:
                os.makedirs(parent, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise InvalidArgument(f"cannot write {dest}: a file is in the way of its directory ({exc})") from exc
            if os.path.isdir(dest) and not os.path.islink(dest):
                raise InvalidArgument(f"cannot write {dest}: a directory of that name exists")
            if durable_now:
                fsync_file(item.source)
            try:
                os.replace(item.source, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _write_atomically(dest, item.source, _mode_of(item.source))
        if durable_now:
            fsync_dirs({os.path.dirname(dest) for dest in targets})
        else:
            fsync_in_background(targets, {os.path.dirname(dest) for dest in targets})

    def put_bytes(self, data: bytes, artifact_file: str) -> None:
        rel, dest = self._resolve(artifact_file)
        if not rel:
            raise InvalidArgument("put_bytes needs a file name, not the artifact root")
        _write_atomically(dest, bytes(data), 0o666)
        fsync_dirs({os.path.dirname(dest)})

    # -- reads -----------------------------------------------------------------------------------

    def open(self, path: str) -> BinaryIO:
        rel, real = self._resolve(path)
        if os.path.isdir(real):
            raise InvalidArgument(f"artifact {rel!r} under {self.root} is a directory; use download() or list()")
        try:
            return open(real, "rb")
        except FileNotFoundError as exc:
            raise self._missing(rel) from exc

    def list(self, path: str | None = None) -> builtins.list[FileInfo]:
        rel, real = self._resolve(path)
        if not os.path.exists(real):
            if not rel:
                return []
            raise self._missing(rel)
        if not os.path.isdir(real):
            return []
        real_root = os.path.realpath(self.root)
        infos: builtins.list[FileInfo] = []
        with os.scandir(real) as entries:
            for entry in entries:
                if _is_temp(entry.name):
                    continue
                child = join(rel, entry.name)
                # A symlink leading outside is shown (so it can be found and removed) but never followed.
                if entry.is_symlink() and not is_inside(os.path.realpath(entry.path), real_root):
                    infos.append(FileInfo(child, False, None))
                elif entry.is_dir():
                    infos.append(FileInfo(child, True, None))
                else:
                    try:
                        size: int | None = entry.stat().st_size
                    except OSError:  # broken symlink
                        size = None
                    infos.append(FileInfo(child, False, size))
        return sorted(infos, key=lambda info: info.path)

    def download(self, path: str | None, dst_dir: str | os.PathLike[str]) -> Path:
        rel, real = self._resolve(path)
        dst = Path(dst_dir).absolute()
        target = dst.joinpath(*rel.split("/")) if rel else dst
        if not os.path.exists(real):
            if rel:
                raise self._missing(rel)
            dst.mkdir(parents=True, exist_ok=True)
            return dst
        if not os.path.isdir(real):
            atomic_copy(real, target)
            return target
        files = collect_files(real, boundary=os.path.realpath(self.root), skip=_is_temp)
        total = sum(item.size for item in files)
        dests = [target.joinpath(*item.relpath.split("/")) for item in files]
        with transfer_progress(f"Downloading {len(files)} files", total_bytes=total, n_files=len(files)) as advance:
            for item, dest in zip(files, dests, strict=True):
                _write_atomically(str(dest), item.source, _mode_of(item.source))
                advance(item.size)
        target.mkdir(parents=True, exist_ok=True)
        fsync_dirs({str(dest.parent) for dest in dests})
        return target

    def exists(self, path: str | None = None) -> bool:
        _, real = self._resolve(path)
        return os.path.exists(real)

    # -- delete ----------------------------------------------------------------------------------

    def delete(self, path: str | None = None) -> None:
        rel, _ = self._resolve(path)
        lexical = self._lexical(rel)
        if not rel:
            if os.path.islink(lexical):
                raise UnsafePath(f"artifact root {self.root} is a symlink; refusing to delete through it")
            if os.path.isdir(lexical):
                shutil.rmtree(lexical)
            return
        if os.path.islink(lexical):  # an inward symlink: remove the link, not what it points to
            os.unlink(lexical)
        elif os.path.isdir(lexical):
            shutil.rmtree(lexical)
        elif os.path.lexists(lexical):
            os.unlink(lexical)
        else:
            raise self._missing(rel)
