"""MLflow's artifact proxy (``/api/2.0/mlflow-artifacts/...``) over cairn's artifact stores.

A client holding a ``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts`` location sends every
artifact path relative to the server's artifact root; this module maps it onto one
:class:`~cairn.artifacts.ArtifactStore` rooted there, so each path goes through
:func:`~cairn.artifacts.paths.safe_relpath` (``..``, absolute, percent-encoded, NUL) and, for local
roots, symlink resolution, before anything is read or written. Bodies stream in and out in
:data:`CHUNK_BYTES` pieces and are never held whole: on a local root an upload lands in a hidden
file next to its target and is renamed into place; on S3 it goes out as the parts of an S3
multipart upload while it arrives, published when the body is complete (aborted if it is not).

Multipart uploads keep all their state in the artifact root (a hidden ``.cairn-tmp-mpu-<id>``
directory), so several server processes over one root serve them. The server hands out its own
part URLs (``/api/2.0/mlflow-artifacts/mpu/part/<upload_id>/<n>``); the unguessable upload id and the
caller's ``Authorization`` header (echoed in each part's headers) authorize the part uploads. Every
attempt at a part is a file of its own whose random name is the ETag returned, so a retried or
duplicated part never overwrites another; completion assembles exactly the parts the client names
(on S3 inside S3, by UploadPartCopy, when every part but the last holds 5 MiB to 5 GiB).

Differences from ``mlflow server``, on purpose: with ``--no-serve-artifacts`` these routes answer
501 ``NOT_IMPLEMENTED`` (MLflow: a plain-text 503, which its own client retries for minutes); a
download is always an attachment with ``X-Content-Type-Options: nosniff`` and an allow-listed
content type, so an uploaded HTML file never renders in the UI's origin; multipart upload works on
every root (MLflow: only on S3/GCS/Azure).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlparse

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from cairn.artifacts import ArtifactStore, LocalArtifactStore, get_artifact_store
from cairn.artifacts.fsspec_store import FsspecArtifactStore, PendingUpload
from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import ArtifactNotFound
from cairn.server.locations import SCHEME, public_location
from cairn.server.protocol import (
    MlflowApiError,
    ServerContext,
    error_response,
    json_route,
    query_params,
    read_json,
)
from cairn.tracking.entities import FileInfo

__all__ = [
    "CHUNK_BYTES",
    "MAX_PARTS",
    "ArtifactProxy",
    "routes",
    "store_for_artifact_uri",
]

CHUNK_BYTES = 1024 * 1024
"""Bytes read from or written to storage at a time by uploads, downloads and multipart completion."""
MAX_PARTS = 10_000
"""Most parts one multipart upload may have (S3's limit)."""
MPU_PREFIX = ".cairn-tmp-mpu-"
"""Staging directory of a multipart upload, at the artifact root; hidden from listings, swept by ``cairn gc``."""
ARTIFACTS_PREFIXES = ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts")

_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")
_ETAG = re.compile(r"^[0-9a-f]{32}$")
_INLINE_TYPES = frozenset(
    {
        "application/json",
        "application/octet-stream",
        "application/x-yaml",
        "image/gif",
        "image/jpeg",
        "image/png",
        "image/webp",
        "text/csv",
        "text/plain",
        "text/markdown",
        "text/x-python",
        "text/yaml",
    }
)
"""Content types a download may be labelled with; anything else (HTML, SVG, JS, ...) goes out as octet-stream."""


def _invalid(message: str) -> MlflowApiError:
    return MlflowApiError("INVALID_PARAMETER_VALUE", message, 400)


def _file_rel(path: str | None, what: str = "artifact path") -> str:
    """A safe path naming a file under the root (not the root itself)."""
    rel = safe_relpath(path)
    if not rel:
        raise _invalid(f"{what} must name a file under the artifact root, got {path!r}")
    return rel


def _file_name(value: Any) -> str:
    """The file name of a multipart upload's ``path`` field.

    MLflow clients before 3.18 sent their whole local path there; as ``mlflow server`` does, only its
    last component counts (after ``/`` or ``\\``), and it must be a safe single name.
    """
    if not isinstance(value, str) or not value:
        raise _invalid("'path' must be a non-empty string naming the file being uploaded")
    name = re.split(r"[/\\]", value)[-1]
    rel = safe_relpath(name)
    if not rel or "/" in rel:
        raise _invalid(f"'path' {value!r} does not end in a file name")
    return rel


def store_for_artifact_uri(ctx: ServerContext, uri: str) -> ArtifactStore:
    """The store behind a run's or experiment's artifact URI, ``mlflow-artifacts:/...`` included.

    A ``mlflow-artifacts:`` URI names a path under ``ctx.artifact_root`` (its host, if any, is the
    client's business); that path is confined like any artifact path.

    Raises:
        UnsafePath: the ``mlflow-artifacts`` path could leave the artifact root.
        MlflowApiError: a ``mlflow-artifacts`` URI but the server has no artifact root.
    """
    if urlparse(uri).scheme == SCHEME:
        if not ctx.artifact_root:
            raise MlflowApiError(
                "NOT_IMPLEMENTED", f"{uri!r} names the artifact proxy, but this server has no artifact root", 501
            )
        rel = safe_relpath(urlparse(uri).path.lstrip("/"))
        return get_artifact_store(f"{ctx.artifact_root.rstrip('/')}/{rel}" if rel else ctx.artifact_root)
    return get_artifact_store(uri)


def _file_info_json(info: FileInfo, path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "is_dir": info.is_dir}
    if not info.is_dir and info.file_size is not None:
        entry["file_size"] = info.file_size
    return entry


def _content_type(name: str) -> str:
    guessed, encoding = mimetypes.guess_type(name)
    if guessed in _INLINE_TYPES and encoding is None:
        return guessed if not guessed.startswith("text/") else f"{guessed}; charset=utf-8"
    return "application/octet-stream"


def _iter_file(handle: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


async def _pump(stream: AsyncIterator[bytes], write: Callable[[bytearray], object]) -> None:
    """Pass a request body to ``write`` in :data:`CHUNK_BYTES` pieces.

    Writing runs in a worker thread, one piece at a time; the event loop only gathers pieces.
    """
    pending = bytearray()
    async for chunk in stream:
        pending += chunk
        if len(pending) >= CHUNK_BYTES:
            await run_in_threadpool(write, pending)
            pending = bytearray()
    if pending:
        await run_in_threadpool(write, pending)


async def _spool(stream: AsyncIterator[bytes], dest: Path) -> None:
    """Write a request body to the new local file ``dest``."""
    handle = await run_in_threadpool(open, dest, "xb")
    try:
        await _pump(stream, handle.write)
    finally:
        await run_in_threadpool(handle.close)


async def _stream_upload(stream: AsyncIterator[bytes], upload: PendingUpload) -> None:
    """Write a request body through ``upload`` and commit it; discarded if anything fails."""
    try:
        await _pump(stream, upload.write)
    except BaseException:
        await run_in_threadpool(upload.discard)
        raise
    await run_in_threadpool(upload.commit)


def _part_file(stage: str, number: int, etag: str) -> str:
    return f"{stage}/part-{number:05d}.{etag}"


@contextmanager
def _staging(store: LocalArtifactStore, rel: str) -> Iterator[Path]:
    """``store.staging_dir(rel)``, with a file in the way of ``rel``'s directory refused as a bad path."""
    with ExitStack() as stack:
        try:
            stage = stack.enter_context(store.staging_dir(rel))
        except (FileExistsError, NotADirectoryError) as exc:
            raise _invalid(f"cannot write {rel!r}: a file is in the way of its directory") from exc
        yield stage


@dataclass(frozen=True)
class _Upload:
    """What a multipart upload's ``target.json`` records at create time."""

    target: str
    num_parts: int


class ArtifactProxy:
    """The request handlers of the artifact proxy, over the store rooted at ``ctx.artifact_root``."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._root_store: ArtifactStore | None = None

    # -- plumbing --------------------------------------------------------------------------------

    def _store(self) -> ArtifactStore:
        if not self._ctx.serve_artifacts:
            raise MlflowApiError(
                "NOT_IMPLEMENTED",
                "The artifact proxy is disabled: this server runs with --no-serve-artifacts. Start "
                "`cairn server --serve-artifacts`, or give experiments an artifact location clients "
                "can reach directly (s3://..., a shared path).",
                501,
            )
        if not self._ctx.artifact_root:
            raise MlflowApiError("NOT_IMPLEMENTED", "The artifact proxy has no artifact root configured", 501)
        if self._root_store is None:
            self._root_store = get_artifact_store(self._ctx.artifact_root)
        return self._root_store

    async def _receive(self, store: ArtifactStore, rel: str, request: Request) -> None:
        """Stream the request body into the file ``rel`` of ``store``, atomically."""
        parent, _, name = rel.rpartition("/")
        if isinstance(store, LocalArtifactStore):
            store.local_path(rel)  # refuses a path through a symlink out of the root, before any write
            with _staging(store, rel) as stage:
                await _spool(request.stream(), stage / name)
                await run_in_threadpool(store.move_dir, stage, parent or None)
            return
        if isinstance(store, FsspecArtifactStore):  # S3: parts go out as they arrive, in bounded memory
            length = request.headers.get("content-length", "")
            size_hint = int(length) if length.isdigit() else None
            upload = await run_in_threadpool(partial(store.open_upload, rel, size_hint=size_hint))
            await _stream_upload(request.stream(), upload)
            return
        with tempfile.TemporaryDirectory(prefix="cairn-upload-") as tmp:
            local = Path(tmp) / name
            await _spool(request.stream(), local)
            await run_in_threadpool(store.put_file, local, parent or None)

    # -- /artifacts ------------------------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        store = self._store()
        rel = _file_rel(request.path_params["path"])
        handle = await run_in_threadpool(store.open, rel)
        headers = {
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(rel.rpartition('/')[2])}",
            "X-Content-Type-Options": "nosniff",
        }
        size = getattr(handle, "size", None)
        if size is None and hasattr(handle, "fileno"):
            try:
                size = os.fstat(handle.fileno()).st_size
            except (OSError, ValueError):
                size = None
        if isinstance(size, int):
            headers["Content-Length"] = str(size)
        return StreamingResponse(_iter_file(handle), media_type=_content_type(rel), headers=headers)

    async def upload(self, request: Request) -> Response:
        store = self._store()
        rel = _file_rel(request.path_params["path"])
        await self._receive(store, rel, request)
        return JSONResponse({})

    async def delete(self, request: Request) -> Response:
        store = self._store()
        rel = safe_relpath(request.path_params["path"])
        if not rel:
            raise _invalid("refusing to delete the whole artifact root; name a path under it")
        await run_in_threadpool(store.delete, rel)
        return JSONResponse({})

    async def list_files(self, request: Request) -> Response:
        store = self._store()
        rel = safe_relpath(request.query_params.get("path"))
        try:
            infos = await run_in_threadpool(store.list, rel or None)
        except ArtifactNotFound:
            infos = []
        files = [_file_info_json(info, info.path.rpartition("/")[2]) for info in infos]
        return JSONResponse({"files": files})

    # -- /mpu ------------------------------------------------------------------------------------

    def _stage(self, upload_id: Any) -> str:
        if not isinstance(upload_id, str) or not _UPLOAD_ID.match(upload_id):
            raise _invalid(f"{upload_id!r} is not an upload id this server handed out")
        return f"{MPU_PREFIX}{upload_id}"

    def _load_upload(self, store: ArtifactStore, stage: str) -> _Upload:
        try:
            with store.open(f"{stage}/target.json") as handle:
                record = json.loads(handle.read())
        except ArtifactNotFound:
            raise MlflowApiError(
                "RESOURCE_DOES_NOT_EXIST", "no such multipart upload (completed, aborted or never created)", 404
            ) from None
        return _Upload(target=str(record["target"]), num_parts=int(record["num_parts"]))

    async def _upload_args(self, request: Request) -> tuple[ArtifactStore, dict[str, Any], str]:
        store = self._store()
        base = safe_relpath(request.path_params.get("path"))
        body = await read_json(request, max_bytes=4 * 1024 * 1024)
        return store, body, join(base, _file_name(body.get("path")))

    async def mpu_create(self, request: Request) -> Response:
        store, body, target = await self._upload_args(request)
        num_parts = body.get("num_parts", 1)
        if isinstance(num_parts, str) and num_parts.isdigit():
            num_parts = int(num_parts)
        if not isinstance(num_parts, int) or isinstance(num_parts, bool) or not 1 <= num_parts <= MAX_PARTS:
            raise _invalid(f"'num_parts' must be an integer from 1 to {MAX_PARTS}, got {num_parts!r}")
        if isinstance(store, LocalArtifactStore):
            store.local_path(target)  # a symlink out of the root is refused now, not at complete
        upload_id = secrets.token_urlsafe(32)
        stage = self._stage(upload_id)
        record = json.dumps({"target": target, "num_parts": num_parts}).encode()
        await run_in_threadpool(store.put_bytes, record, f"{stage}/target.json")
        headers = {"Authorization": request.headers["authorization"]} if "authorization" in request.headers else {}
        credentials = [
            {
                "url": str(request.url_for("mlflow_artifacts_mpu_part", upload_id=upload_id, part_number=str(number))),
                "part_number": number,
                "headers": headers,
            }
            for number in range(1, num_parts + 1)
        ]
        return JSONResponse({"upload_id": upload_id, "credentials": credentials})

    async def mpu_part(self, request: Request) -> Response:
        store = self._store()
        stage = self._stage(request.path_params["upload_id"])
        upload = await run_in_threadpool(self._load_upload, store, stage)
        number = request.path_params["part_number"]
        if not number.isdigit() or not 1 <= int(number) <= upload.num_parts:
            raise _invalid(f"part number {number!r} is not in 1..{upload.num_parts} for this upload")
        etag = secrets.token_hex(16)  # every attempt at a part is a file of its own, named by its ETag
        await self._receive(store, _part_file(stage, int(number), etag), request)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    async def mpu_complete(self, request: Request) -> Response:
        store, body, target = await self._upload_args(request)
        stage = self._stage(body.get("upload_id"))
        upload = await run_in_threadpool(self._load_upload, store, stage)
        if target != upload.target:
            raise _invalid(f"upload {body.get('upload_id')!r} was created for {upload.target!r}, not {target!r}")
        parts = body.get("parts")
        if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
            raise _invalid("'parts' must be a list of {part_number, etag} objects")
        etags: dict[int, str] = {}
        for part in parts:
            number, etag = part.get("part_number"), part.get("etag")
            if isinstance(number, str) and number.isdigit():
                number = int(number)
            if not isinstance(number, int) or number in etags or not isinstance(etag, str):
                raise _invalid(f"bad or repeated part {part!r}")
            etags[number] = etag.strip('"')
            if not _ETAG.match(etags[number]):
                raise _invalid(f"part {number}: {etag!r} is not an ETag this server handed out")
        if sorted(etags) != list(range(1, upload.num_parts + 1)):
            raise _invalid(f"'parts' must list parts 1..{upload.num_parts} once each, got {sorted(etags)}")
        await run_in_threadpool(self._assemble, store, stage, target, etags)
        return JSONResponse({})

    def _assemble(self, store: ArtifactStore, stage: str, target: str, etags: dict[int, str]) -> None:
        """Concatenate the part files the client named (by their ETags) into ``target``, then drop the stage."""
        sources = [_part_file(stage, number, etags[number]) for number in sorted(etags)]
        present = {info.path for info in store.list(stage)}
        for number, source in zip(sorted(etags), sources, strict=True):
            if source not in present:
                raise _invalid(f"part {number} was never uploaded with ETag {etags[number]!r}")
        parent, _, name = target.rpartition("/")

        def copy_parts(write: Callable[[bytes], object]) -> None:
            for source in sources:
                with store.open(source) as handle:
                    while chunk := handle.read(CHUNK_BYTES):
                        write(chunk)

        if isinstance(store, FsspecArtifactStore):  # on S3, assembled inside S3 when the part sizes allow
            store.concatenate(sources, target)
        elif isinstance(store, LocalArtifactStore):
            with _staging(store, target) as near:
                with open(near / name, "xb") as out:
                    copy_parts(out.write)
                store.move_dir(near, parent or None)
        else:
            with tempfile.TemporaryDirectory(prefix="cairn-upload-") as tmp:
                with open(Path(tmp) / name, "xb") as out:
                    copy_parts(out.write)
                store.put_file(Path(tmp) / name, parent or None)
        try:
            store.delete(stage)
        except ArtifactNotFound:
            pass  # a concurrent completion of the same upload (a client's retry) removed it first

    async def mpu_abort(self, request: Request) -> Response:
        store, body, _ = await self._upload_args(request)
        stage = self._stage(body.get("upload_id"))
        if await run_in_threadpool(store.exists, stage):
            await run_in_threadpool(store.delete, stage)
        return JSONResponse({})  # aborting an unknown (already finished) upload is not an error

    # -- tracking side: /api/2.0/mlflow/artifacts/list -------------------------------------------

    async def list_run_artifacts(self, request: Request) -> Response:
        args = query_params(request)
        run_id = args.get("run_id") or args.get("run_uuid")
        if not isinstance(run_id, str) or not run_id:
            raise _invalid("Missing value for required parameter 'run_id'")
        path = args.get("path")
        if path is not None and not isinstance(path, str):
            raise _invalid("'path' must be given once")
        run = await run_in_threadpool(self._ctx.client.get_run, run_id)
        uri = run.info.artifact_uri
        rel = safe_relpath(path)
        store = store_for_artifact_uri(self._ctx, uri)
        try:
            infos = await run_in_threadpool(store.list, rel or None)
        except ArtifactNotFound:
            infos = []
        return JSONResponse(
            {
                "root_uri": public_location(self._ctx, uri),
                "files": [_file_info_json(info, info.path) for info in infos],
            }
        )


def _guarded(handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except ClientDisconnect:  # the staged upload was removed; nobody is left to read an answer
            return error_response(_invalid("the client disconnected before the request body was complete"))
        except Exception as exc:  # every error becomes MLflow's error body; see error_response
            return error_response(exc)
        return response

    return endpoint


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The artifact proxy's routes (both ``/api`` and ``/ajax-api``) and ``mlflow/artifacts/list``."""
    proxy = ArtifactProxy(ctx)
    result: list[BaseRoute] = []
    for index, prefix in enumerate(ARTIFACTS_PREFIXES):
        suffix = "" if index == 0 else "_ajax"
        result += [
            Route(f"{prefix}/artifacts", _guarded(proxy.list_files), methods=["GET"]),
            Route(f"{prefix}/artifacts/{{path:path}}", _guarded(proxy.download), methods=["GET"]),
            Route(f"{prefix}/artifacts/{{path:path}}", _guarded(proxy.upload), methods=["PUT"]),
            Route(f"{prefix}/artifacts/{{path:path}}", _guarded(proxy.delete), methods=["DELETE"]),
            Route(
                f"{prefix}/mpu/part/{{upload_id}}/{{part_number}}",
                _guarded(proxy.mpu_part),
                methods=["PUT"],
                name=f"mlflow_artifacts_mpu_part{suffix}",
            ),
        ]
        for action, handler in (
            ("create", proxy.mpu_create),
            ("complete", proxy.mpu_complete),
            ("abort", proxy.mpu_abort),
        ):
            result += [
                Route(f"{prefix}/mpu/{action}", _guarded(handler), methods=["POST"]),
                Route(f"{prefix}/mpu/{action}/{{path:path}}", _guarded(handler), methods=["POST"]),
            ]
    result += json_route("artifacts/list", proxy.list_run_artifacts, ["GET"])
    return result
