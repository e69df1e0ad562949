"""The ``cairn ui`` ASGI application: the JSON API, the single-page app and its static assets.

Everything the browser loads ships in ``cairn/ui/static`` (the chart libraries are vendored), so
the UI works with no network. Pages are routed in the browser (``/#/runs/<id>``), so the server
only serves ``/``, ``/static/...``, ``/api/...`` and, for ``cairn server --auth``, ``/login`` and ``/logout``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cairn.errors import CairnError
from cairn.ui import api, login
from cairn.ui.security import SecurityMiddleware, allowed_hosts_for

if TYPE_CHECKING:
    from cairn.server.auth.users import UserStore
    from cairn.tracking.client import Client

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).parent / "static"


def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


async def _cairn_error(request: Request, exc: Exception) -> JSONResponse:
    return api.error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse(
            {"error": {"type": "HTTPError", "message": exc.detail}}, status_code=exc.status_code, headers=exc.headers
        )
    return Response(exc.detail, status_code=exc.status_code, media_type="text/plain", headers=exc.headers)


def _store_label(client: Client) -> str:
    description = getattr(getattr(client.store, "_db", None), "description", None)
    return str(description) if description else type(client.store).__name__


def create_app(
    client: Client,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    allowed_hosts: Iterable[str] | None = None,
    users: UserStore | None = None,
) -> Starlette:
    """Build the UI application over ``client``.

    Args:
        client: the tracking client whose store and artifacts the UI shows.
        host, port: the address the server is bound to; requests must name it in their Host header.
        allowed_hosts: the accepted Host header values, replacing those derived from ``host``/``port``.
        users: the user store when ``cairn server --auth`` runs the UI: pages then need a login, and
            lists show only what the user may read. ``None``: no login, everyone may do everything.
    """
    hosts = frozenset(allowed_hosts) if allowed_hosts is not None else allowed_hosts_for(host, port)
    app = Starlette(
        routes=[
            Route("/", _index),
            Route("/login", _index, methods=["GET"]),
            Route("/login", login.login, methods=["POST"]),
            Route("/logout", login.logout, methods=["POST"]),
            Route("/api/session", login.session, methods=["GET"]),
            *api.routes(),
            Route("/api/{rest:path}", api.not_found, methods=["GET", "POST", "DELETE", "PUT", "PATCH"]),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[
            Middleware(SecurityMiddleware, allowed_hosts=hosts),
            Middleware(GZipMiddleware, minimum_size=1024),
        ],
        exception_handlers={CairnError: _cairn_error, HTTPException: _http_error},
    )
    app.state.client = client
    app.state.users = users
    app.state.store_label = _store_label(client)
    app.state.allowed_hosts = hosts
    return app
