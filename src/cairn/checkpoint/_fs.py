"""Small helpers shared by the checkpoint modules: hashing, fsync, JSON files, and checks of parsed JSON."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from cairn.errors import CheckpointCorrupt

__all__ = ["MAX_COUNT", "FileDigest", "digest_file", "fsync_dir", "is_count", "parse_json", "read_json", "write_json"]

MAX_COUNT = 2**63 - 1
"""Largest step, epoch or batch count a checkpoint may hold (a signed 64-bit integer, as the store keeps steps)."""

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileDigest:
    """The size in bytes and sha256 (hex) of one file."""

    size: int
    sha256: str


def digest_file(path: str | os.PathLike[str], *, fsync: bool = False) -> FileDigest:
    """Hash ``path``; with ``fsync=True`` also flush it to stable storage through the same descriptor."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(handle.fileno())
    return FileDigest(size=size, sha256=sha.hexdigest())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make entries created or renamed in directory ``path`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as strict JSON (no NaN/Infinity tokens) to ``path``."""
    text = json.dumps(payload, indent=1, allow_nan=False, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def parse_json(text: str | bytes, where: str | os.PathLike[str]) -> Any:
    """Parse JSON read from a checkpoint; any failure (syntax, encoding, nesting too deep for the parser,
    an integer literal too long to convert) is :class:`CheckpointCorrupt` naming ``where``."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointCorrupt(
            f"{where} is unreadable: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def read_json(path: Path) -> Any:
    """Read and parse a JSON file of a checkpoint (see :func:`parse_json`); a missing file is corrupt too."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointCorrupt(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_json(data, path)


def is_count(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` (not a bool) in ``[0, MAX_COUNT]``: a valid step, epoch or batch count."""
    return type(value) is int and 0 <= value <= MAX_COUNT
