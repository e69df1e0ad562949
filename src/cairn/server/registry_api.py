"""MLflow's model registry REST API (``/api/2.0/mlflow/registered-models/...``, ``.../model-versions/...``)
over cairn's registry, plus MLflow 3's logged models (:mod:`cairn.server.logged_models`).

Shapes, paths, methods and error codes follow ``mlflow/server/handlers.py`` and
``model_registry.proto``. Every handler runs the blocking store call in the thread pool.

Model version sources: a client may send ``runs:/<run>/<path>``, ``models:/<model_id>`` (MLflow 3's
logged model), ``mlflow-artifacts:/<path>`` (the proxied form of a location under the artifact root) or
an artifact-store URL. cairn stores the resolved location (as its own ``register_model`` does), so
``models:/<name>/<version>`` resolves the same from cairn and from MLflow. A local path is accepted
only inside the server's artifact root: a client must not register, and then download through the
proxy, an arbitrary file of the server's machine.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from cairn.registry.entities import ModelVersion, RegisteredModel
from cairn.server.auth.middleware import principal_of
from cairn.server.auth.permissions import Principal, readable_models
from cairn.server.locations import public_location as client_location
from cairn.server.protocol import ServerContext, invalid, json_route, request_args

__all__ = ["client_location", "routes", "stored_location"]

MAX_REGISTERED_MODELS = 1000  # MLflow's SEARCH_REGISTERED_MODEL_MAX_RESULTS_THRESHOLD
MAX_MODEL_VERSIONS = 200_000  # MLflow's SEARCH_MODEL_VERSION_MAX_RESULTS_THRESHOLD
MAX_FILTERED_SEARCH = 50_000
"""How many models (versions) a search reads before keeping those a non-admin user may read."""
PROXY_SCHEME = "mlflow-artifacts:"
_PROMPT_CLAUSE = re.compile(
    r"(?:^|\s+AND\s+)tags?\.`?mlflow\.prompt\.is_prompt`?\s*(?P<op>!=|=)\s*'true'\s*(?:AND\s+)?", re.IGNORECASE
)

Args = dict[str, Any]
Body = dict[str, Any]


# -- locations -------------------------------------------------------------------------------------


def stored_location(ctx: ServerContext, location: str) -> str:
    """The store's form of a location a client sent: ``mlflow-artifacts:/<rel>`` becomes
    ``<artifact root>/<rel>`` (confined to the root); a local path must lie inside the artifact root.

    Raises:
        MlflowApiError: INVALID_PARAMETER_VALUE for a path outside the root.
    """
    from cairn.artifacts.paths import safe_relpath
    from cairn.registry import uris

    if location.startswith(PROXY_SCHEME):
        if not ctx.serve_artifacts:
            raise invalid("mlflow-artifacts: locations need a server started with --serve-artifacts.")
        rest = location[len(PROXY_SCHEME) :]
        if rest.startswith("//"):  # mlflow-artifacts://host:port/path: only this server's own
            rest = "/" + rest[2:].partition("/")[2]
        return f"{ctx.artifact_root.rstrip('/')}/{safe_relpath(rest.lstrip('/'))}".rstrip("/")
    if uris.is_local(location) and not uris.is_registry_uri(location):
        resolved = os.path.realpath(uris.resolve_model_uri(location).location)
        root = os.path.realpath(ctx.artifact_root) if ctx.artifact_root else ""
        if not root or not (resolved == root or resolved.startswith(root + os.sep)):
            raise invalid(
                f"Invalid model version source: {location!r}. A local path is accepted only inside the "
                "server's artifact root; register runs:/<run_id>/<path> or models:/<model_id> instead"
            )
        return resolved
    return location


# -- JSON shapes -----------------------------------------------------------------------------------


def _tags_json(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


def version_json(ctx: ServerContext, version: ModelVersion) -> Body:
    """A ``ModelVersion`` message (empty fields left out, as MLflow's JSON does)."""
    from cairn.server.logged_models import model_id_of_location

    body: Body = {
        "name": version.name,
        "version": version.version,
        "creation_timestamp": version.creation_timestamp,
        "last_updated_timestamp": version.last_updated_timestamp,
        "current_stage": version.current_stage,
        "source": client_location(ctx, version.source),
        "status": version.status,
    }
    optional = {
        "user_id": version.user_id,
        "description": version.description,
        "run_id": version.run_id,
        "status_message": version.status_message,
        "run_link": version.run_link,
        "model_id": model_id_of_location(version.source),
    }
    body.update({k: v for k, v in optional.items() if v})
    if version.tags:
        body["tags"] = _tags_json(version.tags)
    if version.aliases:
        body["aliases"] = list(version.aliases)
    return body


def model_json(ctx: ServerContext, model: RegisteredModel) -> Body:
    """A ``RegisteredModel`` message."""
    body: Body = {
        "name": model.name,
        "creation_timestamp": model.creation_timestamp,
        "last_updated_timestamp": model.last_updated_timestamp,
    }
    if model.description:
        body["description"] = model.description
    if model.latest_versions:
        body["latest_versions"] = [version_json(ctx, v) for v in model.latest_versions]
    if model.tags:
        body["tags"] = _tags_json(model.tags)
    if model.aliases:
        body["aliases"] = [{"alias": a, "version": v} for a, v in model.aliases.items()]
    return body


# -- request fields --------------------------------------------------------------------------------


def required_text(args: Args, key: str) -> str:
    """A string field that must be present and non-empty (MLflow's ``_assert_required``)."""
    value = text(args, key)
    if value is None:
        raise invalid(f"Missing value for required parameter '{key}'. See the API docs for more information.")
    return value


def text(args: Args, key: str) -> str | None:
    """An optional string field (MLflow's ``_assert_string``); absent or empty is None."""
    value = args.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid value {value!r} for parameter '{key}' supplied: expected a string")
    return value


def integer(args: Args, key: str, default: int, *, maximum: int) -> int:
    """An integer field that may arrive as a JSON number or a query-string digit string."""
    value = args.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdecimal())):
        raise invalid(f"Invalid value {value!r} for parameter '{key}' supplied: expected an integer")
    number = int(value)
    if not 1 <= number <= maximum:
        raise invalid(f"Invalid value {number} for parameter '{key}' supplied: it must be from 1 to {maximum}")
    return number


