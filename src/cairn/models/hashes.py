"""A sha256 per model file, recorded at save time and checked before anything is loaded.

cairn writes ``cairn_files.json`` next to ``MLmodel``::

    {"algorithm": "sha256", "files": {"model.skops": {"sha256": "...", "size": 1234}, ...}}

listing every file of the model except ``MLmodel`` and the manifest itself, and stores the sha256
of the manifest in the MLmodel file as ``metadata.cairn_files_sha256``, so the MLmodel (written
last) vouches for the manifest, which vouches for the files. A model without either (written by
MLflow, or by another tool) is accepted unchecked. Files added after saving (``__pycache__`` from
importing the model's code, for instance) are ignored; listed files that are missing or differ
are refused.

Checking a large model reads every byte, so a file whose digest matched is recorded in
:mod:`cairn.models.verified_files` (keyed by its path, inode, size, mtime and ctime) and not read
again while it stays unchanged; the files ``log_model`` and ``save_model`` wrote are recorded as
they are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from cairn.artifacts.paths import safe_relpath
from cairn.errors import ModelIntegrityError, UnsafePath
from cairn.models import verified_files
from cairn.models.model import MLMODEL_FILE_NAME, Model

__all__ = [
    "FILES_MANIFEST",
    "MANIFEST_SHA256_KEY",
    "file_sha256",
    "record_model_files",
    "remember_file_sha256",
    "verified_scope",
    "verify_model_files",
    "write_files_manifest",
]

FILES_MANIFEST = "cairn_files.json"
#: Key in the MLmodel ``metadata`` holding the manifest's sha256.
MANIFEST_SHA256_KEY = "cairn_files_sha256"
_SKIPPED_NAMES = ("__pycache__", ".DS_Store")
_CHUNK = 1024 * 1024
_verified: ContextVar[frozenset[str]] = ContextVar("cairn_verified_model_dirs", default=frozenset())
# path -> ((dev, inode, size, mtime_ns, ctime_ns), sha256) of files hashed while they were written.
_remembered: dict[str, tuple[tuple[int, ...], str]] = {}
_remembered_lock = threading.Lock()
_REMEMBERED_MAX = 256


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(model_dir: Path) -> Iterator[tuple[str, Path]]:
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_NAMES)
        for name in sorted(files):
            if name in _SKIPPED_NAMES:
                continue
            path = Path(root) / name
            rel = path.relative_to(model_dir).as_posix()
            if rel not in (MLMODEL_FILE_NAME, FILES_MANIFEST):
                yield rel, path


def _stat_key(path: str | os.PathLike[str]) -> tuple[int, ...]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def remember_file_sha256(path: str | os.PathLike[str], sha256: str) -> None:
    """Record ``sha256`` as the digest of the file at ``path`` as it is now, for :func:`write_files_manifest`.

    A writer that hashed the bytes while writing them (the PyTorch flavor's weights) calls this so the
    manifest does not read a large file a second time. The record is kept in this process only and is
    used only while the file's device, inode, size, mtime and ctime are unchanged; verification
    (:func:`verify_model_files`) never uses it and always reads the bytes.
    """
    key = _stat_key(path)
    with _remembered_lock:
        if len(_remembered) >= _REMEMBERED_MAX:
            _remembered.pop(next(iter(_remembered)))
        _remembered[os.path.abspath(path)] = (key, sha256)


def _manifest_sha256(path: Path) -> str:
    with _remembered_lock:
        record = _remembered.pop(os.path.abspath(path), None)
    if record is not None and record[0] == _stat_key(path):
        return record[1]
    return file_sha256(path)


def write_files_manifest(model_dir: str | os.PathLike[str]) -> str:
    """Hash every file under ``model_dir`` into ``cairn_files.json``; returns the manifest's sha256.

    Files registered with :func:`remember_file_sha256` (and unchanged since) are not read again.
    """
    directory = Path(model_dir)
    files = {
        rel: {"sha256": _manifest_sha256(path), "size": path.stat().st_size} for rel, path in _model_files(directory)
    }
    content = json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True).encode("utf-8")
    (directory / FILES_MANIFEST).write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def _read_manifest(directory: Path, expected_sha256: Any) -> dict[str, Any] | None:
    path = directory / FILES_MANIFEST
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        if expected_sha256 is not None:
            raise ModelIntegrityError(
                f"model at {directory}: the MLmodel file records file hashes in {FILES_MANIFEST}, but that file "
                "is missing; the model is incomplete or was altered"
            ) from None
        return None
    if expected_sha256 is not None and hashlib.sha256(content).hexdigest() != expected_sha256:
        raise ModelIntegrityError(
            f"model at {directory}: {FILES_MANIFEST} does not match the sha256 recorded in MLmodel; "
            "the model was altered after it was saved"
        )
    try:
        manifest = json.loads(content)
    except ValueError as exc:
        raise ModelIntegrityError(f"model at {directory}: {FILES_MANIFEST} is not valid JSON: {exc}") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("algorithm") != "sha256"
        or not isinstance(manifest.get("files"), dict)
    ):
        raise ModelIntegrityError(f"model at {directory}: {FILES_MANIFEST} is not a sha256 file manifest")
    return manifest


def verify_model_files(model_dir: str | os.PathLike[str], model: Model | None = None) -> None:
    """Check every file listed in the model's manifest against its recorded size and sha256.

    Args:
        model_dir: the local model directory.
        model: its MLmodel, if already read (read from ``model_dir`` otherwise).

    Raises:
        ModelIntegrityError: a listed file is missing or its content differs (the message names the
            file), or the manifest itself is missing or altered.
    """
    directory = Path(model_dir).absolute()
    if str(directory) in _verified.get():
        return
    model = model if model is not None else Model.load(directory)
    expected = (model.metadata or {}).get(MANIFEST_SHA256_KEY)
    manifest = _read_manifest(directory, expected)
    if manifest is None:
        return
    for rel, record in sorted(manifest["files"].items()):
        try:
            safe = safe_relpath(rel)
        except UnsafePath:
            raise ModelIntegrityError(f"model at {directory}: {FILES_MANIFEST} lists an unsafe path {rel!r}") from None
        path = directory.joinpath(*safe.split("/"))
        want = record.get("sha256") if isinstance(record, dict) else None
        if not path.is_file():
            raise ModelIntegrityError(f"model file {rel!r} is missing from {directory} (it was saved with the model)")
        size = record.get("size") if isinstance(record, dict) else None
        if size is not None and path.stat().st_size != size:
            raise _altered(rel, directory)
        if isinstance(want, str) and verified_files.is_verified(path, want):
            continue
        identity, started = verified_files.file_identity(path), time.time()
        if file_sha256(path) != want:
            raise _altered(rel, directory)
        verified_files.record_verified(identity, str(want), known_at=started)


def _altered(rel: str, directory: Path) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"model file {rel!r} in {directory} does not match the sha256 recorded when the model was saved; "
        "it was modified or corrupted, so cairn refuses to load it"
    )


def record_model_files(model_dir: str | os.PathLike[str]) -> None:
    """Record the files of a model cairn has just written as verified, so loading it does not hash them again.

    Called where the files are final (after ``log_model`` moved them into a local artifact store,
    or at the end of ``save_model``), with the digests of ``cairn_files.json``, which cairn computed
    from the bytes it wrote. Only files at least :data:`verified_files.MIN_CACHED_SIZE` long are recorded.
    """
    directory = Path(model_dir)
    try:
        manifest = json.loads((directory / FILES_MANIFEST).read_bytes())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    written: list[tuple[verified_files.FileIdentity, str]] = []
    for rel, record in files.items():
        want = record.get("sha256") if isinstance(record, dict) else None
        size = record.get("size") if isinstance(record, dict) else None
        if not isinstance(want, str) or not isinstance(size, int) or size < verified_files.MIN_CACHED_SIZE:
            continue
        try:
            identity = verified_files.file_identity(directory.joinpath(*safe_relpath(rel).split("/")))
        except UnsafePath:
            continue
        if identity is not None and identity.size == size:
            written.append((identity, want))
    verified_files.wait_settled([identity for identity, _ in written])
    now = time.time()
    for identity, want in written:
        verified_files.record_verified(identity, want, known_at=now)


@contextmanager
def verified_scope(model_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Inside the block, :func:`verify_model_files` on ``model_dir`` returns at once (it was just checked).

    The model loader verifies a directory and then hands it to a flavor's ``load_model``, which
    verifies again; this avoids hashing a large model twice in one call.
    """
    token = _verified.set(_verified.get() | {str(Path(model_dir).absolute())})
    try:
        yield
    finally:
        _verified.reset(token)
