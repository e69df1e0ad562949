"""The ``cairn server`` ASGI application: MLflow's REST API, the artifact proxy and the cairn UI.

The API modules (``tracking_api``, ``registry_api``, ``artifacts_api``, ``misc_api``) each contribute
``routes(ctx)``; any other ``/api/2.0/mlflow...``, ``/api/3.0/mlflow...`` or ``/ajax-api/...`` path answers MLflow's
``ENDPOINT_NOT_FOUND``. Everything else goes to the cairn UI, mounted with its own Host and CSRF
checks (which apply to the browser pages only, not to API clients). With ``auth=True`` the whole app sits
behind :class:`~cairn.server.auth.middleware.AuthMiddleware`: credentials on every request, and the
permission each route's rule names.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route

from cairn.errors import CairnError
from cairn.server.auth.middleware import AuthMiddleware
from cairn.server.auth.users import user_store_for
from cairn.server.protocol import ServerContext, endpoint_not_found

if TYPE_CHECKING:
    from cairn.tracking.client import Client

__all__ = [
    "API_MODULES",
    "ENV_ALLOW_HOSTS",
    "ENV_AUTH",
    "ENV_SERVE_ARTIFACTS",
    "app_from_environment",
    "create_server_app",
    "server_hosts",
]

API_MODULES = (
    "cairn.server.tracking_api",
    "cairn.server.registry_api",
    "cairn.server.artifacts_api",
    "cairn.server.misc_api",
    "cairn.server.auth.users_api",
    "cairn.server.cairn_api",
)
ENV_SERVE_ARTIFACTS = "CAIRN_SERVER_SERVE_ARTIFACTS"
ENV_AUTH = "CAIRN_SERVER_AUTH"
ENV_ALLOW_HOSTS = "CAIRN_SERVER_ALLOW_HOSTS"
_ANY = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _api_module(name: str) -> ModuleType | None:
    """The API module ``name``, or None when it is not part of this build (only that module's absence)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def _health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("OK")


def _version(request: Request) -> PlainTextResponse:
    from cairn import __version__

    return PlainTextResponse(__version__)


def api_routes(ctx: ServerContext, modules: Iterable[str] = API_MODULES) -> list[BaseRoute]:
    """Every MLflow API route the given API modules (those of them present in this build) provide."""
    routes: list[BaseRoute] = []
    for name in modules:
        module = _api_module(name)
        if module is not None:
            routes.extend(module.routes(ctx))
    return routes


def create_server_app(
    client: Client,
    *,
    serve_artifacts: bool = True,
    artifact_root: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    allowed_hosts: Iterable[str] | None = None,
    api_modules: Iterable[str] = API_MODULES,
    auth: bool = False,
) -> Starlette:
    """Build the server application over ``client``'s store.

    Args:
        client: the cairn client whose store the server fronts.
        serve_artifacts: proxy artifacts through ``/api/2.0/mlflow-artifacts/`` and give new
            experiments ``mlflow-artifacts:/<experiment_id>`` locations (as ``mlflow server`` does).
        artifact_root: where proxied artifacts live; defaults to the store's artifact root.
        host, port: the bound address (the UI's Host check derives its allowed names from them).
        allowed_hosts: the Host header values the UI accepts, replacing those derived from host/port.
        api_modules: the API modules to serve (all of them by default; tests may serve a subset).
        auth: require credentials and check permissions on every request (users and grants in the
            store's database; see :mod:`cairn.server.auth`). Needs a SQLite or PostgreSQL store.
    """
    from cairn.ui.app import create_app

    _refuse_remote_store(client)
    root = artifact_root if artifact_root is not None else _store_artifact_root(client)
    users = user_store_for(client) if auth else None
    ctx = ServerContext(client=client, serve_artifacts=serve_artifacts, artifact_root=root, users=users)
    ui = create_app(client, host=host, port=port, allowed_hosts=allowed_hosts, users=users)
    app = Starlette(
        routes=[
            Route("/health", _health, methods=["GET"]),
            Route("/version", _version, methods=["GET"]),
            *api_routes(ctx, api_modules),
            Route("/api/2.0/mlflow{rest:path}", endpoint_not_found, methods=_ANY),
            Route("/api/2.0/mlflow-artifacts{rest:path}", endpoint_not_found, methods=_ANY),
            Route("/api/3.0/mlflow{rest:path}", endpoint_not_found, methods=_ANY),
            Route("/ajax-api/{rest:path}", endpoint_not_found, methods=_ANY),
            Mount("/", app=ui),
        ],
        middleware=[Middleware(AuthMiddleware, users=users)] if users is not None else [],
    )
    app.state.ctx = ctx
    app.state.client = client
    app.state.store_label = ui.state.store_label
    app.state.allowed_hosts = ui.state.allowed_hosts
    return app


def _refuse_remote_store(client: Client) -> None:
    """A server fronts a database: over another tracking server it would only relay (or call itself)."""
    import sys

    rest = sys.modules.get("cairn.store.rest.store")
    if rest is not None and isinstance(client.store, rest.RestTrackingStore):
        raise CairnError(
            f"the tracking URI {client.store.uri} is a tracking server, but cairn server (and cairn ui) serve a "
            "database: pass --store sqlite:///path/cairn.db or --store postgresql://... (CAIRN_TRACKING_URI and "
            "MLFLOW_TRACKING_URI, read when --store is not given, are meant for the machines that log to a server)"
        )


def _store_artifact_root(client: Client) -> str:
    root = getattr(client.store, "default_artifact_root", None)
    return str(root) if root is not None else ""


def server_hosts(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host headers the UI accepts: those of the bound address, and ``extra`` exactly as given (a public
    name behind a reverse proxy arrives without the server's port)."""
    from cairn.ui.security import allowed_hosts_for

    names = [name.strip().lower() for name in extra if name.strip()]
    return allowed_hosts_for(host, port, names) | frozenset(names)


def app_from_environment() -> Starlette:
    """The app of one ``cairn server --workers N`` worker process (a uvicorn app factory).

    The parent process passes its settings in the environment: the store and artifact root through
    ``CAIRN_TRACKING_URI``/``CAIRN_ARTIFACT_ROOT`` as everywhere, ``CAIRN_SERVER_SERVE_ARTIFACTS`` (1/0),
    ``CAIRN_SERVER_HOST``, ``CAIRN_SERVER_PORT``, ``CAIRN_SERVER_ALLOW_HOSTS`` (comma-separated) and
    ``CAIRN_SERVER_AUTH`` (1/0).
    """
    import os

    from cairn.tracking.client import Client

    client = Client()
    host = os.environ.get("CAIRN_SERVER_HOST", "127.0.0.1")
    port = int(os.environ.get("CAIRN_SERVER_PORT", "5000"))
    return create_server_app(
        client,
        serve_artifacts=os.environ.get(ENV_SERVE_ARTIFACTS, "1") != "0",
        host=host,
        port=port,
        allowed_hosts=server_hosts(host, port, os.environ.get(ENV_ALLOW_HOSTS, "").split(",")),
        auth=os.environ.get(ENV_AUTH, "0") == "1",
    )
