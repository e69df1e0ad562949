"""Logging in and out of the UI (``cairn server --auth``), and ``GET /api/session``.

``POST /login`` takes ``name`` and ``password`` (a password or the user's token) as JSON or as a
form body and answers with a signed session cookie (:mod:`cairn.server.auth.session`). Both routes
go through the UI's security middleware like every write: same origin and the CSRF token, so another
site can neither log a browser in under its own account (login CSRF) nor log it out.

Not done: rate limiting of failed logins. Every attempt costs scrypt work (an unknown name as much
as a wrong password), which slows guessing but does not stop it.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from cairn.errors import InvalidArgument
from cairn.ui.access import auth_on, principal_or_none
from cairn.ui.security import csrf_token_of, new_token, set_csrf_cookie

__all__ = ["login", "logout", "session"]

MAX_LOGIN_BODY = 64 * 1024
WRONG_LOGIN = "wrong user name or password (or token)"


def _version() -> str:
    try:
        return importlib.metadata.version("cairn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def session(request: Request) -> JSONResponse:
    """Whether login is on, who is logged in, the CSRF token for writes, and server facts.

    Sets the ``cairn_csrf`` cookie when the browser has none (the double-submit token; see
    :mod:`cairn.ui.security`).
    """
    principal = principal_or_none(request)
    token = csrf_token_of(request) or new_token()
    response = JSONResponse(
        {
            "auth": auth_on(request),
            "user": None if principal is None else {"name": principal.name, "is_admin": principal.is_admin},
            "csrf": token,
            "version": _version(),
            "store": request.app.state.store_label,
        }
    )
    if csrf_token_of(request) != token:
        set_csrf_cookie(response, request, token)
    return response


async def _credentials(request: Request) -> tuple[str, str]:
    raw = await request.body()
    if len(raw) > MAX_LOGIN_BODY:
        raise InvalidArgument(f"login body of {len(raw)} bytes is over the limit of {MAX_LOGIN_BODY}")
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fields: dict[str, Any]
    if content_type == "application/json":
        try:
            fields = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"login body is not valid JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise InvalidArgument("login body must be a JSON object with name and password")
    elif content_type == "application/x-www-form-urlencoded":
        fields = dict((await request.form()).items())
    else:
        raise InvalidArgument(
            f"login takes application/json or application/x-www-form-urlencoded, not {content_type or 'no body type'!r}"
        )
    name, secret = fields.get("name"), fields.get("password")
    if not isinstance(name, str) or not name or not isinstance(secret, str) or not secret:
        raise InvalidArgument("login needs a user name (name) and a password or token (password)")
    return name, secret


async def login(request: Request) -> JSONResponse:
    """Check the credentials; on success set the session cookie and answer the user."""
    from cairn.server.auth.session import issue_cookie, set_session_cookie

    users = request.app.state.users
    if users is None and auth_on(request):
        return _error(500, "ServerError", "the UI was built without the user store: pass create_app(users=...)")
    if users is None:
        return _error(404, "NotFound", "this server runs without --auth: there is nothing to log in to")
    try:
        name, secret = await _credentials(request)
    except InvalidArgument as exc:
        return _error(400, "InvalidArgument", str(exc))
    principal = await run_in_threadpool(users.by_login, name, secret)
    if principal is None:
        return _error(401, "Unauthorized", WRONG_LOGIN)
    cookie = await run_in_threadpool(issue_cookie, principal.name, users)
    response = JSONResponse({"user": {"name": principal.name, "is_admin": principal.is_admin}})
    set_session_cookie(response, request, cookie)
    return response


def logout(request: Request) -> JSONResponse:
    """Clear the session cookie (a copy kept elsewhere stays valid until it expires: it is stateless)."""
    from cairn.server.auth.session import clear_session_cookie

    response = JSONResponse({"user": None})
    clear_session_cookie(response, request)
    return response
