"""Artifact path confinement: every path a caller names is checked here before any storage call.

An artifact path is always relative to a store's root and always uses ``/``. The rules are strict on
purpose: artifact names travel between operating systems and storage backends, and a path that one
layer reads literally may be decoded, normalised or split differently by the next one.
"""

from __future__ import annotations

import os
import re
import unicodedata
from urllib.parse import unquote

from cairn.errors import UnsafePath

_DRIVE = re.compile(r"^[A-Za-z]:")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
# Characters that must never appear once a path is percent-decoded, because some layer (a web
# server, a URL-based filesystem, a user's shell script) may decode it again and see them.
_DECODED_FORBIDDEN = ("/", "\\", "\x00")
_MAX_DECODE_ROUNDS = 8


def _refuse(path: str, why: str) -> UnsafePath:
    return UnsafePath(f"unsafe artifact path {path!r}: {why}")


def _decode_fully(path: str) -> list[str]:
    """Return every successive percent-decoding of ``path`` (``%252e`` -> ``%2e`` -> ``.``)."""
    rounds = [path]
    current = path
    for _ in range(_MAX_DECODE_ROUNDS):
        if not _PERCENT.search(current):
            break
        decoded = unquote(current)
        if decoded == current:
            break
        rounds.append(decoded)
        current = decoded
    return rounds


def _check_components(original: str, components: list[str], *, encoded: bool) -> None:
    how = " once percent-decoded" if encoded else ""
    for part in components:
        if part == "..":
            raise _refuse(original, f"it contains a '..' component{how}, which would leave the artifact root")
        if unicodedata.normalize("NFKC", part) == "..":
            raise _refuse(original, f"it contains a component that normalises to '..'{how}")


def safe_relpath(path: str | os.PathLike[str] | None) -> str:
    """Normalise an artifact path and refuse any path that could leave the artifact root.

    Args:
        path: a ``/``-separated path relative to the artifact root. ``None`` and ``""`` name the root.

    Returns:
        The normalised path: no leading, trailing or repeated ``/``, no ``.`` components; ``""`` for
        the root. Percent-escapes that are harmless (``a%20b.txt``) are kept literally, not decoded.

    Raises:
        UnsafePath: if the path is absolute (``/x``, ``C:\\x``, ``\\\\server\\share``), is a URL, contains
            a ``..`` component, a backslash or a NUL byte, or hides any of these behind percent-encoding
            (``%2e%2e/``, ``%2F``, ``..%5c``, double-encoded ``%252e%252e``).
    """
    if path is None:
        return ""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise UnsafePath(f"artifact path must be a string, got {type(path).__name__}: {path!r}")
    if "\x00" in path:
        raise _refuse(path, "it contains a NUL byte")
    if "\\" in path:
        raise _refuse(path, "it contains a backslash; artifact paths use '/' only")
    if path.startswith("/"):
        raise _refuse(path, "it is absolute; artifact paths are relative to the artifact root")
    if _DRIVE.match(path):
        raise _refuse(path, "it starts with a drive letter, so it is absolute on Windows")
    if _URL.match(path):
        raise _refuse(path, "it is a URL; pass a path relative to the artifact root")
    components = [part for part in path.split("/") if part not in ("", ".")]
    _check_components(path, components, encoded=False)

    for decoded in _decode_fully(path)[1:]:
        for char in _DECODED_FORBIDDEN:
            if char in decoded and char not in path:
                shown = {"/": "'/'", "\\": "a backslash", "\x00": "a NUL byte"}[char]
                raise _refuse(path, f"it hides {shown} behind percent-encoding")
        if decoded.startswith("/") or _DRIVE.match(decoded) or _URL.match(decoded):
            raise _refuse(path, "it is absolute once percent-decoded")
        _check_components(path, decoded.split("/"), encoded=True)

    return "/".join(components)


def join(*parts: str) -> str:
    """Join already-safe relative artifact paths, skipping empty ones (``join("", "a")`` is ``"a"``)."""
    return "/".join(part for part in parts if part)
