"""Artifacts through a tracking server's artifact proxy (``mlflow-artifacts:`` URIs).

A run of an ``http(s)://`` tracking store whose server proxies artifacts has an artifact URI such as
``mlflow-artifacts:/0/<run id>/artifacts``. As in MLflow, a URI without a host is resolved against the
tracking URI (``http://host:5000`` + ``/api/2.0/mlflow-artifacts/artifacts/0/<run id>/artifacts``);
``mlflow-artifacts://host:port/...`` names its server, and an ``http(s)://.../api/2.0/mlflow-artifacts/
artifacts/...`` URL is accepted as well. Requests go through the HTTP session of the tracking store for that
server (one pooled client, same credentials and retries).

The proxy's operations: ``PUT <path>`` (upload, streamed from the file), ``GET <path>`` (download, streamed),
``GET ?path=<dir>`` (list one directory; names only), ``DELETE <path>``. Every path is checked by
:func:`~cairn.artifacts.paths.safe_relpath` before a request, the root itself when the store is made, and
every name a listing returns before it is used.
"""

from __future__ import annotations

import builtins
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

from cairn.artifacts.base import ArtifactStore, collect_files
from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import ArtifactNotFound, InvalidArgument, UnsafePath
from cairn.tracking.entities import FileInfo

if TYPE_CHECKING:
    import httpx

    from cairn.store.rest.http import HttpSession

__all__ = ["SERVICE_ROOT", "MlflowArtifactsStore", "is_proxy_uri"]

SERVICE_ROOT = "api/2.0/mlflow-artifacts/artifacts"
_CHUNK = 1024 * 1024
_TEMP_PREFIX = ".cairn-tmp-"


def is_proxy_uri(uri: str) -> bool:
    """Whether ``uri`` is served by an artifact proxy (``mlflow-artifacts:`` or an ``http(s)`` proxy URL)."""
    lowered = uri.lower()
    if lowered.startswith("mlflow-artifacts:"):
        return True
    return lowered.startswith(("http://", "https://")) and f"/{SERVICE_ROOT}" in urlsplit(uri).path


def _resolve(uri: str, tracking_uri: str | None) -> tuple[str, str]:
    """``(server base URL, path under the proxy)`` of an artifact URI."""
    parts = urlsplit(uri)
    if parts.scheme.lower() in ("http", "https"):
        prefix, _, below = parts.path.partition(f"/{SERVICE_ROOT}")
        base = urlunsplit((parts.scheme, parts.netloc, prefix.rstrip("/"), "", ""))
        return base, below
    if tracking_uri is None:
        from cairn.tracking import config

        tracking_uri = config.get_tracking_uri()
    track = urlsplit(tracking_uri)
    if track.scheme.lower() not in ("http", "https"):
        raise InvalidArgument(
            f"artifact URI {uri!r} is served by a tracking server's artifact proxy, but the tracking URI is "
            f"{track.scheme or 'a local path'}, not http(s)://; point cairn at the server "
            "(CAIRN_TRACKING_URI=http://host:port or cairn.set_tracking_uri)"
        )
    netloc = parts.netloc or track.netloc
    base = urlunsplit((track.scheme, netloc, track.path.rstrip("/"), "", ""))
    return base, parts.path


