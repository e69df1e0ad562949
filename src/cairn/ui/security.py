"""Request checks and response headers that keep the UI safe from other web pages.

Without ``--auth`` the UI trusts whoever can reach its port, which by default is only this machine;
with ``cairn server --auth`` a browser proves who it is with a ``cairn_session`` cookie
(:mod:`cairn.server.auth.session`). Either way other web pages open in the user's browser can send
the UI requests, so:

* **DNS rebinding**: a request whose ``Host`` header is not one of the names the server was bound
  under (``localhost``/``127.0.0.1``/``[::1]`` with the bound port for a loopback bind) is refused
  with 400, so a hostile domain re-pointed at 127.0.0.1 cannot read anything.
* **Cross-site requests (CSRF)**: a state-changing request (anything but GET/HEAD/OPTIONS) from a
  browser must come from the UI's own origin (``Origin``, or ``Referer`` when a browser sends no
  ``Origin``; a ``Sec-Fetch-Site`` header, when sent, must say ``same-origin``) and carry the CSRF
  token in an ``X-Cairn-Token`` header. The token is a double-submit one: ``GET /api/session`` sets
  a random ``cairn_csrf`` cookie (``HttpOnly``, ``SameSite=Strict``) and returns the same value in
  its body; a write must send the cookie and the header, equal. The server keeps no token, so every
  worker of ``cairn server --workers N`` (and every restart) accepts it. Another site can neither
  read the value nor make the browser send the custom header (that needs a CORS preflight, which
  this server never grants); the origin check stays the primary defence, the token a second one
  (a sibling subdomain that plants a ``cairn_csrf`` cookie still fails the origin check).
* **API clients**: a write that carries credentials in an ``Authorization`` header and no
  ``Cookie`` header at all skips the origin and token checks. CSRF rides on credentials the browser
  attaches by itself (cookies); a page on another site cannot add an ``Authorization`` header
  (not CORS-safelisted: preflight, refused), and such a request has no cookie to ride on. One
  browser case remains: HTTP Basic credentials a browser cached after a ``WWW-Authenticate``
  prompt are attached by the browser itself, so an explicit cross-site signal (``Sec-Fetch-Site``
  other than ``same-origin``/``none``, or a foreign ``Origin``) is still refused on that path.
  Cookie-authenticated writes and cookie-less unauthenticated ones (``cairn ui`` without login)
  keep every check.
* **Headers**: every response gets ``X-Content-Type-Options: nosniff`` and frame/referrer/
  cross-origin policies; app pages get a strict Content-Security-Policy (scripts and styles from
  the app itself only, no inline script, no ``eval``) unless the route set its own (artifacts
  are served under a ``sandbox`` policy).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import cookie_parser

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "APP_CSP",
    "ARTIFACT_CSP",
    "CSRF_COOKIE",
    "TOKEN_HEADER",
    "SecurityMiddleware",
    "allowed_hosts_for",
    "csrf_token_of",
    "new_token",
    "set_csrf_cookie",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_HEADER = "x-cairn-token"
CSRF_COOKIE = "cairn_csrf"
APP_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ARTIFACT_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
"""Artifacts opened directly are an opaque origin: no script runs, nothing of the app is reachable."""

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_token_of(request: Request) -> str | None:
    """The request's ``cairn_csrf`` cookie, when it has a usable one."""
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if len(value) >= 32 else None


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    """Give the browser the double-submit token (the page gets the same value in a JSON body)."""
    response.set_cookie(
        CSRF_COOKIE, token, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def _host_literal(host: str) -> str:
    """``::1`` -> ``[::1]`` (the form a Host header uses for IPv6 literals)."""
    try:
        if isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address):
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host.lower()


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` header values a server bound to ``host:port`` accepts.

    A loopback bind accepts every loopback spelling with that port. A wildcard bind (``0.0.0.0``,
    ``::``) accepts those, this machine's hostname and ``extra`` names (``--allow-host``). Port 80
    also accepts the bare names, since browsers leave the default port out.
    """
    names = {_host_literal(host)}
    if _is_loopback(host) or host in ("0.0.0.0", "::", ""):
        names.update(_LOOPBACK_NAMES)
    if host in ("0.0.0.0", "::", ""):
        names.discard(_host_literal(host))
        hostname = socket.gethostname().lower()
        names.update({hostname, socket.getfqdn().lower()})
    names.update(_host_literal(name) for name in extra)
    allowed = {f"{name}:{port}" for name in names}
    if port == 80:
        allowed.update(names)
    return frozenset(allowed)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _refuse(send: Send, status: int, message: str) -> None:
    body = message.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *_COMMON_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityMiddleware:
    """ASGI middleware: Host check, same-origin + CSRF token check for writes, security headers.

    Args:
        app: the wrapped application.
        allowed_hosts: accepted ``Host`` header values (see :func:`allowed_hosts_for`), compared
            case-insensitively.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = (_header(scope, b"host") or "").lower()
        if host not in self.allowed_hosts:
            await _refuse(send, 400, f"invalid Host header {host!r}: this server only answers to its bound address")
            return
        if scope["method"] not in _SAFE_METHODS:
            problem = self._cross_site_problem(scope, host)
            if problem:
                await _refuse(send, 403, problem)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(k).lower() for k, _ in headers}
                headers += [(k, v) for k, v in _COMMON_HEADERS if k not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", APP_CSP.encode()))
                if scope["path"].startswith("/api/") and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _cross_site_problem(self, scope: Scope, host: str) -> str | None:
        """Why a state-changing request is refused, or ``None`` when it is same-origin with the token
        (or an API client's: credentials in ``Authorization``, no cookie; see the module docstring)."""
        expected = f"{scope.get('scheme', 'http')}://{host}"
        fetch_site = _header(scope, b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"cross-site request refused: the browser reports Sec-Fetch-Site {fetch_site!r}"
        origin = _header(scope, b"origin")
        if origin is not None and origin.lower() != expected:
            return f"cross-origin request refused: Origin {origin!r} is not {expected!r}"
        cookie = _header(scope, b"cookie")
        if _header(scope, b"authorization") and cookie is None:
            return None
        if origin is None:
            referer = _header(scope, b"referer")
            if referer is None:
                return "request refused: a state-changing request needs an Origin or Referer header"
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}".lower() != expected:
                return f"cross-origin request refused: Referer {referer!r} is not from {expected!r}"
        sent = _header(scope, TOKEN_HEADER.encode()) or ""
        expected_token = cookie_parser(cookie or "").get(CSRF_COOKIE, "")
        if not expected_token:
            return f"request refused: no {CSRF_COOKIE} cookie (reload the page: GET /api/session sets it)"
        if not hmac.compare_digest(sent.encode(), expected_token.encode()):
            return f"request refused: missing or wrong {TOKEN_HEADER} header (reload the page)"
        return None
