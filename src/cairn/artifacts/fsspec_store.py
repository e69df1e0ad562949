"""Artifacts on any fsspec filesystem: ``s3://`` (through s3fs), ``gs://``, ``memory://``, ..."""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

from fsspec.callbacks import Callback
from fsspec.core import url_to_fs
from fsspec.spec import AbstractBufferedFile

from cairn.artifacts.base import ArtifactStore, LocalFile, collect_files, commit_last, replace_target, transfer_progress
from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import ArtifactNotFound, InvalidArgument, UnsafePath
from cairn.tracking.entities import FileInfo

__all__ = ["READ_BLOCK_BYTES", "WRITE_BLOCK_BYTES", "FsspecArtifactStore", "PendingUpload"]

_S3_PART_BYTES = (5 * 1024 * 1024, 5 * 1024**3)
"""The smallest and largest part S3 accepts (the last part of an upload may be smaller)."""
_COPY_THREADS = 8
"""Parts copied at once when S3 assembles an object from others (UploadPartCopy)."""

READ_BLOCK_BYTES = 8 * 1024 * 1024
"""Bytes fetched per request by :meth:`FsspecArtifactStore.open` (s3fs alone would buffer 50 MiB per open file)."""
WRITE_BLOCK_BYTES = 8 * 1024 * 1024
"""Part size of :meth:`FsspecArtifactStore.open_upload` for files up to 80 GiB (S3 wants 5 MiB or more per part
but the last, and at most :data:`MAX_PARTS` parts; a larger announced size gets larger parts)."""
MAX_PARTS = 10_000
_STAGED_PROTOCOLS = frozenset({"s3", "s3a"})
"""Filesystems whose files, opened with ``autocommit=False``, publish nothing before ``commit()`` (checked for s3fs)."""
_TEMP_PREFIX = ".cairn-tmp-"
_HIDDEN_PREFIXES = (_TEMP_PREFIX, ".cairn-old-")


def _is_hidden(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1].startswith(_HIDDEN_PREFIXES)


class _AdvanceCallback(Callback):
    """fsspec callback forwarding per-file completions of a batched put/get to a progress bar."""

    def __init__(self, advance: Any) -> None:
        super().__init__()
        self._advance = advance
        self._seen = 0

    def call(self, *args: Any, **kwargs: Any) -> None:
        if self.value > self._seen:
            self._advance(self.value - self._seen)
            self._seen = self.value


def _is_s3(fs: Any) -> bool:
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & _STAGED_PROTOCOLS)


def _assemble_in_s3(fs: Any, target: str, sources: builtins.list[str]) -> None:
    """Make the object ``target`` the concatenation of the objects ``sources`` inside S3 (UploadPartCopy).

    Each source becomes one part, so all but the last must hold 5 MiB to 5 GiB. Published whole by the
    final ``CompleteMultipartUpload``; on any failure the multipart upload is aborted.
    """
    bucket, key, _ = fs.split_path(target)
    upload_id = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]

    def copy(number: int, source: str) -> dict[str, Any]:
        out = fs.call_s3(
            "upload_part_copy", Bucket=bucket, Key=key, UploadId=upload_id, CopySource=source, PartNumber=number
        )
        return {"PartNumber": number, "ETag": out["CopyPartResult"]["ETag"]}

    try:
        with ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="cairn-s3-copy") as pool:
            parts = list(pool.map(copy, range(1, len(sources) + 1), sources))
        fs.call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    finally:
        fs.invalidate_cache(target)


