"""Artifacts in a local directory, with symlink confinement and atomic per-file writes."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cairn.artifacts.base import ArtifactStore, collect_files, is_inside, replace_target, transfer_progress
from cairn.artifacts.durability import fsync_dirs, fsync_file, fsync_in_background
from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import ArtifactNotFound, InvalidArgument, UnsafePath
from cairn.tracking.entities import FileInfo

__all__ = [
    "ASIDE_PREFIX",
    "TEMP_PREFIX",
    "LocalArtifactStore",
    "atomic_copy",
    "atomic_write_bytes",
    "restore_interrupted_replace",
]

TEMP_PREFIX = ".cairn-tmp-"
"""Name prefix of in-flight files and staging directories; they are hidden from listings and downloads."""
ASIDE_PREFIX = ".cairn-old-"
"""``<dir>/.cairn-old-<name>`` holds the previous ``<dir>/<name>`` while a replace without an atomic
exchange swaps it (see :meth:`LocalArtifactStore.replace_dir`); hidden like :data:`TEMP_PREFIX`."""

_COPY_BUFFER = 1024 * 1024


def _is_temp(name: str) -> bool:
    return name.startswith((TEMP_PREFIX, ASIDE_PREFIX))


def _replace_step(step: str) -> None:
    """Called at each step of :meth:`LocalArtifactStore.replace_dir` (tests kill the process here)."""


# -- replacing a directory -----------------------------------------------------------------------


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # Linux renameat2 flag
_RENAME_SWAP = 2  # macOS renamex_np flag
_NOT_SUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def _load_exchange() -> Callable[[bytes, bytes], int] | None:
    """The C call that swaps two paths atomically, or ``None`` where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        renameat2 = libc.renameat2
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda first, second: int(renameat2(_AT_FDCWD, first, _AT_FDCWD, second, _RENAME_EXCHANGE))
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        renamex_np = libc.renamex_np
        renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return lambda first, second: int(renamex_np(first, second, _RENAME_SWAP))
    return None


_EXCHANGE = _load_exchange()


def _rename_exchange(first: str, second: str) -> bool:
    """Swap two existing paths of one filesystem in one atomic step; ``False`` if the OS or filesystem cannot."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(os.fsencode(first), os.fsencode(second)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NOT_SUPPORTED:
        return False
    raise OSError(code, os.strerror(code), first, None, second)


def _aside_path(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, ASIDE_PREFIX + tail)


def _remove_path(path: str) -> None:
    """Remove a file, symlink or directory tree; nothing if it is already gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def restore_interrupted_replace(path: str | os.PathLike[str], *, stop_at: str | os.PathLike[str] | None = None) -> bool:
    """Undo a replace that was killed between moving the old copy aside and moving the new one in.

    If ``path`` (or its nearest missing ancestor, not above ``stop_at``) does not exist but
    ``.cairn-old-<name>`` next to it does, that old copy is renamed back. Costs one ``lstat`` per
    missing level. Best effort: a reader without write access leaves things as they are.

    Returns:
        Whether something was restored.
    """
    current = os.path.abspath(os.fspath(path))
    limit = os.path.abspath(os.fspath(stop_at)) if stop_at is not None else None
    while not os.path.lexists(current) and current != limit:
        aside = _aside_path(current)
        if os.path.lexists(aside):
            try:
                os.rename(aside, current)
            except OSError:  # gone meanwhile, the new copy moved in meanwhile, or no write access
                return False
            return True
        parent = os.path.dirname(current)
        if parent == current:
            return False
        current = parent
    return False


def _settle_interrupted(target: str) -> None:
    """Before replacing ``target``: restore an old copy left aside by a killed replace, or drop a stale one."""
    aside = _aside_path(target)
    if not os.path.lexists(aside):
        return
    if os.path.lexists(target):
        _remove_path(aside)
    else:
        restore_interrupted_replace(target)


def _swap_by_renames(staged: str, target: str) -> None:
    """Replace ``target`` where no atomic exchange exists: old aside, new in, old removed.

    Between the first two renames ``target`` is missing; :func:`restore_interrupted_replace` (run by
    every read of a local store and by model loading) puts the old copy back if the process died there.
    """
    aside = _aside_path(target)
    for attempt in range(3):
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            pass
        else:
            _replace_step("moved-aside")
        try:
            os.rename(staged, target)
        except OSError as exc:
            # A reader restored the old copy in between: move it aside again.
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and attempt < 2:
                continue
            restore_interrupted_replace(target)
            raise
        _replace_step("moved-in")
        _remove_path(aside)
        _replace_step("old-removed")
        return


