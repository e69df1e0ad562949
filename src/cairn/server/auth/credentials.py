"""What a request presents to prove who it is, and whom that proves it to be.

``Authorization: Bearer <token>`` or ``Basic`` (user name and password, or user name and token) on any
route; without that header, the UI's ``cairn_session`` cookie, on the UI's routes only (on the MLflow API
a cookie is ignored: a request authenticated by a cookie alone could be forged by another web site).
"""

from __future__ import annotations

import base64
import binascii
import importlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from cairn.server.auth.permissions import Principal
from cairn.server.auth.refusals import denied, unauthenticated
from cairn.server.auth.users import Reads, UserStore

__all__ = [
    "API_PREFIXES",
    "SESSION_COOKIE",
    "Credentials",
    "authenticate",
    "credentials_of",
    "header_map",
    "refuse_cross_site",
]

SESSION_COOKIE = "cairn_session"
SESSION_MODULE = "cairn.server.auth.session"
API_PREFIXES = ("/api/2.0/", "/api/3.0/", "/ajax-api/")
"""Paths of the MLflow (and cairn) API: a session cookie does not authenticate them."""

Scope = MutableMapping[str, Any]


@dataclass(frozen=True)
class Credentials:
    """What the request presented: a token, a user name and secret, or a session cookie."""

    via: str
    token: str | None = None
    name: str | None = None
    secret: str | None = None
    cookie: str | None = None


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    result: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        result.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return result


def credentials_of(scope: Scope, headers: dict[str, str]) -> Credentials | None:
    """The credentials of the request. Raises Refusal (401) for a malformed Authorization header."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return Credentials("header", token=value)
        if scheme.lower() == "basic" and value:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise unauthenticated("malformed Basic credentials (expected base64 of user:password)") from None
            name, sep, secret = decoded.partition(":")
            if not sep or not name:
                raise unauthenticated("malformed Basic credentials (expected base64 of user:password)")
            return Credentials("header", name=name, secret=secret)
        raise unauthenticated(f"unsupported Authorization scheme {scheme!r}; use Bearer <token> or Basic")
    path = str(scope.get("path", ""))
    if "cookie" in headers and not path.startswith(API_PREFIXES):
        cookie = SimpleCookie()
        try:
            cookie.load(headers["cookie"])
        except CookieError:
            return None
        morsel = cookie.get(SESSION_COOKIE)
        if morsel is not None and morsel.value:
            return Credentials("cookie", cookie=morsel.value)
    return None


def refuse_cross_site(headers: dict[str, str], method: str, path: str) -> None:
    """Refuse a write that a browser says comes from another site.

    API clients send no ``Sec-Fetch-Site`` and no ``Origin``. A browser sends them, and it may attach HTTP
    Basic credentials by itself once it has answered a ``WWW-Authenticate`` prompt for this server; a page
    of another site could then make it send a write carrying them (a form posting ``text/plain`` JSON).
    """
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site is not None:
        foreign = site not in ("same-origin", "none")
    elif origin is not None and origin != "null":
        foreign = urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
    else:
        foreign = origin == "null"
    if foreign:
        raise denied(
            f"{method} {path} was sent by a browser from another site (Sec-Fetch-Site: {site}, Origin: {origin}); "
            "credentials a browser attaches by itself do not authorize cross-site writes"
        )


def _session_principal(value: str, users: UserStore) -> Principal | None:
    try:
        module = importlib.import_module(SESSION_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == SESSION_MODULE:
            return None  # this build has no UI sessions: the cookie means nothing
        raise
    principal: Principal | None = module.principal_from_cookie(value, users)
    return principal


def authenticate(credentials: Credentials, reads: Reads, users: UserStore) -> Principal | None:
    """The user the credentials belong to, or None when they match no (current) user."""
    if credentials.token is not None:
        return reads.by_token(credentials.token)
    if credentials.name is not None and credentials.secret is not None:
        return reads.by_login(credentials.name, credentials.secret)
    if credentials.cookie is not None:
        return _session_principal(credentials.cookie, users)
    return None
