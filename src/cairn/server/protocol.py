"""The wire protocol shared by every MLflow REST endpoint of ``cairn server``.

MLflow answers errors as ``{"error_code": "<NAME>", "message": "..."}`` with the HTTP status its
``ERROR_CODE_TO_HTTP_STATUS`` assigns; its client turns that back into ``MlflowException``. This module
maps cairn's errors onto that shape once, reads request bodies and query strings strictly, and builds
the ``/api/2.0/mlflow/...`` + ``/ajax-api/2.0/mlflow/...`` route pairs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cairn.errors import (
    CairnError,
    InvalidArgument,
    NotFound,
    ResourceAlreadyExists,
    RunNotActive,
    StoreLocked,
    UnsafeModel,
    UnsafePath,
)

if TYPE_CHECKING:
    from cairn.server.auth.users import UserStore
    from cairn.tracking.client import Client

__all__ = [
    "API_PREFIXES",
    "DEFAULT_MAX_BYTES",
    "MlflowApiError",
    "ServerContext",
    "classify",
    "error_response",
    "json_object",
    "json_route",
    "query_params",
    "read_body",
    "read_json",
]

_log = logging.getLogger(__name__)

API_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""Largest JSON body any endpoint reads unless it names its own (smaller) limit."""


class MlflowApiError(Exception):
    """An error to answer in MLflow's shape: ``{"error_code": error_code, "message": message}``."""

    def __init__(self, error_code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.status = status


def invalid(message: str) -> MlflowApiError:
    """An ``INVALID_PARAMETER_VALUE`` (400) error."""
    return MlflowApiError("INVALID_PARAMETER_VALUE", message, 400)


@dataclass(frozen=True)
class ServerContext:
    """What every API module's ``routes(ctx)`` gets.

    Attributes:
        client: the cairn client over the server's store.
        serve_artifacts: whether the server proxies artifacts (``mlflow-artifacts:/`` locations).
        artifact_root: the artifact root new experiments' artifacts go under.
        users: the users and their grants (``cairn server --auth``); None when auth is off.
    """

    client: Client
    serve_artifacts: bool
    artifact_root: str
    users: UserStore | None = None


def classify(exc: BaseException) -> tuple[str, int]:
    """MLflow's error code and HTTP status for ``exc``."""
    if isinstance(exc, MlflowApiError):
        return exc.error_code, exc.status
    if isinstance(exc, NotFound):
        return "RESOURCE_DOES_NOT_EXIST", 404
    if isinstance(exc, ResourceAlreadyExists):
        return "RESOURCE_ALREADY_EXISTS", 400
    if isinstance(exc, StoreLocked):
        return "TEMPORARILY_UNAVAILABLE", 503
    if isinstance(exc, UnsafeModel):
        return "PERMISSION_DENIED", 403
    if isinstance(exc, (InvalidArgument, UnsafePath, RunNotActive)):
        return "INVALID_PARAMETER_VALUE", 400
    if isinstance(exc, CairnError) and isinstance(exc, ValueError):
        return "INVALID_PARAMETER_VALUE", 400
    return "INTERNAL_ERROR", 500


def error_response(exc: BaseException) -> JSONResponse:
    """MLflow's error body and status for ``exc`` (an :class:`MlflowApiError` or a cairn error).

    Anything else is an ``INTERNAL_ERROR`` (500) whose message names only the exception type; the
    traceback goes to the server log, not to the client.
    """
    code, status = classify(exc)
    if code == "INTERNAL_ERROR" and not isinstance(exc, (MlflowApiError, CairnError)):
        _log.error("internal error answering a request", exc_info=exc)
        message = f"internal server error ({type(exc).__name__})"
    else:
        message = exc.message if isinstance(exc, MlflowApiError) else str(exc)
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


async def read_json(request: Request, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """The request's JSON object body (``{}`` for an empty body).

    Raises:
        MlflowApiError: ``INVALID_PARAMETER_VALUE`` for a body over ``max_bytes``, malformed JSON or
            a JSON value that is not an object.
    """
    return json_object(await read_body(request, max_bytes=max_bytes))


async def read_body(request: Request, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The request's body as sent.

    Raises:
        MlflowApiError: ``INVALID_PARAMETER_VALUE`` for a body over ``max_bytes``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise invalid(f"Request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise invalid(f"Request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` decoded as a JSON object (``{}`` for an empty body).

    Raises:
        MlflowApiError: ``INVALID_PARAMETER_VALUE`` for malformed JSON or a JSON value that is not an object.
    """
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"Malformed JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise invalid(f"Request body must be a JSON object, got {type(body).__name__}")
    return body


def query_params(request: Request) -> dict[str, Any]:
    """The query string as a dict: a key given once maps to its string, a repeated key to a list."""
    result: dict[str, Any] = {}
    for key in request.query_params:
        values = request.query_params.getlist(key)
        result[key] = values[0] if len(values) == 1 else values
    return result


async def request_args(request: Request, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """The arguments of a request: the query string for GET, the JSON body otherwise."""
    if request.method == "GET":
        return query_params(request)
    return await read_json(request, max_bytes=max_bytes)


Handler = Callable[[Request], Awaitable[Response]]


def json_route(path: str, handler: Handler, methods: Sequence[str]) -> list[BaseRoute]:
    """Two routes for ``path`` (``/api/2.0/mlflow/<path>`` and ``/ajax-api/2.0/mlflow/<path>``).

    Errors the handler raises (:class:`MlflowApiError`, cairn errors, anything else) become MLflow-shaped
    responses.
    """

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # every error becomes MLflow's error body; see error_response
            return error_response(exc)

    path = path.lstrip("/")
    return [Route(prefix + path, endpoint, methods=list(methods)) for prefix in API_PREFIXES]


def endpoint_not_found(request: Request) -> JSONResponse:
    """MLflow's 404 for an API path this server does not implement."""
    return JSONResponse(
        {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No endpoint {request.method} {request.url.path}"},
        status_code=404,
    )