def _move_into_place(staged: str, target: str) -> None:
    """Put the complete directory ``staged`` at ``target`` (same filesystem), replacing what is there.

    At every instant ``target`` is either the old entry or the new directory, whole: a rename when
    nothing is there, else an atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux,
    ``renamex_np(RENAME_SWAP)`` on macOS) after which the old entry, now at ``staged``, is removed.
    Elsewhere see :func:`_swap_by_renames`.
    """
    _settle_interrupted(target)
    _replace_step("staged")
    if not os.path.lexists(target):
        try:
            os.rename(staged, target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
        else:
            _replace_step("moved-in")
            return
    if _rename_exchange(staged, target):
        _replace_step("exchanged")
        _remove_path(staged)
        _replace_step("old-removed")
        return
    _swap_by_renames(staged, target)


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
        self._check_inside(rel, real, real_root)
        if rel and not os.path.lexists(real) and restore_interrupted_replace(real, stop_at=real_root):
            real = os.path.realpath(self._lexical(rel))
            self._check_inside(rel, real, real_root)
        return rel, real

    def _check_inside(self, rel: str, real: str, real_root: str) -> None:
        if not is_inside(real, real_root):
            raise UnsafePath(
                f"unsafe artifact path {rel!r}: it resolves through a symlink to {real}, "
                f"outside the artifact root {self.root}"
            )

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
    def staging_dir(self, artifact_path: str | None = None) -> Iterator[Path]:
        """A new empty hidden directory for files to hand to :meth:`replace_dir` or :meth:`move_dir`.

        It is made next to ``artifact_path`` (in its parent directory; in the root by default), so it
        is on the same filesystem and :meth:`replace_dir` can rename instead of copy. The directory
        and anything left in it are removed on exit; a killed process leaves it behind for
        ``cairn gc`` (its name starts with :data:`TEMP_PREFIX`).
        """
        parent_rel = safe_relpath(artifact_path).rpartition("/")[0]
        _, parent = self._resolve(parent_rel)
        os.makedirs(parent, exist_ok=True)
        path = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
        try:
            yield Path(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def replace_dir(
        self,
        local_dir: str | os.PathLike[str],
        artifact_path: str,
        *,
        commit_file: str | None = None,
        durable_now: bool = True,
    ) -> None:
        """Make ``artifact_path`` the directory ``local_dir``, replacing whatever is there, atomically.

        A reader of ``artifact_path`` sees, at every instant, either the old entry or the complete
        new directory, never a mix and never nothing: the new directory is renamed in whole, and an
        existing one is swapped with it by an atomic exchange (Linux ``renameat2``, macOS
        ``renamex_np``) and removed afterwards. Where the filesystem has no exchange, the old entry
        is renamed aside to ``.cairn-old-<name>`` first and the new one renamed in; if the process
        dies between the two, the next read of the path (this store, or loading a model) renames
        the old entry back. A killed replace leaves hidden ``.cairn-tmp-*``/``.cairn-old-*`` entries
        that ``cairn gc`` removes.

        Args:
            local_dir: the complete new directory; renamed into place (so consumed) when it is on
                this store's filesystem (see :meth:`staging_dir`), copied next to the target first otherwise.
            artifact_path: where under the root (not the root itself).
            commit_file: ignored here (the directory appears at once); see the fsspec store.
            durable_now: fsync every file before returning. With ``False`` the fsyncs run in
                :mod:`cairn.artifacts.durability`'s thread after the swap.

        Raises:
            InvalidArgument: ``artifact_path`` is the root, or ``local_dir`` is not a directory.
            UnsafePath: see :func:`collect_files`.
        """
        del commit_file
        rel = replace_target(artifact_path)
        parent_rel, _, name = rel.rpartition("/")
        _, parent = self._resolve(parent_rel)
        target = os.path.join(parent, name)  # a symlink at ``name`` itself is replaced, not followed
        files = collect_files(local_dir)
        os.makedirs(parent, exist_ok=True)
        staged = os.path.abspath(os.fspath(local_dir))
        if os.stat(staged).st_dev != os.stat(parent).st_dev or os.path.islink(staged):
            with self.staging_dir(rel) as near:
                copy = os.path.join(near, name)
                for item in files:
                    _write_atomically(os.path.join(copy, *item.relpath.split("/")), item.source, _mode_of(item.source))
                self._swap_in(copy, target, [item.relpath for item in files], durable_now)
            return
        self._swap_in(staged, target, [item.relpath for item in files], durable_now)

    def _swap_in(self, staged: str, target: str, relpaths: builtins.list[str], durable_now: bool) -> None:
        def placed(root: str) -> builtins.list[str]:
            return [os.path.join(root, *relpath.split("/")) for relpath in relpaths]

        if durable_now:
            for path in placed(staged):
                fsync_file(path)
            fsync_dirs({os.path.dirname(path) for path in placed(staged)} | {staged})
        _move_into_place(staged, target)
        final = placed(target)
        dirs = {os.path.dirname(path) for path in final} | {os.path.dirname(target)}
        if durable_now:
            fsync_dirs(dirs)
        else:
            fsync_in_background(final, dirs)

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