class PendingUpload:
    """One file on its way into a store: :meth:`write` pieces, then :meth:`commit` or :meth:`discard`.

    The file becomes visible whole when :meth:`commit` returns, and never if :meth:`discard` is called
    instead. A file smaller than one part (:data:`WRITE_BLOCK_BYTES`) is held in memory and stored in one request.
    A larger one goes to S3 as the parts of a multipart upload (s3fs's file opened with
    ``autocommit=False``), each sent as soon as it is complete, so memory stays bounded whatever the
    file's size; on any other filesystem (whose files may be published at open, as ``memory://``
    does) it is spooled to a local temporary file uploaded by :meth:`commit`.
    """

    def __init__(self, fs: Any, full_path: str, *, size_hint: int | None = None) -> None:
        self._fs = fs
        self._path = full_path
        self._block = max(WRITE_BLOCK_BYTES, -(-(size_hint or 0) // MAX_PARTS))
        self._head = bytearray()
        self._handle: Any = None
        self._spool: Path | None = None
        self._finished = False
        self._staged = _is_s3(fs)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._handle is not None:
            self._handle.write(data)
            return
        self._head += data
        if len(self._head) >= self._block:
            self._handle = self._open()
            self._handle.write(self._head)
            self._head = bytearray()

    def _open(self) -> Any:
        if self._staged:
            handle = self._fs.open(self._path, "wb", block_size=self._block, autocommit=False)
            if not isinstance(handle, AbstractBufferedFile):  # pragma: no cover - s3fs's files are
                raise InvalidArgument(f"{type(self._fs).__name__} opened {type(handle).__name__}, not a staged file")
            return handle
        self._spool = Path(tempfile.mkdtemp(prefix="cairn-upload-")) / "body"
        return open(self._spool, "xb")  # closed by commit or discard

    def commit(self) -> None:
        """Store the file whole (replacing any file there); if this fails, nothing new is visible."""
        try:
            if self._handle is None:
                self._fs.pipe_file(self._path, bytes(self._head))
            else:
                self._handle.close()
                if self._staged:
                    self._handle.commit()
                else:
                    self._fs.put_file(str(self._spool), self._path)
        except BaseException:
            self.discard()
            raise
        self._finish()
        self._fs.invalidate_cache(self._path)

    def discard(self) -> None:
        """Throw away what was written (an S3 multipart upload is aborted); no effect after :meth:`commit`."""
        if self._finished:
            return
        try:
            if self._handle is not None and not self._handle.closed:
                self._handle.close()  # with autocommit=False this stages the rest and publishes nothing
        finally:
            try:
                if self._handle is not None and self._staged:
                    self._handle.discard()
            finally:
                self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._head = bytearray()
        if self._spool is not None:
            shutil.rmtree(self._spool.parent, ignore_errors=True)


class FsspecArtifactStore(ArtifactStore):
    """Artifacts under a URL of any fsspec filesystem.

    Object stores have no real directories: a "directory" exists while some file lies below it.
    Listings bypass fsspec's directory cache so that files written by other processes are seen.
    Stored names are checked again when downloading, so an object written by another tool under a
    name such as ``a/../../x`` cannot place a file outside the download directory.

    Args:
        root: the root URL, e.g. ``s3://bucket/prefix/1/<run_id>/artifacts``.
        **storage_options: passed to the fsspec filesystem (credentials, ``client_kwargs``, ...).
    """

    def __init__(self, root: str, **storage_options: Any) -> None:
        self.root = root.rstrip("/")
        try:
            fs, base = url_to_fs(self.root, **storage_options)
        except ImportError as exc:
            raise InvalidArgument(
                f"artifact root {root!r} needs a filesystem package that is not installed ({exc}); "
                "for s3:// install cairn[s3]"
            ) from exc
        except ValueError as exc:
            raise InvalidArgument(f"artifact root {root!r} is not a URL fsspec understands: {exc}") from exc
        self._fs = fs
        self._base = base.rstrip("/")

    @property
    def fs(self) -> Any:
        """The underlying fsspec filesystem."""
        return self._fs

    def _full(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    def _rel_of(self, name: str) -> str:
        """Path of the fsspec entry ``name`` relative to the root (not yet checked for safety)."""
        name = name.rstrip("/")
        prefix = f"{self._base}/"
        return name[len(prefix) :] if name.startswith(prefix) else name

    def _info(self, rel: str) -> dict[str, Any] | None:
        full = self._full(rel)
        self._fs.invalidate_cache(full)
        try:
            return cast(dict[str, Any], self._fs.info(full))
        except FileNotFoundError:
            return None

    def _missing(self, rel: str) -> ArtifactNotFound:
        return ArtifactNotFound(f"no artifact at {rel!r} under {self.root}")

    # -- writes ----------------------------------------------------------------------------------

    def put_file(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        source = Path(local_path)
        if not source.is_file():
            raise InvalidArgument(f"cannot upload {source}: it is not an existing file")
        rel = safe_relpath(join(safe_relpath(artifact_path), source.name))
        self._fs.put_file(str(source), self._full(rel))

    def put_dir(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._upload(collect_files(local_dir), safe_relpath(artifact_path))

    def replace_dir(
        self,
        local_dir: str | os.PathLike[str],
        artifact_path: str,
        *,
        commit_file: str | None = None,
        durable_now: bool = True,
    ) -> None:
        """Make ``artifact_path`` hold exactly the files of ``local_dir``: upload first, then prune.

        Object stores have no rename (S3 copies), so no swap is atomic. The new files are uploaded
        (``commit_file``, e.g. ``MLmodel``, in a second batch after all others), and only then are
        the old files the new directory lacks deleted; nothing is deleted before every new file is
        in place. Each object is replaced atomically, so what a reader may see is: the old
        directory; then old and new files mixed under the old ``commit_file`` (a model's recorded
        sha256 refuses to load such a mix, it never loads wrong weights); then the new directory
        with some old leftover files (ignored by a model: its file list names only its own); then
        the new directory alone. A writer killed during the upload leaves the mix, which stays
        unloadable until the next replace; killed during the prune, the new model loads.

        Args:
            local_dir: the new directory's contents.
            artifact_path: where under the root (not the root itself).
            commit_file: path relative to ``local_dir`` uploaded after all other files.
            durable_now: ignored (an upload is durable when it returns).

        Raises:
            InvalidArgument: ``artifact_path`` is the root, or ``local_dir`` is not a directory.
        """
        del durable_now
        rel = replace_target(artifact_path)
        files = commit_last(collect_files(local_dir), commit_file)
        full = self._full(rel)
        info = self._info(rel)
        if info is not None and info.get("type") != "directory":
            self._fs.rm(full)  # a file of that name would block the directory on some filesystems
            info = None
        old = set(self._fs.find(full)) if info is not None else set()
        body = [item for item in files if item.relpath != commit_file]
        self._upload(body, rel)
        self._upload(files[len(body) :], rel)
        stale = sorted(old - {self._full(join(rel, item.relpath)) for item in files})
        if stale:
            self._fs.rm(stale)
        self._fs.invalidate_cache(full)

    def _upload(self, files: builtins.list[LocalFile], base: str) -> None:
        if not files:
            return
        lpaths = [str(item.source) for item in files]
        rpaths = [self._full(join(base, item.relpath)) for item in files]
        total = sum(item.size for item in files)
        with transfer_progress(
            f"Uploading {len(files)} files", total_bytes=total, n_files=len(files), count_files=True
        ) as advance:
            self._fs.put(lpaths, rpaths, callback=_AdvanceCallback(advance))

    def put_bytes(self, data: bytes, artifact_file: str) -> None:
        rel = safe_relpath(artifact_file)
        if not rel:
            raise InvalidArgument("put_bytes needs a file name, not the artifact root")
        self._fs.pipe_file(self._full(rel), bytes(data))

    def open_upload(self, artifact_file: str, *, size_hint: int | None = None) -> PendingUpload:
        """Start writing the file ``artifact_file`` piece by piece, in bounded memory; see :class:`PendingUpload`.

        ``size_hint`` (the announced size, if known) makes the parts of a file over 80 GiB large enough
        for S3's 10,000-part limit.

        Raises:
            InvalidArgument: ``artifact_file`` names the root.
        """
        rel = safe_relpath(artifact_file)
        if not rel:
            raise InvalidArgument("an upload needs a file name, not the artifact root")
        return PendingUpload(self._fs, self._full(rel), size_hint=size_hint)

    def concatenate(self, sources: Sequence[str], artifact_file: str) -> None:
        """Write the file ``artifact_file`` as the bytes of the files ``sources``, in order; published whole.

        On S3, when every source but the last holds 5 MiB to 5 GiB (the part sizes S3 accepts), S3
        assembles the object itself (UploadPartCopy): no byte passes through this process. Otherwise
        the sources are read and written through :meth:`open_upload`.

        Raises:
            ArtifactNotFound: a source does not exist.
            InvalidArgument: no sources, or ``artifact_file`` names the root.
        """
        rels = [safe_relpath(source) for source in sources]
        target = safe_relpath(artifact_file)
        if not rels or not target:
            raise InvalidArgument("concatenate needs source files and a target file name, not the root")
        sizes: dict[str, int] = {}
        for parent in dict.fromkeys(rel.rpartition("/")[0] for rel in rels):
            sizes.update((info.path, info.file_size or 0) for info in self.list(parent) if not info.is_dir)
        missing = [rel for rel in rels if rel not in sizes]
        if missing:
            raise self._missing(missing[0])
        low, high = _S3_PART_BYTES
        if _is_s3(self._fs) and all(low <= sizes[rel] <= high for rel in rels[:-1]) and 0 < sizes[rels[-1]] <= high:
            _assemble_in_s3(self._fs, self._full(target), [self._full(rel) for rel in rels])
            return
        upload = self.open_upload(target, size_hint=sum(sizes[rel] for rel in rels))
        try:
            for rel in rels:
                with self.open(rel) as handle:
                    while chunk := handle.read(READ_BLOCK_BYTES):
                        upload.write(chunk)
        except BaseException:
            upload.discard()
            raise
        upload.commit()

    # -- reads -----------------------------------------------------------------------------------

    def open(self, path: str) -> BinaryIO:
        rel = safe_relpath(path)
        info = self._info(rel)
        if info is None:
            raise self._missing(rel)
        if info.get("type") == "directory":
            raise InvalidArgument(f"artifact {rel!r} under {self.root} is a directory; use download() or list()")
        return cast(BinaryIO, self._fs.open(self._full(rel), "rb", block_size=READ_BLOCK_BYTES))

    def list(self, path: str | None = None) -> builtins.list[FileInfo]:
        rel = safe_relpath(path)
        info = self._info(rel)
        if info is None:
            if not rel:
                return []
            raise self._missing(rel)
        if info.get("type") != "directory":
            return []
        full = self._full(rel)
        infos = []
        for entry in self._fs.ls(full, detail=True):
            child = self._rel_of(entry["name"])
            if not child or child == rel or _is_hidden(child):
                continue
            if entry.get("type") == "directory":
                infos.append(FileInfo(child, True, None))
            else:
                size = entry.get("size")
                infos.append(FileInfo(child, False, int(size) if size is not None else None))
        return sorted(infos, key=lambda item: item.path)

    def download(self, path: str | None, dst_dir: str | os.PathLike[str]) -> Path:
        rel = safe_relpath(path)
        dst = Path(dst_dir).absolute()
        target = dst.joinpath(*rel.split("/")) if rel else dst
        info = self._info(rel)
        if info is None:
            if rel:
                raise self._missing(rel)
            dst.mkdir(parents=True, exist_ok=True)
            return dst
        full = self._full(rel)
        if info.get("type") != "directory":
            self._get_atomically([full], [target])
            return target
        found = self._fs.find(full, detail=True)
        rpaths: builtins.list[str] = []
        lpaths: builtins.list[Path] = []
        total = 0
        for name, entry in sorted(found.items()):
            if entry.get("type") == "directory":
                continue
            below = name[len(full) + 1 :] if full else name
            try:
                safe = safe_relpath(below)
            except UnsafePath as exc:
                raise UnsafePath(f"stored object {name!r} has an unsafe name; refusing to download it: {exc}") from exc
            if not safe or _is_hidden(safe):
                continue
            rpaths.append(name)
            lpaths.append(target.joinpath(*safe.split("/")))
            total += int(entry.get("size") or 0)
        with transfer_progress(
            f"Downloading {len(rpaths)} files", total_bytes=total, n_files=len(rpaths), count_files=True
        ) as advance:
            self._get_atomically(rpaths, lpaths, callback=_AdvanceCallback(advance))
        target.mkdir(parents=True, exist_ok=True)
        return target

    def _get_atomically(
        self, rpaths: builtins.list[str], lpaths: builtins.list[Path], callback: Callback | None = None
    ) -> None:
        """Fetch into temporary names next to each destination, then rename them into place."""
        if not rpaths:
            return
        temps = []
        for lpath in lpaths:
            lpath.parent.mkdir(parents=True, exist_ok=True)
            if lpath.is_dir() and not lpath.is_symlink():
                raise InvalidArgument(f"cannot download to {lpath}: a directory of that name exists")
            temps.append(str(lpath.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"))
        try:
            if callback is None:
                self._fs.get(rpaths, temps)
            else:
                self._fs.get(rpaths, temps, callback=callback)
            for temp, lpath in zip(temps, lpaths, strict=True):
                os.replace(temp, lpath)
        finally:
            for temp in temps:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass

    def exists(self, path: str | None = None) -> bool:
        return self._info(safe_relpath(path)) is not None

    # -- delete ----------------------------------------------------------------------------------

    def delete(self, path: str | None = None) -> None:
        rel = safe_relpath(path)
        if self._info(rel) is None:
            if rel:
                raise self._missing(rel)
            return
        full = self._full(rel)
        if "/" not in full.strip("/"):
            # The root is a bucket (or other top-level container): a recursive rm would try to remove
            # the container itself. Remove the objects only.
            files = self._fs.find(full)
            if files:
                self._fs.rm(files)
        else:
            self._fs.rm(full, recursive=True)
        self._fs.invalidate_cache(full)