class _ResponseReader(io.RawIOBase):
    """A streamed response body as a readable raw file (closing it closes the response)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.iter_bytes(_CHUNK)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


class MlflowArtifactsStore(ArtifactStore):
    """Artifacts under one root of a tracking server's artifact proxy.

    Args:
        root: ``mlflow-artifacts:/<path>``, ``mlflow-artifacts://host:port/<path>`` or
            ``http(s)://host:port[/prefix]/api/2.0/mlflow-artifacts/artifacts/<path>``.
        tracking_uri: the server a host-less URI is resolved against (default: the current tracking URI).
        session: the HTTP session to use (default: that of the tracking store for the server).

    Raises:
        UnsafePath: the root's path would leave the proxy's root (``..``, encoded or not).
        InvalidArgument: a host-less URI while the tracking URI is not ``http(s)://``.
    """

    def __init__(self, root: str, *, tracking_uri: str | None = None, session: HttpSession | None = None) -> None:
        self.root = root.rstrip("/")
        base, path = _resolve(self.root, tracking_uri)
        self._base_path = safe_relpath(path.strip("/"))
        if session is None:
            from cairn.store.rest import RestTrackingStore
            from cairn.tracking import config

            store = config.get_store(base)
            session = store.http if isinstance(store, RestTrackingStore) else None
            if session is None:  # pragma: no cover - get_store maps http(s) to the REST store
                raise InvalidArgument(f"{base} is not a tracking server URI")
        self._http = session

    def _path(self, rel: str) -> str:
        return join(self._base_path, rel)

    def _url(self, rel: str) -> str:
        return f"{SERVICE_ROOT}/{quote(self._path(rel), safe='/')}"

    def _missing(self, rel: str) -> ArtifactNotFound:
        return ArtifactNotFound(f"no artifact at {rel!r} under {self.root}")

    # -- listing ---------------------------------------------------------------------------------

    def _list(self, rel: str) -> builtins.list[FileInfo]:
        response = self._http.request("GET", SERVICE_ROOT, params={"path": self._path(rel)}, idempotent=True)
        self._http.raise_for_error(response, not_found=ArtifactNotFound)
        infos = []
        for entry in response.json().get("files", []):
            name = str(entry.get("path", ""))
            try:
                safe = safe_relpath(name)
            except UnsafePath as exc:
                raise UnsafePath(f"the server listed an unsafe name under {self.root}: {exc}") from exc
            if not safe or "/" in safe:
                raise UnsafePath(f"the server listed {name!r} under {self.root}, which is not a plain name")
            is_dir = bool(entry.get("is_dir", False))
            size = entry.get("file_size")
            infos.append(FileInfo(join(rel, safe), is_dir, None if is_dir or size is None else int(size)))
        return sorted(infos, key=lambda item: item.path)

    def _entry(self, rel: str) -> FileInfo | None:
        """The listing entry of ``rel`` in its parent directory (``None`` when nothing is there)."""
        parent = rel.rpartition("/")[0]
        return next((info for info in self._list(parent) if info.path == rel), None)

    def list(self, path: str | None = None) -> builtins.list[FileInfo]:
        rel = safe_relpath(path)
        infos = self._list(rel)
        if infos or not rel:
            return infos
        if self._entry(rel) is None:
            raise self._missing(rel)
        return []  # a file, or an empty directory

    def exists(self, path: str | None = None) -> bool:
        rel = safe_relpath(path)
        if not rel:
            return bool(self._list(""))
        return self._entry(rel) is not None

    def _files_under(self, rel: str) -> Iterator[FileInfo]:
        for info in self._list(rel):
            if info.is_dir:
                yield from self._files_under(info.path)
            else:
                yield info

    # -- writes ----------------------------------------------------------------------------------

    def _put(self, rel: str, body: bytes | Path) -> None:
        if not rel:
            raise InvalidArgument("an upload needs a file name, not the artifact root")

        def chunks() -> Iterator[bytes]:
            assert isinstance(body, Path)
            with open(body, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk

        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(body, Path):
            headers["Content-Length"] = str(body.stat().st_size)
        response = self._http.request(
            "PUT",
            self._url(rel),
            body=chunks if isinstance(body, Path) else body,
            headers=headers,
            idempotent=True,
        )
        self._http.raise_for_error(response, not_found=ArtifactNotFound)

    def put_file(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        source = Path(local_path)
        if not source.is_file():
            raise InvalidArgument(f"cannot upload {source}: it is not an existing file")
        self._put(safe_relpath(join(safe_relpath(artifact_path), source.name)), source)

    def put_dir(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        base = safe_relpath(artifact_path)
        for item in collect_files(local_dir):  # the whole tree is checked before the first upload
            self._put(join(base, item.relpath), item.source)

    def put_bytes(self, data: bytes, artifact_file: str) -> None:
        self._put(safe_relpath(artifact_file), bytes(data))

    # -- reads -----------------------------------------------------------------------------------

    def open(self, path: str) -> BinaryIO:
        rel = safe_relpath(path)
        if not rel:
            raise InvalidArgument(f"the artifact root {self.root} is a directory; use download() or list()")
        response = self._http.request("GET", self._url(rel), idempotent=True, stream=True)
        if response.status_code == 400 and self._entry(rel) is not None:
            response.close()
            raise InvalidArgument(f"artifact {rel!r} under {self.root} is a directory; use download() or list()")
        self._http.raise_for_error(response, not_found=ArtifactNotFound)
        return io.BufferedReader(_ResponseReader(response), buffer_size=_CHUNK)

    def download(self, path: str | None, dst_dir: str | os.PathLike[str]) -> Path:
        rel = safe_relpath(path)
        dst = Path(dst_dir).absolute()
        target = dst.joinpath(*rel.split("/")) if rel else dst
        if rel:
            entry = self._entry(rel)
            if entry is None:
                raise self._missing(rel)
            if not entry.is_dir:
                self._fetch(rel, target)
                return target
        for info in self._files_under(rel):
            below = info.path[len(rel) + 1 :] if rel else info.path
            self._fetch(info.path, target.joinpath(*below.split("/")))
        target.mkdir(parents=True, exist_ok=True)
        return target

    def _fetch(self, rel: str, local: Path) -> None:
        """Stream one file into a temporary name beside ``local``, then rename it into place."""
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.is_dir() and not local.is_symlink():
            raise InvalidArgument(f"cannot download to {local}: a directory of that name exists")
        temp = local.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with self.open(rel) as source, open(temp, "wb") as sink:
                while chunk := source.read(_CHUNK):
                    sink.write(chunk)
            os.replace(temp, local)
        finally:
            temp.unlink(missing_ok=True)

    # -- delete ----------------------------------------------------------------------------------

    def delete(self, path: str | None = None) -> None:
        rel = safe_relpath(path)
        if rel and self._entry(rel) is None:
            raise self._missing(rel)
        if not rel and not self._list(""):
            return
        response = self._http.request("DELETE", self._url(rel), idempotent=True)
        self._http.raise_for_error(response, not_found=ArtifactNotFound)
