"""Tokens and passwords: how they are made, stored and checked.

* A token is ``cairn_`` + 32 random bytes (url-safe base64). It is stored as its sha256 (hex): a token
  has 256 bits of entropy, so no guessing attack can profit from a fast hash, and the digest is an
  indexed column, so finding the user of a token is one index lookup.
* A password is chosen by a person and may be weak, so it is stored with scrypt (memory-hard, in the
  standard library): n=2**14, r=8, p=1 (16 MiB, about 50 ms), a random 16-byte salt, and the
  parameters inside the stored string (``scrypt$n$r$p$salt$hash``) so they can be raised later.
* Every comparison of secrets is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = [
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "TOKEN_PREFIX",
    "hash_password",
    "new_token",
    "token_hash",
    "verify_password",
]

TOKEN_PREFIX = "cairn_"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_SCRYPT_N = 2**20
_SCHEME = "scrypt"


def new_token() -> str:
    """A new random API token, ``cairn_<43 url-safe characters>``."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The stored form of a token: its sha256 in hex (tokens are random, so a fast hash is right)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * r * n + 1024 * 1024,
        dklen=_KEY_BYTES,
    )


def hash_password(password: str) -> str:
    """``scrypt$<n>$<r>$<p>$<salt b64>$<key b64>`` for ``password``, with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` is the one ``encoded`` (from :func:`hash_password`) was made from.

    A stored string in another format, or with parameters beyond sane bounds, never verifies.
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME or not all(part.isdecimal() for part in parts[1:4]):
        return False
    n, r, p = (int(part) for part in parts[1:4])
    if not (2 <= n <= _MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    try:
        salt, expected = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)
