"""One pooled, keep-alive HTTP session to a tracking server: auth, retries with backoff, error mapping.

Retries are split by what a failure says about the request:

- *surely not processed*: the connection was never made (connect error or timeout, no pooled connection
  free), or the server answered 429 / 503. Every request is retried.
- *maybe processed*: the request was sent and then the connection broke or timed out, or a gateway
  answered 502 / 504 (the server behind it may have done the work). Only idempotent requests are retried:
  reads, and writes that give the same result when repeated. Log-batch is one of them: every request
  carries an ``Idempotency-Key`` given when its batch was formed (by the metric writer, or per call) and
  kept through every retry, resend and spool replay, so a server that remembers keys (cairn's) stores it
  once; MLflow's server ignores the key, and its SQL store drops a metric point identical to a stored one,
  so a resend of what may have arrived adds nothing there either. What surely arrived (a 2xx) is never
  sent again: the metric writer sends a batch as separate requests and resends only those not answered.

When every retry failed, :class:`~cairn.store.rest.errors.ServerUnavailable` is raised; the metric writer then
spools what it could not send (:mod:`cairn.store.rest.spool`) and sends it when the server is back.

Credentials, sent when set: ``CAIRN_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_TOKEN`` (Bearer), else
``MLFLOW_TRACKING_USERNAME`` + ``MLFLOW_TRACKING_PASSWORD`` (basic), else user:password in the URI.
``MLFLOW_TRACKING_INSECURE_TLS=true`` skips certificate checks, ``MLFLOW_TRACKING_SERVER_CERT_PATH`` names a
CA bundle. ``CAIRN_HTTP_MAX_RETRIES``, ``CAIRN_HTTP_BACKOFF`` and ``CAIRN_HTTP_MAX_BACKOFF`` change the retry
window's defaults (7 retries, 0.25 s doubled up to 8 s: about 24 s before a server is taken for unreachable).
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from cairn.errors import CairnError, NotFound
from cairn.store.rest.errors import ServerUnavailable, error_from_response

__all__ = ["HttpSession"]

RETRY_ALWAYS = frozenset({429, 503})
"""Statuses after which the server surely did nothing: every request is retried."""
RETRY_IF_IDEMPOTENT = frozenset({502, 504})
"""Gateway statuses after which the server may have done the work: only idempotent requests are retried."""
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

Body = bytes | Callable[[], Iterator[bytes]] | None


def _auth_headers(userinfo: tuple[str, str] | None) -> dict[str, str]:
    token = os.environ.get("CAIRN_TRACKING_TOKEN") or os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password) and userinfo is not None:
        user, password = userinfo
    if user and password:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {raw}"}
    return {}


def _verify() -> bool | ssl.SSLContext:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        return False
    bundle = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=bundle) if bundle else True


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise CairnError(f"{name}={text!r} is not a number >= 0; unset it or give a number")
    return value


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


class HttpSession:
    """Requests to one server through one pooled ``httpx.Client`` (safe to share between threads).

    Args:
        base_url: ``http(s)://host[:port][/prefix]``; ``user:password@`` in it is used for basic auth.
        timeout: seconds per connect / read / write.
        max_retries: retries after the first attempt (default ``CAIRN_HTTP_MAX_RETRIES``, else 7).
        backoff: first delay in seconds; doubled after each retry, capped at ``max_backoff`` (default
            ``CAIRN_HTTP_BACKOFF``, else 0.25).
        max_backoff: longest delay between two attempts (a server's ``Retry-After`` is capped by it too; default
            ``CAIRN_HTTP_MAX_BACKOFF``, else 8).
        transport: an ``httpx`` transport to use instead of the network (tests, proxies).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 60.0,
        max_retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        userinfo = None
        if parts.username is not None:
            userinfo = (unquote(parts.username), unquote(parts.password or ""))
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.max_retries = int(_env_number("CAIRN_HTTP_MAX_RETRIES", 7)) if max_retries is None else max_retries
        self.backoff = _env_number("CAIRN_HTTP_BACKOFF", 0.25) if backoff is None else backoff
        self.max_backoff = _env_number("CAIRN_HTTP_MAX_BACKOFF", 8.0) if max_backoff is None else max_backoff
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers={"User-Agent": "cairn", **_auth_headers(userinfo)},
            timeout=timeout,
            transport=transport,
            verify=_verify(),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self._client.close()

    # -- raw requests --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        stream: bool = False,
        retries: int | None = None,
    ) -> httpx.Response:
        """Send a request (retrying as the module says) and return the last response, whatever its status.

        Args:
            path: relative to the base URL (``api/2.0/mlflow/runs/get``).
            body: bytes, or a function returning a fresh byte iterator per attempt (a file being uploaded).
            idempotent: whether repeating the request after it may have been processed is harmless.
            stream: leave the body unread (the caller reads and closes the response).
            retries: retries after the first attempt (default: the session's ``max_retries``).

        Raises:
            ServerUnavailable: the server stayed unreachable or busy through every retry.
        """
        delay = self.backoff
        url = f"{self.base_url}/{path}"
        most = self.max_retries if retries is None else retries
        for attempt in range(most + 1):
            last = attempt == most
            content = body() if callable(body) else body
            request = self._client.build_request(method, path, params=params, content=content, headers=headers)
            try:
                response = self._client.send(request, stream=stream)
            except _NOT_SENT as exc:
                if last or self._closed.is_set():
                    raise ServerUnavailable(
                        f"cannot reach the tracking server at {self.base_url} ({type(exc).__name__}: {exc}) "
                        f"after {attempt + 1} attempts"
                    ) from exc
                self._sleep(delay)
            except httpx.TransportError as exc:
                if last or not idempotent:
                    more = "" if idempotent else "; not retried, since the server may have processed it"
                    raise ServerUnavailable(
                        f"{method} {url} failed after it was sent ({type(exc).__name__}: {exc}){more}"
                    ) from exc
                self._sleep(delay)
            else:
                status = response.status_code
                retry = status in RETRY_ALWAYS or (idempotent and status in RETRY_IF_IDEMPOTENT)
                if not retry or last:
                    return response
                wait = _retry_after(response)
                response.close()
                self._sleep(min(self.max_backoff, wait) if wait is not None else delay)
            delay = min(self.max_backoff, delay * 2)
        raise AssertionError("unreachable")

    def _sleep(self, seconds: float) -> None:
        self._closed.wait(seconds)

    def raise_for_error(self, response: httpx.Response, *, not_found: type[NotFound] = NotFound) -> None:
        """Raise the cairn error for a response that is not a 2xx (reading its body first)."""
        if response.is_success:
            return
        text = response.read().decode("utf-8", "replace")
        response.close()
        raise error_from_response(
            response.status_code,
            text,
            method=response.request.method,
            url=str(response.request.url.copy_with(query=None)),
            not_found=not_found,
        )

    # -- MLflow's JSON API -----------------------------------------------------------------------

    def call(
        self,
        method: str,
        endpoint: str,
        payload: Mapping[str, Any] | None = None,
        *,
        idempotent: bool | None = None,
        not_found: type[NotFound] = NotFound,
        headers: Mapping[str, str] | None = None,
        encoded: bytes | None = None,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """Call ``/api/2.0/mlflow/<endpoint>``: a query string for GET, a JSON body otherwise.

        ``idempotent`` defaults to True for GET and False otherwise; ``encoded`` is the JSON body when the
        caller has encoded ``payload`` already; ``retries`` overrides the session's ``max_retries``. Returns the
        decoded JSON object.

        Raises:
            CairnError: the mapped error of an error response (see :mod:`cairn.store.rest.errors`).
        """
        path = f"api/2.0/mlflow/{endpoint}"
        if idempotent is None:
            idempotent = method == "GET"
        if method == "GET":
            params = {k: v for k, v in (payload or {}).items() if v is not None}
            response = self.request(
                method, path, params=params, idempotent=idempotent, headers=headers, retries=retries
            )
        else:
            data = encoded if encoded is not None else encode_json(payload or {})
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            response = self.request(
                method, path, body=data, headers=all_headers, idempotent=idempotent, retries=retries
            )
        self.raise_for_error(response, not_found=not_found)
        if not response.content.strip():
            return {}
        try:
            decoded = response.json()
        except ValueError as exc:
            raise CairnError(
                f"{method} {self.base_url}/{path} answered {response.status_code} with a body that is not JSON: "
                f"{response.text[:200]!r}"
            ) from exc
        return decoded if isinstance(decoded, dict) else {}


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON; NaN and infinities must already be strings (protobuf's JSON form)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")
