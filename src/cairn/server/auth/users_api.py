"""User management over HTTP for admins, with the paths and JSON of MLflow's basic-auth app.

``POST users/create``, ``GET users/get``, ``GET users/list``, ``GET users/current``, ``PATCH
users/update-password``, ``PATCH users/update-admin``, ``DELETE users/delete``, and
``experiments/permissions/{create,get,update,delete}`` / ``registered-models/permissions/...``, under
``/api/2.0/mlflow/`` and ``/ajax-api/2.0/mlflow/``, so MLflow's ``AuthServiceClient`` manages cairn's users.
Only admins may use them (the allow-list says so and every handler checks it again), except
``users/current``, which tells any user who it is. Differences from MLflow: ``users/create`` also answers
the new user's ``token`` (shown once, as ``cairn users add`` prints it), and a password is optional.

The routes exist only when the server runs with ``--auth``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from cairn.errors import NotFound
from cairn.server.auth.middleware import principal_of
from cairn.server.auth.permissions import Permission, Principal, ResourceKind
from cairn.server.auth.users import UserInfo, UserStore
from cairn.server.protocol import MlflowApiError, ServerContext, invalid, json_route, request_args

__all__ = ["routes"]

Args = dict[str, Any]
Body = dict[str, Any]
Operation = Callable[[UserStore, Args, Principal], Body]


def _text(args: Args, key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise invalid(f"Missing value for required parameter '{key}'.")
    return value


def _permission(args: Args) -> Permission:
    level = Permission.parse(_text(args, "permission"))
    if level is Permission.NONE:
        raise invalid("permission NO_PERMISSIONS: delete the permission instead")
    return level


def user_json(info: UserInfo) -> Body:
    """A user as MLflow's ``User.to_json`` shows it (no password hash, no token)."""
    return {
        "id": info.user_id,
        "username": info.name,
        "is_admin": info.is_admin,
        "experiment_permissions": [
            {"experiment_id": g.resource, "user_id": info.user_id, "permission": g.permission.name}
            for g in info.grants
            if g.kind is ResourceKind.EXPERIMENT
        ],
        "registered_model_permissions": [
            {"name": g.resource, "user_id": info.user_id, "permission": g.permission.name}
            for g in info.grants
            if g.kind is ResourceKind.REGISTERED_MODEL
        ],
    }


# -- users -----------------------------------------------------------------------------------------


def _create_user(users: UserStore, args: Args, principal: Principal) -> Body:
    name = _text(args, "username")
    password = args.get("password") or None
    if password is not None and not isinstance(password, str):
        raise invalid("Invalid value for parameter 'password': expected a string.")
    token = users.add(name, admin=args.get("is_admin") is True, password=password)
    return {"user": user_json(users.user_info(name)), "token": token}


def _get_user(users: UserStore, args: Args, principal: Principal) -> Body:
    return {"user": user_json(users.user_info(_text(args, "username")))}


def _list_users(users: UserStore, args: Args, principal: Principal) -> Body:
    return {"users": [user_json(info) for info in users.list_users()]}


def _current_user(users: UserStore, args: Args, principal: Principal) -> Body:
    return {"user": user_json(users.user_info(principal.name))}


def _update_password(users: UserStore, args: Args, principal: Principal) -> Body:
    users.set_password(_text(args, "username"), _text(args, "password"))
    return {}


def _update_admin(users: UserStore, args: Args, principal: Principal) -> Body:
    admin = args.get("is_admin")
    if isinstance(admin, str) and admin.lower() in ("true", "false"):
        admin = admin.lower() == "true"
    if not isinstance(admin, bool):
        raise invalid("Invalid value for parameter 'is_admin': expected a boolean.")
    users.set_admin(_text(args, "username"), admin)
    return {}


def _delete_user(users: UserStore, args: Args, principal: Principal) -> Body:
    users.remove(_text(args, "username"))
    return {}


# -- grants ----------------------------------------------------------------------------------------


def _grant_ops(kind: ResourceKind, key: str, field: str) -> dict[str, Operation]:
    """create/get/update/delete of one user's permission on one resource of ``kind`` (named by ``key``)."""

    def grant_json(users: UserStore, name: str, resource: str) -> Body:
        info = users.user_info(name)
        for grant in info.grants:
            if grant.kind is kind and grant.resource == resource:
                return {field: {key: resource, "user_id": info.user_id, "permission": grant.permission.name}}
        raise NotFound(f"user {name!r} has no permission on {kind.value} {resource!r}")

    def create(users: UserStore, args: Args, principal: Principal) -> Body:
        name, resource = _text(args, "username"), _text(args, key)
        users.grant(name, kind, resource, _permission(args))
        return grant_json(users, name, resource)

    def get(users: UserStore, args: Args, principal: Principal) -> Body:
        return grant_json(users, _text(args, "username"), _text(args, key))

    def update(users: UserStore, args: Args, principal: Principal) -> Body:
        name, resource = _text(args, "username"), _text(args, key)
        grant_json(users, name, resource)  # MLflow: updating a permission that does not exist is an error
        users.grant(name, kind, resource, _permission(args))
        return {}

    def delete(users: UserStore, args: Args, principal: Principal) -> Body:
        users.revoke(_text(args, "username"), kind, _text(args, key))
        return {}

    return {"create": create, "get": get, "update": update, "delete": delete}


# -- routes ----------------------------------------------------------------------------------------


def _endpoint(users: UserStore, operation: Operation, *, admin_only: bool) -> Callable[[Request], Any]:
    async def handler(request: Request) -> Response:
        principal = principal_of(request)
        if principal is None or (admin_only and not principal.is_admin):
            raise MlflowApiError("PERMISSION_DENIED", "managing users is for admins only", 403)
        args = await request_args(request)
        return JSONResponse(await run_in_threadpool(operation, users, args, principal))

    return handler


_METHODS = {"create": "POST", "get": "GET", "update": "PATCH", "delete": "DELETE"}


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The user-management routes; none when the server runs without auth."""
    users = ctx.users
    if users is None:
        return []
    table: list[tuple[str, Operation, str, bool]] = [
        ("users/create", _create_user, "POST", True),
        ("users/get", _get_user, "GET", True),
        ("users/list", _list_users, "GET", True),
        ("users/current", _current_user, "GET", False),
        ("users/update-password", _update_password, "PATCH", True),
        ("users/update-admin", _update_admin, "PATCH", True),
        ("users/delete", _delete_user, "DELETE", True),
    ]
    for prefix, kind, key, field in (
        ("experiments", ResourceKind.EXPERIMENT, "experiment_id", "experiment_permission"),
        ("registered-models", ResourceKind.REGISTERED_MODEL, "name", "registered_model_permission"),
    ):
        for action, operation in _grant_ops(kind, key, field).items():
            table.append((f"{prefix}/permissions/{action}", operation, _METHODS[action], True))
    result: list[BaseRoute] = []
    for path, operation, method, admin_only in table:
        result += json_route(path, _endpoint(users, operation, admin_only=admin_only), [method])
    return result
