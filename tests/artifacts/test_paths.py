"""safe_relpath: normalisation of artifact paths, and refusal of every way out of the root."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import UnsafePath

ESCAPING_PATHS = [
    "/etc/passwd",
    "//etc/passwd",
    "C:\\Windows\\x",
    "C:/Windows/x",
    "c:relative",
    "\\\\server\\share\\x",
    "..",
    "../x",
    "a/../../x",
    "a/..",
    "a/b/../../../x",
    "a\\..\\x",
    "a\\b",
    "x\x00.txt",
    "%2e%2e/x",
    "%2E%2E/x",
    "a/%2e%2e/%2e%2e/x",
    ".%2e/x",
    "a%2Fb",
    "..%2fx",
    "..%5cx",
    "a%5cb",
    "%252e%252e/x",
    "%25252e%25252e/x",
    "a%252Fb",
    "%2fetc%2fpasswd",
    "x%00.txt",
    "\uff0e\uff0e/x",  # fullwidth dots normalise (NFKC) to '..'
    "file:///etc/passwd",
    "s3://other-bucket/x",
]


@pytest.mark.parametrize("path", ESCAPING_PATHS)
def test_escaping_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath) as info:
        safe_relpath(path)
    message = str(info.value)
    assert repr(path) in message, "the message names the offending path"
    assert ":" in message.split(repr(path), 1)[1], "the message says why"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (None, ""),
        ("", ""),
        (".", ""),
        ("/".join(["a", "", "b", ".", "c"]), "a/b/c"),
        ("a//b///c/", "a/b/c"),
        ("./model/MLmodel", "model/MLmodel"),
        ("a%20b.txt", "a%20b.txt"),  # harmless escapes are stored literally, not decoded
        ("a/%2e/b", "a/%2e/b"),  # decodes to a '.' component: harmless
        ("...", "..."),
        ("..a/b..", "..a/b.."),
        ("日本/ファイル.txt", "日本/ファイル.txt"),
        (PurePosixPath("x/y.txt"), "x/y.txt"),
    ],
)
def test_safe_paths_are_normalised(path: str | None, expected: str) -> None:
    assert safe_relpath(path) == expected


def test_non_string_is_refused() -> None:
    with pytest.raises(UnsafePath, match="must be a string"):
        safe_relpath(b"a/b")  # type: ignore[arg-type]


def test_refusal_messages_say_why() -> None:
    with pytest.raises(UnsafePath, match="absolute"):
        safe_relpath("/etc/passwd")
    with pytest.raises(UnsafePath, match=r"'\.\.' component"):
        safe_relpath("a/../../x")
    with pytest.raises(UnsafePath, match="percent-decoded"):
        safe_relpath("%252e%252e/x")
    with pytest.raises(UnsafePath, match="backslash"):
        safe_relpath("..%5cx")


def test_join_skips_empty_parts() -> None:
    assert join("", "a", "", "b") == "a/b"
    assert join() == ""
