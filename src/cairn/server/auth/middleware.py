"""Authentication and authorization of every request to ``cairn server --auth`` (an ASGI middleware).

Authentication (:mod:`~cairn.server.auth.credentials`): a token or a user name and password in the
``Authorization`` header, or the UI's session cookie on the UI's routes. The user and its grants are read
from the database on every request (one indexed query): a removed user or a rotated token stops working
at once, in every server process.

Authorization: the rule of :mod:`~cairn.server.auth.rules` for the route names the resource (an
experiment, a run's experiment, a registered model, ...) and the permission needed
(:mod:`~cairn.server.auth.resolve` follows it to what grants name). A JSON body the rule
looks into is read here once (within :data:`~cairn.server.protocol.DEFAULT_MAX_BYTES`) and replayed to
the app. Searches are allowed to every user; their handlers filter the results (:func:`principal_of`).

Answers in MLflow's shape: 401 ``UNAUTHENTICATED`` (with ``WWW-Authenticate: Basic`` on the MLflow API),
403 ``PERMISSION_DENIED``, 400 ``INVALID_PARAMETER_VALUE`` for a body that cannot be read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from anyio import to_thread
from starlette.requests import Request

from cairn.errors import CairnError
from cairn.server.auth.credentials import (
    API_PREFIXES,
    Credentials,
    authenticate,
    credentials_of,
    header_map,
    refuse_cross_site,
)
from cairn.server.auth.permissions import Permission, Principal, ResourceKind
from cairn.server.auth.refusals import Refusal, denied, invalid, unauthenticated
from cairn.server.auth.resolve import Need, RequestParts, Resolver, reads_body
from cairn.server.auth.rules import After, Rule, Target, find_rule
from cairn.server.auth.users import UserStore
from cairn.server.protocol import DEFAULT_MAX_BYTES, classify

__all__ = ["AuthMiddleware", "auth_enabled", "auth_via", "principal_of"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_log = logging.getLogger(__name__)


def principal_of(request: Request) -> Principal | None:
    """The authenticated user of ``request``; None means auth is off (everything allowed), or a public route
    (``/health``, ``/``, ``/static``, ``/login``, ``GET /api/session``) reached without credentials."""
    state = request.scope.get("state") or {}
    principal = state.get("principal")
    return principal if isinstance(principal, Principal) else None


def auth_enabled(request: Request) -> bool:
    """Whether the server checks credentials (``cairn server --auth``)."""
    return bool((request.scope.get("state") or {}).get("auth"))


def auth_via(request: Request) -> str | None:
    """How the request authenticated: ``"header"`` (Authorization), ``"cookie"`` (UI session) or None."""
    value = (request.scope.get("state") or {}).get("auth_via")
    return value if isinstance(value, str) else None


# -- the middleware --------------------------------------------------------------------------------


class AuthMiddleware:
    """Authenticates every HTTP request and checks its rule; see the module docstring.

    Args:
        app: the server application.
        users: the user store on the tracking database.
        max_body: the largest JSON body read to find a resource id.
    """

    def __init__(self, app: ASGIApp, users: UserStore, max_body: int = DEFAULT_MAX_BYTES) -> None:
        self.app = app
        self.users = users
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["auth"] = True
        state["principal"] = None
        state["auth_via"] = None
        try:
            await self._handle(scope, receive, send, state)
        except Refusal as refusal:
            await _refuse(scope, send, refusal)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]) -> None:
        method, path = str(scope["method"]), str(scope["path"])
        headers = header_map(scope)
        found = find_rule(path, method)
        rule, path_params = found if found is not None else (None, {})
        public = rule is not None and rule.target is Target.PUBLIC
        try:
            credentials = credentials_of(scope, headers)
        except Refusal:
            if not public:
                raise
            credentials = None
        if credentials is None and not public:
            raise unauthenticated("authentication required")
        if credentials is not None and credentials.via == "header" and method not in _SAFE_METHODS:
            refuse_cross_site(headers, method, path)
        body: dict[str, Any] | None = None
        body_error: Refusal | None = None
        if rule is not None and not public and credentials is not None:
            try:
                body, receive = await self._body(scope, receive, headers, rule, method)
            except Refusal as refusal:  # answered once the credentials are known to be good (401 first)
                body_error = refusal
        principal: Principal | None = None
        needs: list[Need] = []
        if credentials is not None:
            request = RequestParts(method, path, path_params, _query(scope), body)
            decide = self._decide
            try:
                principal, needs = await to_thread.run_sync(decide, credentials, rule, request, body_error is None)
            except CairnError as exc:  # the database failed: say so in MLflow's shape (503 is retried)
                _log.error("checking the credentials of %s %s failed", method, path, exc_info=exc)
                code, status = classify(exc)
                raise Refusal(status, code, f"cairn server could not check the request's credentials: {exc}") from None
        state["principal"] = principal
        state["auth_via"] = credentials.via if principal is not None and credentials is not None else None
        if public:
            await self.app(scope, receive, send)
            return
        if principal is None:
            what = "session" if credentials is not None and credentials.via == "cookie" else "credentials"
            raise unauthenticated(
                f"invalid {what} (unknown token, wrong password, or a user that was removed or whose token was rotated)"
            )
        if rule is None:
            if not principal.is_admin:
                raise denied(
                    f"{method} {path} has no permission rule on this server, so only admins may use it "
                    f"(user {principal.name!r} is not an admin)"
                )
            await self.app(scope, receive, send)
            return
        if rule.target is Target.NOT_FOUND and not principal.is_admin:
            raise Refusal(404, "ENDPOINT_NOT_FOUND", f"No endpoint {method} {path}")
        if rule.target is Target.ADMIN and not principal.is_admin:
            raise denied(f"{method} {path} is for admins only (user {principal.name!r} is not an admin)")
        if body_error is not None:
            raise body_error
        for kind, resource, needed, label in needs:
            have = principal.permission(kind, resource) if resource else Permission.NONE
            if have < needed:
                raise denied(_denial(principal, method, path, kind, resource, label, have, needed))
        if rule.after is None:
            await self.app(scope, receive, send)
        else:
            await self._with_after(scope, receive, send, rule.after, principal, body or {})

    def _decide(
        self, credentials: Credentials, rule: Rule | None, request: RequestParts, resolvable: bool
    ) -> tuple[Principal | None, list[Need]]:
        """Who the request is and what its rule needs, on one connection (runs in a worker thread)."""
        with self.users.reads() as reads:
            principal = authenticate(credentials, reads, self.users)
            if principal is None or principal.is_admin or rule is None or not resolvable:
                return principal, []
            if rule.target in (Target.PUBLIC, Target.AUTHENTICATED, Target.NOT_FOUND, Target.ADMIN):
                return principal, []
            return principal, Resolver(reads).needs(rule, request)

    async def _body(
        self, scope: Scope, receive: Receive, headers: dict[str, str], rule: Rule, method: str
    ) -> tuple[dict[str, Any] | None, Receive]:
        """The JSON body when the rule reads it (then a ``receive`` that replays it), else (None, receive)."""
        if not reads_body(rule, method):
            return None, receive
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise invalid(f"Request body of {declared} bytes exceeds the limit of {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise invalid("the client disconnected before the request body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise invalid(f"Request body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        body: dict[str, Any] | None = None
        if raw.strip():
            try:
                parsed = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise invalid(f"Malformed JSON in request body: {exc}") from None
            if not isinstance(parsed, dict):
                raise invalid(f"Request body must be a JSON object, got {type(parsed).__name__}")
            body = parsed
        else:
            body = {}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return body, replay

    async def _with_after(
        self, scope: Scope, receive: Receive, send: Send, after: After, principal: Principal, body: dict[str, Any]
    ) -> None:
        """Run the app, holding its (small JSON) answer until the grants follow a successful one."""
        messages: list[Message] = []

        async def hold(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, hold)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is not None and start["status"] == 200:
            answer = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
            try:
                await to_thread.run_sync(self._follow, after, principal, body, answer)
            except (CairnError, ValueError, KeyError) as exc:
                _log.error("granting after %s failed", after.value, exc_info=exc)
                raise Refusal(
                    500,
                    "INTERNAL_ERROR",
                    f"the request succeeded, but updating the permissions that follow it ({after.value} for user "
                    f"{principal.name!r}) failed: {exc}. An admin can fix the grants with `cairn users grant`",
                ) from None
        for message in messages:
            await send(message)

    def _follow(self, after: After, principal: Principal, body: dict[str, Any], answer: bytes) -> None:
        if after is After.GRANT_EXPERIMENT:
            experiment_id = str(json.loads(answer)["experiment_id"])
            self.users.grant(principal.name, ResourceKind.EXPERIMENT, experiment_id, Permission.MANAGE)
        elif after is After.GRANT_MODEL:
            self.users.grant(principal.name, ResourceKind.REGISTERED_MODEL, str(body["name"]), Permission.MANAGE)
        elif after is After.RENAME_MODEL:
            self.users.rename_resource(ResourceKind.REGISTERED_MODEL, str(body["name"]), str(body["new_name"]))
        elif after is After.FORGET_MODEL:
            self.users.forget_resource(ResourceKind.REGISTERED_MODEL, str(body["name"]))


def _query(scope: Scope) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    raw = scope.get("query_string", b"").decode("latin-1")
    return parse_qs(raw, keep_blank_values=False)


def _denial(
    principal: Principal,
    method: str,
    path: str,
    kind: ResourceKind,
    resource: str,
    label: str,
    have: Permission,
    needed: Permission,
) -> str:
    held = "no permission" if have is Permission.NONE else have.name
    message = f"Permission denied: user {principal.name!r} has {held} on {label}; {method} {path} needs {needed.name}."
    if resource:
        flag = "--experiment" if kind is ResourceKind.EXPERIMENT else "--model"
        grant = f"cairn users grant {principal.name} {flag} {resource} --permission {needed.name}"
        message += f" An admin can grant it: {grant}"
    else:
        message += " Only admins may use it."
    return message


async def _refuse(scope: Scope, send: Send, refusal: Refusal) -> None:
    body = json.dumps({"error_code": refusal.error_code, "message": refusal.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if refusal.status == 401 and str(scope.get("path", "")).startswith(API_PREFIXES):
        # Not on the UI's routes: a browser would answer this challenge with its own login dialog.
        headers.append((b"www-authenticate", b'Basic realm="cairn"'))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
