"""MLflow 3's server description: ``GET /api/3.0/mlflow/server-info`` (and its ``/ajax-api/3.0`` twin).

The mlflow 3 client asks for it before it uploads an artifact through the proxy (to learn whether it may
use multipart uploads), in its telemetry and before workspace calls; the payload follows
``build_server_info_payload`` in ``mlflow/server/handlers.py``. It is served without login, as MLflow's
is, so it names capabilities only: no paths, addresses or credentials.

cairn's proxy implements MLflow's multipart protocol (``/mlflow-artifacts/mpu/...``, parts uploaded to the
server itself), so multipart uploads are reported enabled whenever artifacts are served. Downloads and
presigned URLs straight to storage are not offered.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from cairn.server.protocol import ServerContext

__all__ = ["SERVER_INFO_PATHS", "routes", "server_info"]

SERVER_INFO_PATHS = ("/api/3.0/mlflow/server-info", "/ajax-api/3.0/mlflow/server-info")


def server_info(ctx: ServerContext) -> dict[str, Any]:
    """The server-info payload, key for key as ``mlflow server`` answers it."""
    return {
        # MLflow names its SQLAlchemy store "SqlStore"; cairn's stores are SQL (SQLite or PostgreSQL).
        "store_type": "SqlStore",
        "workspaces_enabled": False,
        "trace_archival_enabled": False,
        "multipart_uploads_enabled": ctx.serve_artifacts,
        "multipart_downloads_enabled": False,
        "artifact_serving_enabled": ctx.serve_artifacts,
        "presigned_upload_run_id_supported": False,
        "presigned_upload_model_id_supported": False,
        "model_artifact_presigned_downloads_supported": False,
        "features_enabled": {"gateway": False, "scheduled_issue_detection": False},
        "tracking_auth": "",
        "artifacts_presigned_only": False,
    }


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The server-info routes."""
    payload = server_info(ctx)

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(payload)

    return [Route(path, endpoint, methods=["GET"]) for path in SERVER_INFO_PATHS]
