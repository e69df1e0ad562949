"""A per-user record of model files whose sha256 was already checked, so a large model is not hashed on every load.

An entry says: the file at this absolute path, with this device, inode, size, mtime and ctime, has
this sha256. :func:`is_verified` trusts it only while all of those are unchanged. Writing a file's
content changes its mtime and ctime, replacing it changes its inode and ctime, and no unprivileged
process can set a ctime, so a file altered after it was checked never matches its entry and is
hashed again. File times come from a clock that ticks every few milliseconds, so a write within
the same tick as the previous one could leave them unchanged: an entry is only made for a file
whose ctime is at least :data:`SETTLE_SECONDS` older than the moment its content was known.

Trust is the same as for the user's own home directory: the record lives in
``$CAIRN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/cairn`` or ``~/.cache/cairn``), in a directory
only its owner can write; a directory owned by someone else or writable by others is not used.

Set ``CAIRN_VERIFY_CACHE=0`` to hash every file on every load.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "MIN_CACHED_SIZE",
    "SETTLE_SECONDS",
    "FileIdentity",
    "file_identity",
    "forget_all",
    "is_verified",
    "record_verified",
    "wait_settled",
]

#: Smaller files are hashed every time: reading them costs about what reading an entry would.
MIN_CACHED_SIZE = 256 * 1024
#: Longer than a file-time clock tick on any common kernel configuration (HZ=100 gives 10 ms).
SETTLE_SECONDS = 0.03
_MAX_ENTRIES = 4096
_memo: dict[str, str] = {}
_lock = threading.Lock()
_writes = 0


def _enabled() -> bool:
    return os.environ.get("CAIRN_VERIFY_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def _root() -> Path:
    explicit = os.environ.get("CAIRN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cairn"


def _entries_dir(create: bool) -> Path | None:
    """The entries directory, or ``None`` if it is missing (and not created) or others could write to it."""
    directory = _root() / "verified-files"
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = directory.stat()
    except OSError:
        return None
    owner_ok = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    if not owner_ok or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return directory


class FileIdentity(NamedTuple):
    """What changes whenever a file's content is written or the file is replaced."""

    path: str
    dev: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    def entry_name(self) -> str:
        text = "\0".join(str(part) for part in self)
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def file_identity(path: str | os.PathLike[str]) -> FileIdentity | None:
    """``path``'s identity now, or ``None`` if it is not a regular file of at least :data:`MIN_CACHED_SIZE` bytes."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size < MIN_CACHED_SIZE:
        return None
    return FileIdentity(
        os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
    )


def wait_settled(identities: list[FileIdentity]) -> None:
    """Sleep until every file's ctime is :data:`SETTLE_SECONDS` in the past (at most that long)."""
    if not identities or not _enabled():
        return
    newest = max(identity.ctime_ns for identity in identities)
    remaining = newest / 1e9 + SETTLE_SECONDS - time.time()
    if remaining > 0:
        time.sleep(min(remaining, SETTLE_SECONDS))


def is_verified(path: str | os.PathLike[str], sha256: str) -> bool:
    """Whether ``path``, unchanged since, was recorded as having content with this ``sha256``."""
    if not _enabled():
        return False
    identity = file_identity(path)
    if identity is None:
        return False
    name = identity.entry_name()
    with _lock:
        if _memo.get(name) == sha256:
            return True
    directory = _entries_dir(create=False)
    if directory is None:
        return False
    try:
        recorded = (directory / name).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    if recorded != sha256:
        return False
    with _lock:
        _memo[name] = sha256
    return True


def record_verified(identity: FileIdentity | None, sha256: str, *, known_at: float) -> None:
    """Record that the file ``identity`` describes has content with this ``sha256``.

    Args:
        identity: the file's identity taken *before* its content was read or written by the caller.
        sha256: the digest of that content.
        known_at: ``time.time()`` when the content was known to have that digest (the start of the
            hash, or the end of the write). Nothing is recorded unless the file's ctime is
            :data:`SETTLE_SECONDS` older than that and the file still has ``identity``.

    Best effort: a cache that cannot be written is skipped silently (the next load hashes the file).
    """
    global _writes
    if identity is None or not _enabled():
        return
    if known_at - identity.ctime_ns / 1e9 < SETTLE_SECONDS or file_identity(identity.path) != identity:
        return
    directory = _entries_dir(create=True)
    if directory is None:
        return
    name = identity.entry_name()
    with _lock:
        _memo[name] = sha256
        _writes += 1
        prune = _writes % 64 == 0
    temp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}"
    try:
        temp.write_text(sha256, "ascii")
        os.replace(temp, directory / name)
        if prune:
            _prune(directory)
    except OSError:
        temp.unlink(missing_ok=True)


def _prune(directory: Path) -> None:
    """Drop the oldest half of the entries once there are more than ``_MAX_ENTRIES``."""
    entries = []
    for entry in os.scandir(directory):
        try:
            entries.append((entry.stat().st_mtime_ns, entry.path))
        except OSError:
            continue
    if len(entries) <= _MAX_ENTRIES:
        return
    entries.sort()
    for _mtime, path in entries[: len(entries) - _MAX_ENTRIES // 2]:
        try:
            os.unlink(path)
        except OSError:
            pass


def forget_all() -> None:
    """Forget this process's memo of verified files (entries on disk stay)."""
    with _lock:
        _memo.clear()
