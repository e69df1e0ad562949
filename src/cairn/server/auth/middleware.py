"""Authentication and authorization of every request to ``cairn server --auth`` (an ASGI middleware).

Authentication: ``Authorization: Bearer <token>`` or ``Basic`` (user name and password, or user name and
token); without that header, the UI's ``cairn_session`` cookie (UI routes only: an MLflow API request
authenticated by a cookie alone could be forged by another web site, see SECURITY.md). The user and its
grants are read from the database on every request (one indexed query): a removed user or a rotated
token stops working at once, in every server process.

Authorization: the rule of :mod:`cairn.server.auth.rules` for the route names the resource (an
experiment, a run's experiment, a registered model, ...) and the permission needed. A JSON body the rule
looks into is read here once (within :data:`~cairn.server.protocol.DEFAULT_MAX_BYTES`) and replayed to
the app. Searches are allowed to every user; their handlers filter the results (:func:`principal_of`).

Answers in MLflow's shape: 401 ``UNAUTHENTICATED`` (with ``WWW-Authenticate: Basic`` on the MLflow API),
403 ``PERMISSION_DENIED``, 400 ``INVALID_PARAMETER_VALUE`` for a body that cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from anyio import to_thread
from starlette.requests import Request

from cairn.errors import CairnError, UnsafePath
from cairn.server.auth.permissions import Permission, Principal, ResourceKind
from cairn.server.auth.rules import After, Rule, Source, Target, find_rule
from cairn.server.auth.users import Reads, UserStore
from cairn.server.protocol import DEFAULT_MAX_BYTES

__all__ = ["SESSION_COOKIE", "AuthMiddleware", "auth_enabled", "auth_via", "principal_of"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "cairn_session"
SESSION_MODULE = "cairn.server.auth.session"
API_PREFIXES = ("/api/2.0/", "/api/3.0/", "/ajax-api/")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_log = logging.getLogger(__name__)

_HOW_TO_AUTHENTICATE = (
    "send a token (CAIRN_TRACKING_TOKEN or MLFLOW_TRACKING_TOKEN) or a user name and password "
    "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD); an admin creates users with `cairn users add`"
)


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


class Refusal(Exception):
    """A request answered by the middleware itself, in MLflow's error shape."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Credentials:
    """What the request presented: a token, a user name and secret, or a session cookie."""

    via: str
    token: str | None = None
    name: str | None = None
    secret: str | None = None
    cookie: str | None = None


def _headers(scope: Scope) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        result.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return result


def _credentials(scope: Scope, headers: dict[str, str]) -> Credentials | None:
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
                raise _unauthenticated("malformed Basic credentials (expected base64 of user:password)") from None
            name, sep, secret = decoded.partition(":")
            if not sep or not name:
                raise _unauthenticated("malformed Basic credentials (expected base64 of user:password)")
            return Credentials("header", name=name, secret=secret)
        raise _unauthenticated(f"unsupported Authorization scheme {scheme!r}; use Bearer <token> or Basic")
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


def _refuse_cross_site(headers: dict[str, str], method: str, path: str) -> None:
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
        raise _denied(
            f"{method} {path} was sent by a browser from another site (Sec-Fetch-Site: {site}, Origin: {origin}); "
            "credentials a browser attaches by itself do not authorize cross-site writes"
        )


def _unauthenticated(reason: str) -> Refusal:
    return Refusal(401, "UNAUTHENTICATED", f"cairn server: {reason}; {_HOW_TO_AUTHENTICATE}")


def _denied(message: str) -> Refusal:
    return Refusal(403, "PERMISSION_DENIED", message)


def _invalid(message: str) -> Refusal:
    return Refusal(400, "INVALID_PARAMETER_VALUE", message)


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


# -- what the rule names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestParts:
    """The parts of a request the rules read."""

    method: str
    path: str
    path_params: dict[str, str]
    query: dict[str, list[str]]
    body: dict[str, Any] | None


