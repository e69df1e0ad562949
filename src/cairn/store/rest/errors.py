"""Errors of the HTTP client store, and MLflow's error JSON mapped back onto cairn's errors.

MLflow answers ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "..."}`` with an HTTP status. The
code alone is too coarse for cairn's contracts (a deleted run and a bad key are both
``INVALID_PARAMETER_VALUE``), so a few messages MLflow's server (and cairn's) are known to send refine it.
"""

from __future__ import annotations

import json
from typing import Any

from cairn.errors import (
    CairnError,
    ExperimentNotFound,
    InvalidArgument,
    NotFound,
    ParamConflict,
    ResourceAlreadyExists,
    RunNotActive,
    RunNotFound,
    StoreError,
    StoreLocked,
)

__all__ = ["AccessDenied", "AuthenticationFailed", "ServerUnavailable", "UnsupportedByServer", "error_from_response"]


class ServerUnavailable(StoreLocked):
    """The tracking server could not be reached, or kept answering 429/502/503/504, after every retry.

    A :class:`~cairn.errors.StoreLocked`: the metric writer keeps the points and tries again later instead
    of dropping them.
    """


class AccessDenied(CairnError, PermissionError):
    """The server refused the credentials (HTTP 401) or the permission (HTTP 403)."""


class AuthenticationFailed(AccessDenied):
    """The server wants credentials (HTTP 401): none were sent, or it does not know them."""


_CREDENTIALS_HINT = (
    "set CAIRN_TRACKING_TOKEN (or MLFLOW_TRACKING_TOKEN) to your token, or MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD; an admin of the server creates users and tokens with `cairn users add`"
)


def _access_error(status: int, code: str, message: str, where: str, server: str) -> AccessDenied:
    if code == "UNAUTHENTICATED" or status == 401:
        return AuthenticationFailed(
            f"the tracking server {server} refused the request's credentials: {message} ({where}). To authenticate, "
            f"{_CREDENTIALS_HINT}"
        )
    return AccessDenied(
        f"the tracking server {server} denied the request: {message} ({where}). Ask an admin of the server for "
        "the permission (`cairn users grant`)"
    )


def _server(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


class UnsupportedByServer(CairnError, NotImplementedError):
    """The operation has no equivalent in MLflow's REST API, or this server does not implement it."""


_INVALID_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "BAD_REQUEST",
        "MALFORMED_REQUEST",
        "INVALID_REQUEST",
        "INVALID_STATE",
        "INVALID_FIELD_LENGTH",
        "REQUEST_LIMIT_EXCEEDED",
    }
)
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})


def _body(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def error_from_response(
    status: int, text: str, *, method: str, url: str, not_found: type[NotFound] = NotFound
) -> CairnError:
    """The cairn error for an MLflow error response.

    Args:
        status: HTTP status.
        text: the response body (MLflow's error JSON, or whatever a proxy sent).
        method: the request's method, for the message.
        url: the request's URL, for the message.
        not_found: the class for ``RESOURCE_DOES_NOT_EXIST`` when the message does not say what is missing.
    """
    body = _body(text)
    code = str(body.get("error_code") or "")
    message = str(body.get("message") or body.get("detail") or text.strip()[:500] or f"HTTP {status}")
    where = f"{method} {url} -> HTTP {status}{' ' + code if code else ''}"
    full = f"{message} ({where})"
    if code == "ENDPOINT_NOT_FOUND" or (status in (404, 405) and not code):
        return UnsupportedByServer(f"the tracking server does not support {method} {url} ({where})")
    if code in _NOT_FOUND_CODES or status == 404:
        if message.startswith(("Run ", "no run with id")):
            return RunNotFound(full)
        if "xperiment" in message and not_found is NotFound:
            return ExperimentNotFound(full)
        return not_found(full)
    if code == "RESOURCE_ALREADY_EXISTS":
        return ResourceAlreadyExists(full)
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403):
        return _access_error(status, code, message, where, _server(url))
    if code in ("TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED") or status in (429, 502, 503, 504):
        return ServerUnavailable(full)
    if code in _INVALID_CODES or 400 <= status < 500:
        if "must be in the 'active' state" in message or " is deleted" in message:
            return RunNotActive(full)
        if "Changing param values is not allowed" in message or message.startswith("param "):
            return ParamConflict(full)
        return InvalidArgument(full)
    return StoreError(full)
