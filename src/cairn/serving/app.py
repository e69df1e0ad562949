"""The scoring server: a small ASGI app answering MLflow's scoring protocol for one loaded model.

Routes: ``GET /ping`` and ``GET /health`` (200 once the model is loaded; it is loaded before the
app exists), ``GET /version`` (cairn's version), ``POST /invocations`` (JSON, CSV or Parquet in,
``{"predictions": ...}`` out). Errors are MLflow's JSON, ``{"error_code": ..., "message": ...}``:
400 for a malformed body or an input the signature refuses, 413 for a body over ``max_body_size``
(checked on ``Content-Length`` and again while the body streams in), 415 for another content type,
504 when a prediction runs past ``timeout`` seconds.

A raw ASGI callable rather than a framework: per request it only reads the body, parses it, calls
``predict`` and writes one response. Small requests are answered on the event loop (a thread hop
costs more than their prediction); larger ones predict in a worker thread so ``timeout`` can cut
them off and ``/ping`` keeps answering.

``create_app_from_env`` is the factory uvicorn's worker processes import (``--workers N``): it reads
the model directory and options from ``CAIRN_SERVING_*`` environment variables set by the CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from cairn.errors import CairnError
from cairn.serving import protocol

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_TIMEOUT",
    "ENV_ALLOW_PICKLE",
    "ENV_MAX_BODY_SIZE",
    "ENV_MODEL_DIR",
    "ENV_TIMEOUT",
    "ScoringApp",
    "create_app_from_env",
]

DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
#: Bodies up to this size are parsed and predicted on the event loop; see the module docstring.
INLINE_BODY_LIMIT = 16 * 1024

ENV_MODEL_DIR = "CAIRN_SERVING_MODEL_DIR"
ENV_ALLOW_PICKLE = "CAIRN_SERVING_ALLOW_PICKLE"
ENV_MAX_BODY_SIZE = "CAIRN_SERVING_MAX_BODY_SIZE"
ENV_TIMEOUT = "CAIRN_SERVING_TIMEOUT"

CONTENT_JSON = "application/json"
CONTENT_CSV = "text/csv"
CONTENT_PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = (CONTENT_JSON, CONTENT_CSV, CONTENT_PARQUET)

_logger = logging.getLogger("cairn.serving")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _HTTPError(Exception):
    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _error_body(error_code: str, message: str) -> bytes:
    return json.dumps({"error_code": error_code, "message": message}).encode()


class ScoringApp:
    """ASGI app serving one loaded model (a :class:`~cairn.models.loading.PyFuncModel`).

    Args:
        model: the loaded model.
        max_body_size: largest request body accepted, in bytes.
        timeout: seconds a prediction may take before the request gets a 504 (``None``: no limit).
    """

    def __init__(self, model: Any, *, max_body_size: int = DEFAULT_MAX_BODY_SIZE, timeout: float | None = None):
        from cairn import __version__

        self.model = model
        self.max_body_size = max_body_size
        self.timeout = timeout
        self.input_schema = model.metadata.get_input_schema()
        self._version = __version__.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path == "/invocations":
                if method != "POST":
                    raise _HTTPError(405, "BAD_REQUEST", f"/invocations takes POST, not {method}")
                status, body = await self._invocations(scope, receive)
            elif path in ("/ping", "/health"):
                self._only_get(path, method)
                status, body = 200, b"\n"
            elif path == "/version":
                self._only_get(path, method)
                status, body = 200, self._version
            else:
                raise _HTTPError(404, "ENDPOINT_NOT_FOUND", f"no endpoint {path}: use /invocations, /ping, /version")
        except _HTTPError as exc:
            status, body = exc.status, _error_body(exc.error_code, exc.message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _only_get(path: str, method: str) -> None:
        if method != "GET":
            raise _HTTPError(405, "BAD_REQUEST", f"{path} takes GET, not {method}")

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_size
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise _HTTPError(
                        400, "BAD_REQUEST", f"invalid Content-Length {value.decode('latin-1')!r}"
                    ) from None
                if declared > limit:
                    raise _HTTPError(
                        413,
                        "BAD_REQUEST",
                        f"the request body is {declared} bytes, over this server's limit of {limit} bytes "
                        "(--max-body-size); send smaller batches",
                    )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HTTPError(400, "BAD_REQUEST", "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _HTTPError(
                        413,
                        "BAD_REQUEST",
                        f"the request body is over this server's limit of {limit} bytes (--max-body-size); "
                        "send smaller batches",
                    )
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _invocations(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        content_type = ""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        mime = _check_content_type(content_type)
        body = await self._read_body(scope, receive)
        if len(body) <= INLINE_BODY_LIMIT:
            return self._score(mime, body)
        future = asyncio.get_running_loop().run_in_executor(None, self._score, mime, body)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            raise _HTTPError(
                504, "DEADLINE_EXCEEDED", f"the prediction took longer than this server's --timeout of {self.timeout} s"
            ) from None

    def _score(self, mime: str, body: bytes) -> tuple[int, bytes]:
        """Parse, predict and encode one request (on the loop or in a worker thread)."""
        try:
            if mime == CONTENT_JSON:
                parsed = protocol.parse_json(body, self.input_schema)
            elif mime == CONTENT_CSV:
                parsed = protocol.parse_csv(body, self.input_schema)
            else:
                parsed = protocol.parse_parquet(body, self.input_schema)
            predictions = self.model.predict(parsed.data, params=parsed.params)
            return 200, protocol.predictions_payload(predictions)
        except CairnError as exc:
            return 400, _error_body("BAD_REQUEST", str(exc))
        except Exception as exc:  # the model's own code failed: say what, keep serving
            _logger.error("prediction failed:\n%s", traceback.format_exc())
            return 400, _error_body(
                "BAD_REQUEST",
                f"the model failed on this input: {type(exc).__name__}: {exc}. Check that the input matches the "
                "model's signature",
            )


def _check_content_type(content_type: str) -> str:
    """The MIME type of a supported ``Content-Type`` (``charset=utf-8`` allowed), else a 415."""
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    mime = mime.lower()
    if mime not in CONTENT_TYPES:
        shown = repr(content_type) if content_type else "no Content-Type"
        raise _HTTPError(
            415,
            "BAD_REQUEST",
            f"unsupported content type {shown}: send {CONTENT_JSON}, {CONTENT_CSV} or {CONTENT_PARQUET}",
        )
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset":
            raise _HTTPError(415, "BAD_REQUEST", f"unsupported content type parameter {parameter!r}")
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise _HTTPError(415, "BAD_REQUEST", f"the scoring server only reads UTF-8, not {value.strip()!r}")
    return mime


def create_app_from_env() -> ScoringApp:
    """The app of one uvicorn worker process: loads the model ``CAIRN_SERVING_MODEL_DIR`` names.

    Raises:
        CairnError: the variable is not set or the model cannot be loaded.
    """
    from cairn.errors import InvalidArgument
    from cairn.models.loading import load_pyfunc

    directory = os.environ.get(ENV_MODEL_DIR)
    if not directory:
        raise InvalidArgument(f"{ENV_MODEL_DIR} is not set: start the server with `cairn models serve -m URI`")
    model = load_pyfunc(directory, allow_pickle=os.environ.get(ENV_ALLOW_PICKLE) == "1")
    timeout = float(os.environ.get(ENV_TIMEOUT) or 0) or None
    max_body = int(os.environ.get(ENV_MAX_BODY_SIZE) or DEFAULT_MAX_BODY_SIZE)
    return ScoringApp(model, max_body_size=max_body, timeout=timeout)
