"""Artifact locations as ``cairn server``'s clients see them.

The store records real locations (``<artifact root>/<experiment id>/...``), so cairn's own Client
can read the same store directly. With ``--serve-artifacts``, a location under the server's artifact
root is shown to clients as ``mlflow-artifacts:/<path below the root>`` (what ``mlflow server``
answers), which the artifact proxy serves.
"""

from __future__ import annotations

from urllib.parse import urlparse

from cairn.artifacts import LocalArtifactStore
from cairn.server.protocol import ServerContext

__all__ = ["SCHEME", "public_location"]

SCHEME = "mlflow-artifacts"


def _is_local(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a one-letter scheme is a Windows drive


def public_location(ctx: ServerContext, location: str) -> str:
    """``location`` as clients see it: ``mlflow-artifacts:/<path>`` under the served artifact root.

    Without ``ctx.serve_artifacts`` (or an artifact root), and for any location outside the root,
    ``location`` is returned unchanged. Local paths are compared in absolute form, so ``./runs`` and
    ``file:///.../runs`` name the same root.
    """
    if not ctx.serve_artifacts or not ctx.artifact_root or urlparse(location).scheme == SCHEME:
        return location
    root, uri = ctx.artifact_root, location
    if _is_local(root) and _is_local(uri):
        root, uri = LocalArtifactStore(root).root, LocalArtifactStore(uri).root
    root = root.rstrip("/")
    if uri == root:
        return f"{SCHEME}:/"
    if uri.startswith(root + "/"):
        return f"{SCHEME}:/{uri[len(root) + 1 :]}"
    return location
