"""``manifest.json``: the commit marker of a checkpoint directory.

The manifest lists the size and sha256 of every other file in the directory, plus the format version,
creation time, step, epoch, run id, metrics (for ``keep_best``) and free-form JSON metadata. It is
written last, so a directory whose manifest is missing, unparsable, or disagrees with the files (a
file missing, truncated, or with a flipped byte) is an interrupted or damaged write: such a checkpoint
does not exist, and :func:`is_valid_checkpoint` says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from cairn.checkpoint._fs import MAX_COUNT, FileDigest, digest_file, is_count, parse_json, write_json
from cairn.errors import CheckpointCorrupt, InvalidArgument

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "Manifest",
    "is_valid_checkpoint",
    "parse_manifest",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "cairn.checkpoint"
MANIFEST_VERSION = 1
MAX_METADATA_DEPTH = 32
"""Deepest nesting of containers in a manifest's free-form metadata."""
_SHA256_HEX = frozenset("0123456789abcdef")
_NON_FINITE = frozenset({"nan", "inf", "-inf"})


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``. ``files`` maps POSIX paths relative to the checkpoint directory."""

    step: int
    epoch: int | None
    run_id: str | None
    created_at: str
    files: dict[str, FileDigest]
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = MANIFEST_VERSION


def write_manifest(
    directory: str | os.PathLike[str],
    *,
    step: int,
    epoch: int | None = None,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    digests: Mapping[str, FileDigest] | None = None,
    fsync: bool = True,
) -> Manifest:
    """Hash every file under ``directory`` and write ``manifest.json`` there; call it after the last file.

    Args:
        digests: already known digests by relative path (e.g. computed while fsyncing), reused as is.
        fsync: flush each hashed file, and the manifest, to stable storage.

    Raises:
        InvalidArgument: ``step`` or ``epoch`` is negative or beyond a 64-bit integer, or the metadata is not
            plain JSON nested at most :data:`MAX_METADATA_DEPTH` deep.
    """
    for what, count in (("step", step), ("epoch", epoch)):
        if count is not None and not 0 <= int(count) <= MAX_COUNT:
            raise InvalidArgument(f"checkpoint {what} must be between 0 and {MAX_COUNT}, got {count}")
    if _depth(metadata or {}) > MAX_METADATA_DEPTH:
        raise InvalidArgument(f"checkpoint metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
    root = Path(directory)
    known = dict(digests or {})
    files: dict[str, FileDigest] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        files[rel] = known[rel] if rel in known else digest_file(path, fsync=fsync)
    manifest = Manifest(
        step=int(step),
        epoch=None if epoch is None else int(epoch),
        run_id=run_id,
        created_at=datetime.now(timezone.utc).isoformat(),
        files=files,
        metrics={str(k): float(v) for k, v in (metrics or {}).items()},
        metadata=dict(metadata or {}),
    )
    payload = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created_at": manifest.created_at,
        "step": manifest.step,
        "epoch": manifest.epoch,
        "run_id": manifest.run_id,
        "metrics": {k: _encode_float(v) for k, v in manifest.metrics.items()},
        "metadata": manifest.metadata,
        "files": {rel: {"size": d.size, "sha256": d.sha256} for rel, d in files.items()},
    }
    target = root / MANIFEST_NAME
    try:
        write_json(target, payload)
    except ValueError as exc:  # NaN in metadata, or a value json cannot encode
        raise InvalidArgument(f"checkpoint metadata must be plain JSON: {exc}") from exc
    if fsync:
        digest_file(target, fsync=True)
    return manifest


def read_manifest(directory: str | os.PathLike[str], *, verify_hashes: bool = True) -> Manifest:
    """Parse ``manifest.json`` and check every listed file exists with its recorded size (and sha256).

    Args:
        verify_hashes: also hash every file. ``False`` checks presence and sizes only, which catches
            interrupted writes cheaply but not a flipped byte.

    Raises:
        CheckpointCorrupt: the manifest is missing or malformed, or a file is missing or differs.
    """
    root = Path(directory)
    path = root / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointCorrupt(f"{root} is not a checkpoint: it has no {MANIFEST_NAME} (interrupted write?)") from exc
    except OSError as exc:
        raise CheckpointCorrupt(f"{path} is unreadable: {exc}") from exc
    manifest = parse_manifest(data, path)
    for rel, expected in manifest.files.items():
        _check_file(root, rel, expected, verify_hashes)
    return manifest


def is_valid_checkpoint(directory: str | os.PathLike[str], *, verify_hashes: bool = True) -> bool:
    """Whether ``directory`` holds a complete checkpoint (see :func:`read_manifest`)."""
    try:
        read_manifest(directory, verify_hashes=verify_hashes)
    except CheckpointCorrupt:
        return False
    return True


def _encode_float(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def parse_manifest(data: str | bytes, path: str | os.PathLike[str]) -> Manifest:
    """Parse the text of a ``manifest.json`` (read from ``path``) and check its structure; files are not checked.

    Raises:
        CheckpointCorrupt: the text is not JSON, or not a manifest of this format; the message names ``path``.
    """
    return _parse(parse_json(data, path), Path(path))


def _parse(payload: Any, path: Path) -> Manifest:
    def bad(message: str) -> CheckpointCorrupt:
        return CheckpointCorrupt(f"{path} is not a valid manifest: {message}")

    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT:
        raise bad(f"format is not {MANIFEST_FORMAT!r}")
    if payload.get("format_version") != MANIFEST_VERSION:
        raise bad(f"format version {payload.get('format_version')!r:.40}; this cairn reads {MANIFEST_VERSION}")
    step, epoch, run_id = payload.get("step"), payload.get("epoch"), payload.get("run_id")
    if not is_count(step) or (epoch is not None and not is_count(epoch)):
        raise bad(f"step and epoch must be integers between 0 and {MAX_COUNT}")
    if run_id is not None and not isinstance(run_id, str):
        raise bad("run_id must be a string")
    raw_files, raw_metrics = payload.get("files"), payload.get("metrics", {})
    metadata, created_at = payload.get("metadata", {}), payload.get("created_at", "")
    if not isinstance(raw_files, dict) or not isinstance(raw_metrics, dict) or not isinstance(metadata, dict):
        raise bad("files, metrics and metadata must be objects")
    if not isinstance(created_at, str):
        raise bad("created_at must be a string")
    if _depth(metadata) > MAX_METADATA_DEPTH:
        raise bad(f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
    files = {rel: _file_digest(rel, entry, bad) for rel, entry in raw_files.items()}
    metrics = {key: _metric(key, value, bad) for key, value in raw_metrics.items()}
    return Manifest(
        step=step,
        epoch=epoch,
        run_id=run_id,
        created_at=created_at,
        files=files,
        metrics=metrics,
        metadata=metadata,
        format_version=MANIFEST_VERSION,
    )


def _file_digest(rel: str, entry: Any, bad: Any) -> FileDigest:
    if "\x00" in rel:
        raise bad(f"file name {rel!r:.80} contains a NUL character")
    if not isinstance(entry, dict) or not is_count(entry.get("size")):
        raise bad(f"entry for {rel!r:.80} needs a size in bytes (an integer >= 0)")
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or len(sha256) != 64 or not set(sha256) <= _SHA256_HEX:
        raise bad(f"entry for {rel!r:.80} needs a sha256 of 64 lowercase hex digits")
    return FileDigest(size=entry["size"], sha256=sha256)


def _metric(key: str, value: Any, bad: Any) -> float:
    if type(value) is float or (type(value) is str and value in _NON_FINITE):
        return float(value)
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            pass
    raise bad(f"metric {key!r:.80} must be a number, got {value!r:.40}")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (iteratively: no recursion on hostile input)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, level = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list | tuple) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_METADATA_DEPTH:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


def _check_file(root: Path, rel: str, expected: FileDigest, verify_hashes: bool) -> None:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or rel == MANIFEST_NAME:
        raise CheckpointCorrupt(f"{root / MANIFEST_NAME} lists an invalid path {rel!r}")
    path = root.joinpath(*parts)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointCorrupt(f"checkpoint {root} is incomplete: {rel} is missing ({exc.strerror})") from exc
    if size != expected.size:
        raise CheckpointCorrupt(f"checkpoint {root} is damaged: {rel} has {size} bytes, manifest says {expected.size}")
    if verify_hashes and digest_file(path).sha256 != expected.sha256:
        raise CheckpointCorrupt(f"checkpoint {root} is damaged: sha256 of {rel} differs from its manifest")
