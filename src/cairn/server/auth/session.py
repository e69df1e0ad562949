"""Stateless signed session cookies for the cairn UI behind ``cairn server --auth``.

A session cookie is ``v1.<payload>.<signature>``: the payload is base64url JSON
``{"u": user name, "iat": issued at, "exp": expires at}`` (seconds since the epoch) and the
signature is HMAC-SHA256 over ``v1.<payload>`` with ``users.shared_secret("ui-session")``, a key
every server process on the same database shares. Nothing is kept in memory, so any worker accepts
a cookie another worker issued, and a restart logs no one out.

The user is looked up by name on every request (``users.by_name``): a removed user's cookie stops
working at once, and grants changed since the login apply to the next request. What a stateless
cookie cannot do is end one session early: logout clears the cookie in that browser, but a copy of
it (stolen before) stays valid until it expires (:data:`SESSION_LIFETIME`); removing the user (or
rotating the shared secret) ends every session of theirs.

Cookie flags: ``HttpOnly`` (page scripts never see it), ``SameSite=Strict`` (no cross-site request
carries it), ``Path=/``, and ``Secure`` when the request reached the server over https as the ASGI
server reports it (uvicorn takes ``X-Forwarded-Proto`` only from ``--forwarded-allow-ips``; a proxy
that terminates TLS without telling the server gets cookies without ``Secure``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from cairn.server.auth.permissions import Principal
    from cairn.server.auth.users import UserStore

__all__ = [
    "COOKIE_NAME",
    "SECRET_PURPOSE",
    "SESSION_LIFETIME",
    "clear_session_cookie",
    "issue_cookie",
    "principal_from_cookie",
    "set_session_cookie",
    "user_of_cookie",
]

COOKIE_NAME = "cairn_session"
SECRET_PURPOSE = "ui-session"
SESSION_LIFETIME = 12 * 3600
"""Seconds a login lasts."""

_VERSION = "v1"
_CLOCK_SKEW = 60
"""Seconds a cookie's issue time may lie in the future (clocks of several server machines differ)."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_SECRET_TTL = 300.0
"""Seconds a process reuses the signing key it read (every process reads the same one from the database)."""
_secrets: weakref.WeakKeyDictionary[UserStore, tuple[float, bytes]] = weakref.WeakKeyDictionary()
_secrets_lock = threading.Lock()


def _signing_key(users: UserStore) -> bytes:
    """``users.shared_secret("ui-session")``, read from the database at most every few minutes per process
    (it is the same in every process: caching it keeps per-request cookie checks free of database writes)."""
    now = time.monotonic()
    with _secrets_lock:
        cached = _secrets.get(users)
    if cached is not None and now - cached[0] < _SECRET_TTL:
        return cached[1]
    key = users.shared_secret(SECRET_PURPOSE)
    with _secrets_lock:
        _secrets[users] = (now, key)
    return key


def _signature(key: bytes, signed: str) -> str:
    return _b64encode(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def issue_cookie(name: str, users: UserStore, *, now: float | None = None, lifetime: int = SESSION_LIFETIME) -> str:
    """A signed session cookie value for user ``name``, valid for ``lifetime`` seconds from ``now``."""
    issued = int(time.time() if now is None else now)
    payload = json.dumps({"u": name, "iat": issued, "exp": issued + lifetime}, separators=(",", ":"))
    signed = f"{_VERSION}.{_b64encode(payload.encode('utf-8'))}"
    return f"{signed}.{_signature(_signing_key(users), signed)}"


def user_of_cookie(value: str, users: UserStore, *, now: float | None = None) -> str | None:
    """The user name a cookie value was issued to, or ``None`` when it is forged, altered, malformed
    or expired. The signature is compared in constant time before the payload is read."""
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != _VERSION:
        return None
    signed = f"{parts[0]}.{parts[1]}"
    expected = _signature(_signing_key(users), signed)
    if not hmac.compare_digest(expected.encode("ascii"), parts[2].encode("ascii", "replace")):
        return None
    try:
        payload = json.loads(_b64decode(parts[1]))
        name, issued, expires = payload["u"], payload["iat"], payload["exp"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or not isinstance(issued, int) or not isinstance(expires, int):
        return None
    current = time.time() if now is None else now
    if issued > current + _CLOCK_SKEW or current >= expires:
        return None
    return name


def principal_from_cookie(value: str, users: UserStore) -> Principal | None:
    """The principal of a ``cairn_session`` cookie: ``None`` when the cookie is not valid now or its
    user no longer exists. Called by the auth middleware for each request that carries the cookie."""
    name = user_of_cookie(value, users)
    return users.by_name(name) if name is not None else None


def _is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, value: str) -> None:
    """Put the session cookie on ``response`` (flags: see the module docstring)."""
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=SESSION_LIFETIME,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_is_https(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    """Tell the browser to drop the session cookie."""
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=_is_https(request))