def strings(args: Args, key: str) -> list[str]:
    """A repeated string field (a JSON array, or one or several query-string values)."""
    value = args.get(key)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise invalid(f"Invalid value {value!r} for parameter '{key}' supplied: expected a list of strings")
    return items


def tag_list(args: Args, key: str = "tags") -> dict[str, str]:
    """``[{"key": ..., "value": ...}, ...]`` as a dict."""
    value = args.get(key)
    if value is None:
        return {}
    if not isinstance(value, list):
        raise invalid(f"Invalid value {value!r} for parameter '{key}' supplied: expected an array")
    result: dict[str, str] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise invalid(f"Invalid value {item!r} in '{key}': expected {{'key': str, 'value': str}}")
        tag_value = item.get("value", "")
        if not isinstance(tag_value, str):
            raise invalid(f"Invalid value {tag_value!r} for '{key}' key {item['key']!r}: expected a string")
        result[item["key"]] = tag_value
    return result


def boolean(args: Args, key: str) -> bool:
    value = args.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(f"Invalid value {value!r} for parameter '{key}' supplied: expected a boolean")


def page(items: list[Any], args: Args, max_results: int) -> tuple[list[Any], str | None]:
    """One page of ``items`` (already fetched up to the page's end plus one) and the next token."""
    offset = page_offset(args)
    chunk = items[offset : offset + max_results]
    more = len(items) > offset + max_results
    return chunk, encode_token(offset + max_results) if more else None


