"""Artifact storage: one :class:`ArtifactStore` per root URI, local or any fsspec URL.

>>> store = get_artifact_store("/tmp/cairn-runs/artifacts/1/abc/artifacts")
>>> store.put_bytes(b"hello", "notes/readme.txt")
>>> [info.path for info in store.list("notes")]
['notes/readme.txt']
"""

from __future__ import annotations

import os
import re
from typing import Any

from cairn.artifacts.base import ArtifactStore
from cairn.artifacts.local import LocalArtifactStore
from cairn.artifacts.paths import safe_relpath
from cairn.errors import InvalidArgument

__all__ = ["ArtifactStore", "FsspecArtifactStore", "LocalArtifactStore", "get_artifact_store", "safe_relpath"]

S3_ENDPOINT_ENV_VARS = ("CAIRN_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
"""Environment variables naming an S3-compatible endpoint (MinIO, moto, ...), first one set wins."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")


def _scheme_of(root: str) -> str | None:
    """The URL scheme of ``root`` (``None`` for a plain path; a one-letter scheme is a Windows drive)."""
    if root.startswith("file:"):
        return "file"
    match = _SCHEME.match(root)
    if match is None or len(match.group(1)) == 1:
        return None
    return match.group(1).lower()


def _s3_options(storage_options: dict[str, Any]) -> dict[str, Any]:
    endpoint = next((os.environ[name] for name in S3_ENDPOINT_ENV_VARS if os.environ.get(name)), None)
    client_kwargs = dict(storage_options.get("client_kwargs") or {})
    if endpoint and "endpoint_url" not in storage_options and "endpoint_url" not in client_kwargs:
        client_kwargs["endpoint_url"] = endpoint
        return {**storage_options, "client_kwargs": client_kwargs}
    return storage_options


def get_artifact_store(root_uri: str | os.PathLike[str], **storage_options: Any) -> ArtifactStore:
    """Return the store for ``root_uri``: a local path or ``file://`` URI, a tracking server's artifact proxy
    (``mlflow-artifacts:/...``, resolved against ``tracking_uri=`` or the current tracking URI), or any fsspec URL.

    For ``s3://`` roots the endpoint comes, unless ``storage_options`` already set one, from
    ``CAIRN_S3_ENDPOINT_URL`` or else the standard ``AWS_ENDPOINT_URL`` (passed to s3fs as
    ``client_kwargs={"endpoint_url": ...}``); credentials follow the usual AWS chain.

    Raises:
        InvalidArgument: the URL's scheme is unknown to fsspec or needs a package that is missing.
    """
    root = os.fspath(root_uri)
    from cairn.artifacts.mlflow_artifacts import is_proxy_uri

    if is_proxy_uri(root):  # a tracking server's artifact proxy: mlflow-artifacts:/... or its http(s) URL
        from cairn.artifacts.mlflow_artifacts import MlflowArtifactsStore

        return MlflowArtifactsStore(root, tracking_uri=storage_options.pop("tracking_uri", None))
    scheme = _scheme_of(root)
    if scheme is None or scheme == "file":
        if storage_options:
            raise InvalidArgument(f"storage options {sorted(storage_options)} make no sense for local root {root!r}")
        return LocalArtifactStore(root)
    from cairn.artifacts.fsspec_store import FsspecArtifactStore

    if scheme in ("s3", "s3a"):
        storage_options = _s3_options(storage_options)
    return FsspecArtifactStore(root, **storage_options)


def __getattr__(name: str) -> Any:
    # fsspec_store imports fsspec; keep `import cairn.artifacts` light until an fsspec root is used.
    if name == "FsspecArtifactStore":
        from cairn.artifacts.fsspec_store import FsspecArtifactStore

        return FsspecArtifactStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