def _values(request: RequestParts, rule: Rule) -> list[Any]:
    """The values of the rule's first key the request carries (a list for repeated query keys)."""
    source = rule.source
    if source is Source.ARGS:
        source = Source.QUERY if request.method not in _BODY_METHODS or request.body is None else Source.BODY
    for key in rule.keys:
        if source is Source.PATH:
            if key in request.path_params:
                return [request.path_params[key]]
        elif source is Source.QUERY:
            if request.query.get(key):
                return list(request.query[key])
        else:
            value = (request.body or {}).get(key)
            if value is not None and value != "":
                return value if isinstance(value, list) else [value]
    return [rule.default] if rule.default is not None else []


def _ids(request: RequestParts, rule: Rule) -> list[str]:
    values = _values(request, rule)
    if not values:
        raise _invalid(f"Missing value for required parameter '{rule.keys[0]}'.")
    ids = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _invalid(f"Invalid value {value!r} for parameter '{rule.keys[0]}': expected a string.")
        ids.append(str(value))
    return ids


Need = tuple[ResourceKind, str, Permission, str]
"""A resource, the permission needed on it, and how to name it in a refusal."""


class Resolver:
    """Turns a rule and a request into the resources whose permission is checked (blocking: DB lookups)."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads

    def needs(self, rule: Rule, request: RequestParts) -> list[Need]:
        target, permission = rule.target, rule.permission
        if target is Target.EXPERIMENT:
            return [self._experiment(i, permission) for i in _ids(request, rule)]
        if target is Target.EXPERIMENT_NAME:
            [name] = _ids(request, rule)[:1]
            found = self.reads.experiment_id_by_name(name)
            return [] if found is None else [self._experiment(found, permission, f"experiment {name!r} ({found})")]
        if target in (Target.RUN, Target.RUNS):
            return [need for run_id in _ids(request, rule) for need in self._run(run_id, permission)]
        if target is Target.LOGGED_MODEL:
            return [need for model_id in _ids(request, rule) for need in self._logged_model(model_id, permission)]
        if target is Target.REGISTERED_MODEL:
            return [self._model(name, permission) for name in _ids(request, rule)]
        if target is Target.MODEL_VERSION_SOURCE:
            return self._model_version_source(rule, request)
        if target is Target.ARTIFACT_PATH:
            return self._artifact_path(rule, request)
        raise AssertionError(f"no resolution for {target}")

    @staticmethod
    def _experiment(experiment_id: str, permission: Permission, label: str | None = None) -> Need:
        return ResourceKind.EXPERIMENT, experiment_id, permission, label or f"experiment {experiment_id}"

    @staticmethod
    def _model(name: str, permission: Permission) -> Need:
        return ResourceKind.REGISTERED_MODEL, name, permission, f"registered model {name!r}"

    def _run(self, run_id: str, permission: Permission) -> list[Need]:
        experiment_id = self.reads.experiment_of_run(run_id)
        if experiment_id is None:
            return []  # no such run: the handler answers RESOURCE_DOES_NOT_EXIST
        return [self._experiment(experiment_id, permission, f"experiment {experiment_id} (of run {run_id})")]

    def _logged_model(self, model_id: str, permission: Permission) -> list[Need]:
        from cairn.server.logged_models import owner_of_model_id

        owner = owner_of_model_id(model_id)
        if owner is None:
            return []  # not an id this server hands out: the handler answers RESOURCE_DOES_NOT_EXIST
        kind, owner_id = owner
        if kind == "run":
            return self._run(owner_id, permission)
        return [self._experiment(owner_id, permission, f"experiment {owner_id} (of logged model {model_id})")]

    def _model_version_source(self, rule: Rule, request: RequestParts) -> list[Need]:
        """EDIT on the registered model, READ on where the version's files come from (a run, a logged
        model, or an experiment's proxied artifacts): registering must not expose what one cannot read."""
        needs = [self._model(name, rule.permission) for name in _ids(request, rule)]
        body = request.body or {}
        run_id, source = body.get("run_id"), body.get("source")
        if isinstance(run_id, str) and run_id:
            needs += self._run(run_id, Permission.READ)
        if isinstance(source, str):
            if source.startswith("runs:/"):
                needs += self._run(source[len("runs:/") :].lstrip("/").partition("/")[0], Permission.READ)
            elif source.startswith("models:/"):
                ref = source[len("models:/") :].strip("/")
                if "/" not in ref and "@" not in ref:
                    needs += self._logged_model(ref, Permission.READ)
            elif source.startswith("mlflow-artifacts:"):
                rest = source[len("mlflow-artifacts:") :]
                if rest.startswith("//"):
                    rest = "/" + rest[2:].partition("/")[2]
                needs += [self._artifact_experiment(rest.lstrip("/"), Permission.READ)]
        return needs

    def _artifact_path(self, rule: Rule, request: RequestParts) -> list[Need]:
        values = _values(request, rule)
        path = values[0] if values else ""
        if not isinstance(path, str):
            raise _invalid(f"Invalid value {path!r} for parameter 'path': expected a string.")
        return [self._artifact_experiment(path, rule.permission)]

    @staticmethod
    def _artifact_experiment(path: str, permission: Permission) -> Need:
        from cairn.artifacts.paths import safe_relpath

        try:
            relative = safe_relpath(path)
        except UnsafePath as exc:
            raise _invalid(str(exc)) from None
        first = relative.partition("/")[0]
        if not first.isdecimal():
            return ResourceKind.EXPERIMENT, "", Permission.MANAGE, f"the artifact path {relative!r} (no experiment's)"
        return ResourceKind.EXPERIMENT, first, permission, f"experiment {first} (artifacts {relative!r})"


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
        headers = _headers(scope)
        found = find_rule(path, method)
        rule, path_params = found if found is not None else (None, {})
        public = rule is not None and rule.target is Target.PUBLIC
        try:
            credentials = _credentials(scope, headers)
        except Refusal:
            if not public:
                raise
            credentials = None
        if credentials is None and not public:
            raise _unauthenticated("authentication required")
        if credentials is not None and credentials.via == "header" and method not in _SAFE_METHODS:
            _refuse_cross_site(headers, method, path)
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
            principal, needs = await to_thread.run_sync(decide, credentials, rule, request, body_error is None)
        state["principal"] = principal
        state["auth_via"] = credentials.via if principal is not None and credentials is not None else None
        if public:
            await self.app(scope, receive, send)
            return
        if principal is None:
            what = "session" if credentials is not None and credentials.via == "cookie" else "credentials"
            raise _unauthenticated(
                f"invalid {what} (unknown token, wrong password, or a user that was removed or whose token was rotated)"
            )
        if rule is None:
            if not principal.is_admin:
                raise _denied(
                    f"{method} {path} has no permission rule on this server, so only admins may use it "
                    f"(user {principal.name!r} is not an admin)"
                )
            await self.app(scope, receive, send)
            return
        if rule.target is Target.NOT_FOUND and not principal.is_admin:
            raise Refusal(404, "ENDPOINT_NOT_FOUND", f"No endpoint {method} {path}")
        if rule.target is Target.ADMIN and not principal.is_admin:
            raise _denied(f"{method} {path} is for admins only (user {principal.name!r} is not an admin)")
        if body_error is not None:
            raise body_error
        for kind, resource, needed, label in needs:
            have = principal.permission(kind, resource) if resource else Permission.NONE
            if have < needed:
                raise _denied(_denial(principal, method, path, kind, resource, label, have, needed))
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
        if not _reads_body(rule, method):
            return None, receive
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _invalid(f"Request body of {declared} bytes exceeds the limit of {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _invalid("the client disconnected before the request body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _invalid(f"Request body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        body: dict[str, Any] | None = None
        if raw.strip():
            try:
                parsed = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise _invalid(f"Malformed JSON in request body: {exc}") from None
            if not isinstance(parsed, dict):
                raise _invalid(f"Request body must be a JSON object, got {type(parsed).__name__}")
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


def _reads_body(rule: Rule, method: str) -> bool:
    """Whether checking the rule, or what follows it, needs the request's JSON body."""
    if rule.after in (After.GRANT_MODEL, After.RENAME_MODEL, After.FORGET_MODEL):
        return True
    if rule.target in (Target.PUBLIC, Target.AUTHENTICATED, Target.NOT_FOUND, Target.ADMIN):
        return False
    if rule.target is Target.MODEL_VERSION_SOURCE:
        return True
    return rule.source is Source.BODY or (rule.source is Source.ARGS and method in _BODY_METHODS)


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