def page_offset(args: Args) -> int:
    token = text(args, "page_token")
    if token is None:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))["offset"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
        raise invalid(f"Invalid page token {token!r}") from None
    if not isinstance(offset, int) or offset < 0:
        raise invalid(f"Invalid page token {token!r}")
    return offset


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode("ascii")


# -- handlers --------------------------------------------------------------------------------------


def _create_registered_model(ctx: ServerContext, args: Args) -> Body:
    name = required_text(args, "name")
    model = ctx.client.create_registered_model(name, tag_list(args) or None, text(args, "description"))
    return {"registered_model": model_json(ctx, model)}


def _get_registered_model(ctx: ServerContext, args: Args) -> Body:
    name = required_text(args, "name")
    return {"registered_model": model_json(ctx, ctx.client.get_registered_model(name))}


def _rename_registered_model(ctx: ServerContext, args: Args) -> Body:
    name, new_name = required_text(args, "name"), required_text(args, "new_name")
    return {"registered_model": model_json(ctx, ctx.client.rename_registered_model(name, new_name))}


def _update_registered_model(ctx: ServerContext, args: Args) -> Body:
    name = required_text(args, "name")
    description = args.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid(f"Invalid value {description!r} for parameter 'description' supplied: expected a string")
    return {"registered_model": model_json(ctx, ctx.client.update_registered_model(name, description))}


def _delete_registered_model(ctx: ServerContext, args: Args) -> Body:
    name = required_text(args, "name")
    ctx.client.delete_registered_model(name)
    return {}


def _prompt_clause(filter_string: str | None) -> tuple[str | None, bool]:
    """``filter_string`` without the prompt clause MLflow's client appends, and whether it asked for prompts.

    MLflow 3's client adds ``AND tag.`mlflow.prompt.is_prompt` != 'true'`` to every registered-model
    search (``= 'true'`` when it searches prompts); cairn's registry holds no prompts.
    """
    if not filter_string:
        return filter_string, False
    match = _PROMPT_CLAUSE.search(filter_string)
    if match is None:
        return filter_string, False
    parts = [filter_string[: match.start()].strip(), filter_string[match.end() :].strip()]
    return " AND ".join(part for part in parts if part) or None, match.group("op") == "="


def _search_registered_models(ctx: ServerContext, args: Args, principal: Principal | None = None) -> Body:
    """With ``principal`` (auth on): only the models it may read, filtered before paging."""
    max_results = integer(args, "max_results", 100, maximum=MAX_REGISTERED_MODELS)
    filter_string, prompts = _prompt_clause(text(args, "filter"))
    if prompts:
        return {"registered_models": []}
    visible = readable_models(principal)
    wanted = page_offset(args) + max_results + 1 if visible is None else MAX_FILTERED_SEARCH
    found = ctx.client.search_registered_models(filter_string, wanted, strings(args, "order_by") or None)
    if visible is not None:
        found = [m for m in found if m.name in visible]
    chunk, token = page(found, args, max_results)
    body: Body = {"registered_models": [model_json(ctx, m) for m in chunk]}
    if token:
        body["next_page_token"] = token
    return body


def _get_latest_versions(ctx: ServerContext, args: Args) -> Body:
    name = required_text(args, "name")
    versions = ctx.client.get_latest_versions(name, strings(args, "stages") or None)
    return {"model_versions": [version_json(ctx, v) for v in versions]}


def _set_registered_model_tag(ctx: ServerContext, args: Args) -> Body:
    name, key = required_text(args, "name"), required_text(args, "key")
    ctx.client.set_registered_model_tag(name, key, _tag_value(args))
    return {}


def _delete_registered_model_tag(ctx: ServerContext, args: Args) -> Body:
    name, key = required_text(args, "name"), required_text(args, "key")
    ctx.client.delete_registered_model_tag(name, key)
    return {}


def _set_alias(ctx: ServerContext, args: Args) -> Body:
    name, alias = required_text(args, "name"), required_text(args, "alias")
    version = required_text(args, "version")
    ctx.client.set_registered_model_alias(name, alias, version)
    return {}


def _delete_alias(ctx: ServerContext, args: Args) -> Body:
    name, alias = required_text(args, "name"), required_text(args, "alias")
    ctx.client.delete_registered_model_alias(name, alias)
    return {}


def _get_by_alias(ctx: ServerContext, args: Args) -> Body:
    name, alias = required_text(args, "name"), required_text(args, "alias")
    return {"model_version": version_json(ctx, ctx.client.get_model_version_by_alias(name, alias))}


def _create_model_version(ctx: ServerContext, args: Args) -> Body:
    from cairn.server.logged_models import LoggedModels

    name, source = required_text(args, "name"), required_text(args, "source")
    run_id, model_id = text(args, "run_id"), text(args, "model_id")
    logged = LoggedModels(ctx).source_of(source, model_id)
    if logged is not None:  # models:/<model_id>: the logged model's files, from its run
        location, run_id = logged.artifact_location, run_id or logged.source_run_id
    else:
        location = stored_location(ctx, source)
    version = ctx.client.create_model_version(
        name,
        location,
        run_id=run_id,
        tags=tag_list(args) or None,
        run_link=text(args, "run_link"),
        description=text(args, "description"),
    )
    return {"model_version": version_json(ctx, version)}


def _name_version(args: Args) -> tuple[str, str]:
    name, version = required_text(args, "name"), required_text(args, "version")
    return name, version


def _get_model_version(ctx: ServerContext, args: Args) -> Body:
    return {"model_version": version_json(ctx, ctx.client.get_model_version(*_name_version(args)))}


def _update_model_version(ctx: ServerContext, args: Args) -> Body:
    description = args.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid(f"Invalid value {description!r} for parameter 'description' supplied: expected a string")
    version = ctx.client.update_model_version(*_name_version(args), description=description)
    return {"model_version": version_json(ctx, version)}


def _delete_model_version(ctx: ServerContext, args: Args) -> Body:
    ctx.client.delete_model_version(*_name_version(args))
    return {}


def _search_model_versions(ctx: ServerContext, args: Args, principal: Principal | None = None) -> Body:
    """With ``principal`` (auth on): only versions of the models it may read, filtered before paging."""
    max_results = integer(args, "max_results", 10_000, maximum=MAX_MODEL_VERSIONS)
    if strings(args, "order_by"):
        raise invalid("search_model_versions orders by name, then newest version first; order_by is not supported")
    visible = readable_models(principal)
    wanted = min(page_offset(args) + max_results + 1, MAX_MODEL_VERSIONS + 1) if visible is None else None
    found = ctx.client.search_model_versions(text(args, "filter"), wanted or MAX_FILTERED_SEARCH)
    if visible is not None:
        found = [v for v in found if v.name in visible]
    chunk, token = page(found, args, max_results)
    body: Body = {"model_versions": [version_json(ctx, v) for v in chunk]}
    if token:
        body["next_page_token"] = token
    return body


def _transition_stage(ctx: ServerContext, args: Args) -> Body:
    name, version = _name_version(args)
    stage = required_text(args, "stage")
    if "archive_existing_versions" not in args:
        raise invalid("Missing value for required parameter 'archive_existing_versions'.")
    archive = boolean(args, "archive_existing_versions")
    moved = ctx.client.transition_model_version_stage(name, version, stage, archive)
    return {"model_version": version_json(ctx, moved)}


def _set_model_version_tag(ctx: ServerContext, args: Args) -> Body:
    name, version = _name_version(args)
    key = required_text(args, "key")
    ctx.client.set_model_version_tag(name, version, key, _tag_value(args))
    return {}


def _delete_model_version_tag(ctx: ServerContext, args: Args) -> Body:
    name, version = _name_version(args)
    key = required_text(args, "key")
    ctx.client.delete_model_version_tag(name, version, key)
    return {}


def _download_uri(ctx: ServerContext, args: Args) -> Body:
    location = ctx.client.get_model_version_download_uri(*_name_version(args))
    return {"artifact_uri": client_location(ctx, location)}


def _tag_value(args: Args) -> str:
    value = args.get("value")
    if not isinstance(value, str):
        raise invalid(f"Missing or invalid value {value!r} for parameter 'value': expected a string")
    return value


# -- routing ---------------------------------------------------------------------------------------


Handler = Callable[[ServerContext, Args], Body]
ViewerHandler = Callable[[ServerContext, Args, "Principal | None"], Body]


def viewer_endpoint(ctx: ServerContext, handler: ViewerHandler) -> Callable[[Request], Any]:
    """An endpoint whose answer depends on who asks (searches: only what the user may read)."""

    async def run(request: Request) -> Response:
        args = await request_args(request)
        return JSONResponse(await run_in_threadpool(handler, ctx, args, principal_of(request)))

    return run


def endpoint(ctx: ServerContext, handler: Handler, **path_args: str) -> Callable[[Request], Any]:
    """An async endpoint: read the request's arguments, run ``handler`` in the thread pool, answer JSON."""

    async def run(request: Request) -> Response:
        args = await request_args(request)
        for name, key in path_args.items():
            args[key] = request.path_params[name]
        return JSONResponse(await run_in_threadpool(handler, ctx, args))

    return run


_ROUTES: list[tuple[str, Handler, list[str]]] = [
    ("registered-models/create", _create_registered_model, ["POST"]),
    ("registered-models/rename", _rename_registered_model, ["POST"]),
    ("registered-models/update", _update_registered_model, ["PATCH"]),
    ("registered-models/delete", _delete_registered_model, ["DELETE"]),
    ("registered-models/get", _get_registered_model, ["GET"]),
    ("registered-models/get-latest-versions", _get_latest_versions, ["POST", "GET"]),
    ("registered-models/set-tag", _set_registered_model_tag, ["POST"]),
    ("registered-models/delete-tag", _delete_registered_model_tag, ["DELETE"]),
    ("model-versions/create", _create_model_version, ["POST"]),
    ("model-versions/update", _update_model_version, ["PATCH"]),
    ("model-versions/transition-stage", _transition_stage, ["POST"]),
    ("model-versions/delete", _delete_model_version, ["DELETE"]),
    ("model-versions/get", _get_model_version, ["GET"]),
    ("model-versions/get-download-uri", _download_uri, ["GET"]),
    ("model-versions/set-tag", _set_model_version_tag, ["POST"]),
    ("model-versions/delete-tag", _delete_model_version_tag, ["DELETE"]),
]


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The registry and logged-model routes, each under ``/api/2.0/mlflow/`` and ``/ajax-api/2.0/mlflow/``."""
    from cairn.server.logged_models import logged_model_routes

    result: list[BaseRoute] = []
    for path, handler, methods in _ROUTES:
        result.extend(json_route(path, endpoint(ctx, handler), methods))
    alias: dict[str, Handler] = {"POST": _set_alias, "DELETE": _delete_alias, "GET": _get_by_alias}
    result.extend(json_route("registered-models/alias", _by_method(ctx, alias), list(alias)))
    result.extend(json_route("registered-models/search", viewer_endpoint(ctx, _search_registered_models), ["GET"]))
    result.extend(json_route("model-versions/search", viewer_endpoint(ctx, _search_model_versions), ["GET"]))
    result.extend(logged_model_routes(ctx))
    return result


def _by_method(ctx: ServerContext, handlers: dict[str, Handler]) -> Callable[[Request], Any]:
    """One endpoint serving several methods of one path (``registered-models/alias``)."""
    endpoints = {method: endpoint(ctx, handler) for method, handler in handlers.items()}

    async def run(request: Request) -> Response:
        response: Response = await endpoints[request.method](request)
        return response

    return run
