"""Small filesystem helpers shared by the checkpoint modules: hashing, fsync, atomic JSON."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FileDigest", "digest_file", "fsync_dir", "write_json"]

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
