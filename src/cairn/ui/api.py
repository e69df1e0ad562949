"""The JSON API behind the UI's pages. Handlers are plain functions: Starlette runs them in its
thread pool, so blocking store calls never stall the event loop.

Errors come back as ``{"error": {"type", "message", ...}}`` with a status from :func:`error_status`;
a filter syntax error adds ``position`` (offset of the offending token) and ``text``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cairn.artifacts.paths import safe_relpath
from cairn.errors import (
    CairnError,
    FilterSyntaxError,
    InvalidArgument,
    NotFound,
    ResourceAlreadyExists,
    RunNotActive,
    UnsafePath,
)
from cairn.tracking.entities import ViewType
from cairn.ui import artifacts, serialize, sql
from cairn.ui.security import ARTIFACT_CSP
from cairn.ui.series import DEFAULT_MAX_POINTS, MAX_POINTS_LIMIT, XAxis, metric_series

if TYPE_CHECKING:
    from cairn.tracking.client import Client

__all__ = ["error_response", "routes"]

MAX_PAGE_SIZE = 500
MAX_COMPARE = 20
_VIEWS = {"active": ViewType.ACTIVE_ONLY, "deleted": ViewType.DELETED_ONLY, "all": ViewType.ALL}


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


class _StrictJSON(JSONResponse):
    """JSON without NaN/Infinity tokens (which browsers refuse): any left become their names as strings."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite_everywhere(content))


def _finite_everywhere(value: Any) -> Any:
    if isinstance(value, float):
        return serialize.finite(value)
    if isinstance(value, dict):
        return {k: _finite_everywhere(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_everywhere(v) for v in value]
    return value


def _json(content: Any, status: int = 200) -> JSONResponse:
    return _StrictJSON(content, status_code=status)


def error_status(exc: Exception) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (RunNotActive, ResourceAlreadyExists)):
        return 409
    if isinstance(exc, (InvalidArgument, UnsafePath, ValueError)):
        return 400
    return 500


def error_response(exc: Exception) -> JSONResponse:
    """The JSON error body for a cairn error (message without the filter's ASCII caret drawing)."""
    message = str(exc)
    body: dict[str, Any] = {"type": type(exc).__name__, "message": message}
    if isinstance(exc, FilterSyntaxError):
        if exc.text and "\n" in message:
            body["message"] = message.split("\n", 1)[0]
        body["position"] = exc.position
        body["text"] = exc.text
    return _json({"error": body}, error_status(exc))


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be from {low} to {high}, got {value}")
    return value


def _view(request: Request) -> ViewType:
    raw = request.query_params.get("view", "active")
    if raw not in _VIEWS:
        raise InvalidArgument(f"view must be one of {', '.join(_VIEWS)}, got {raw!r}")
    return _VIEWS[raw]


def _list_arg(request: Request, name: str) -> list[str]:
    return [item for item in request.query_params.getlist(name) if item]


# -- session, experiments --------------------------------------------------------------------------


def session(request: Request) -> JSONResponse:
    """The token writes must carry (readable by the UI's own origin only) and server facts."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("cairn")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return _json({"token": request.app.state.token, "version": version, "store": request.app.state.store_label})


def list_experiments(request: Request) -> JSONResponse:
    client = _client(request)
    view = _view(request)
    counts = sql.run_counts(client.store)
    counts_known = sql.database_of(client.store) is not None
    experiments = client.search_experiments(view, 50_000)
    return _json(
        {
            "experiments": [
                serialize.experiment_json(e, counts.get(e.experiment_id, {}) if counts_known else None)
                for e in experiments
            ]
        }
    )


def get_experiment(request: Request) -> JSONResponse:
    client = _client(request)
    experiment = client.get_experiment(request.path_params["experiment_id"])
    counts = sql.run_counts(client.store).get(experiment.experiment_id, {})
    return _json({"experiment": serialize.experiment_json(experiment, counts)})


def experiment_keys(request: Request) -> JSONResponse:
    """Distinct param and metric keys over the experiment's runs (for the column picker)."""
    client = _client(request)
    experiment = client.get_experiment(request.path_params["experiment_id"])
    return _json({"keys": sql.experiment_keys(client.store, experiment.experiment_id, _view(request))})


def list_runs(request: Request) -> JSONResponse:
    """One page of an experiment's runs: ``filter``, ``order_by`` (repeatable), ``page_token``,
    ``max_results``, ``view`` (active, deleted, all). ``total`` counts every matching run."""
    client = _client(request)
    experiment_id = client.get_experiment(request.path_params["experiment_id"]).experiment_id
    filter_string = request.query_params.get("filter", "")
    order_by = _list_arg(request, "order_by") or None
    view = _view(request)
    max_results = _int_arg(request, "max_results", 50, 1, MAX_PAGE_SIZE)
    page = client.search_runs(
        experiment_id,
        filter_string,
        view,
        max_results,
        order_by,
        request.query_params.get("page_token") or None,
    )
    total = sql.count_runs(client.store, [experiment_id], filter_string, view)
    return _json(
        {
            "runs": [serialize.run_json(run, all_tags=False) for run in page.items],
            "next_page_token": page.next_page_token,
            "total": total,
        }
    )


# -- runs ------------------------------------------------------------------------------------------


def get_run(request: Request) -> JSONResponse:
    client = _client(request)
    run = client.get_run(request.path_params["run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    try:
        versions = client.registry_store.search_model_versions(run_id=run.info.run_id, max_results=100)
    except CairnError:
        versions = []
    return _json(
        {
            "run": serialize.run_json(run),
            "experiment": {"experiment_id": experiment.experiment_id, "name": experiment.name},
            "metric_keys": sorted(run.data.metrics),
            "model_versions": [serialize.version_json(v) for v in versions],
        }
    )


def metric(request: Request) -> JSONResponse:
    """``?key=...&max_points=2000&x=step|time``: the series, down-sampled on the server."""
    client = _client(request)
    key = request.query_params.get("key")
    if not key:
        raise InvalidArgument("the metric key is missing: pass ?key=<metric key>")
    raw_x = request.query_params.get("x", "step")
    if raw_x not in ("step", "time"):
        raise InvalidArgument(f"x must be step or time, got {raw_x!r}")
    x: XAxis = "time" if raw_x == "time" else "step"
    max_points = _int_arg(request, "max_points", DEFAULT_MAX_POINTS, 10, MAX_POINTS_LIMIT)
    series = metric_series(client.store, request.path_params["run_id"], key, max_points=max_points, x=x)
    return _json(series.to_json())


def delete_run(request: Request) -> JSONResponse:
    client = _client(request)
    run_id = request.path_params["run_id"]
    client.delete_run(run_id)
    return _json({"run_id": run_id, "lifecycle_stage": "deleted"})


def restore_run(request: Request) -> JSONResponse:
    client = _client(request)
    run_id = request.path_params["run_id"]
    client.restore_run(run_id)
    return _json({"run_id": run_id, "lifecycle_stage": "active"})


def compare(request: Request) -> JSONResponse:
    """``?runs=<id>&runs=<id>...``: the runs, and every param/metric key with whether values differ."""
    client = _client(request)
    ids = list(dict.fromkeys(_list_arg(request, "runs")))
    if len(ids) < 1 or len(ids) > MAX_COMPARE:
        raise InvalidArgument(f"compare takes 1 to {MAX_COMPARE} runs, got {len(ids)}")
    found = [client.get_run(run_id) for run_id in ids]
    rows: dict[str, list[dict[str, Any]]] = {"params": [], "metrics": []}
    for kind in ("params", "metrics"):
        keys = sorted({k for run in found for k in getattr(run.data, kind)})
        for key in keys:
            values = [getattr(run.data, kind).get(key) for run in found]
            shown = [serialize.finite(v) if isinstance(v, float) else v for v in values]
            distinct = {json.dumps(v) for v in shown}
            rows[kind].append({"key": key, "values": shown, "differs": len(distinct) > 1})
    return _json({"runs": [serialize.run_json(run, all_tags=False) for run in found], **rows})


# -- artifacts -------------------------------------------------------------------------------------


def list_artifacts(request: Request) -> JSONResponse:
    client = _client(request)
    path = safe_relpath(request.query_params.get("path") or None)
    store = client.artifact_store(request.path_params["run_id"])
    entries = store.list(path or None)
    return _json(
        {
            "path": path,
            "entries": [
                {"path": e.path, "name": posixpath.basename(e.path), "is_dir": e.is_dir, "size": e.file_size}
                for e in entries
            ],
        }
    )


def preview_artifact(request: Request) -> JSONResponse:
    client = _client(request)
    store = client.artifact_store(request.path_params["run_id"])
    return _json(artifacts.preview(store, request.query_params.get("path", "")))


def raw_artifact(request: Request) -> Response:
    """The file itself, streamed, with a content type from an allow-list and a sandbox CSP.

    ``?download=1`` asks the browser to save it instead of showing it.
    """
    client = _client(request)
    path = safe_relpath(request.query_params.get("path", ""))
    if not path:
        raise InvalidArgument("raw needs a file path, not the artifact root")
    store = client.artifact_store(request.path_params["run_id"])
    handle = store.open(path)
    media_type, inline = artifacts.content_type(path)
    disposition = "inline" if inline and request.query_params.get("download") != "1" else "attachment"
    filename = posixpath.basename(path)
    headers = {
        "content-security-policy": ARTIFACT_CSP,
        "content-disposition": f"{disposition}; filename*=UTF-8''{quote(filename, safe='')}",
        "cache-control": "no-store",
    }

    def chunks() -> Iterator[bytes]:
        with handle:
            while True:
                block = handle.read(256 * 1024)
                if not block:
                    return
                yield block

    return StreamingResponse(chunks(), media_type=media_type, headers=headers)


def list_checkpoints(request: Request) -> JSONResponse:
    client = _client(request)
    run_id = request.path_params["run_id"]
    store = client.artifact_store(run_id)
    return _json({"checkpoints": artifacts.checkpoints(store, run_id)})


# -- registry --------------------------------------------------------------------------------------


def list_models(request: Request) -> JSONResponse:
    client = _client(request)
    models = client.registry_store.search_registered_models(None, 50_000)
    return _json({"models": [serialize.model_json(m) for m in models]})


def get_model(request: Request) -> JSONResponse:
    client = _client(request)
    name = request.query_params.get("name", "")
    model = client.get_registered_model(name)
    versions = client.registry_store.search_model_versions(name=name, max_results=10_000)
    run_ids = [v.run_id for v in versions if v.run_id]
    present = _existing_runs(client, run_ids)
    items = []
    for version in versions:
        item = serialize.version_json(version)
        item["run_exists"] = version.run_id in present if version.run_id else None
        items.append(item)
    return _json({"model": serialize.model_json(model), "versions": items})


def _existing_runs(client: Client, run_ids: list[str]) -> set[str]:
    present = set()
    for run_id in dict.fromkeys(run_ids):
        try:
            client.store.get_run(run_id)
        except NotFound:
            continue
        present.add(run_id)
    return present


def model_version(request: Request) -> JSONResponse:
    """``?name=...&version=N``: the version and its lineage (run, params, metrics, git, source)."""
    client = _client(request)
    lineage = client.get_model_version_lineage(
        request.query_params.get("name", ""), request.query_params.get("version", "")
    )
    run = lineage.run
    return _json(
        {
            "version": serialize.version_json(lineage.model_version),
            "lineage": {
                "source": lineage.source,
                "run_id": lineage.run_id,
                "run": serialize.run_json(run, all_tags=False) if run is not None else None,
                "run_missing": lineage.run_id is not None and run is None,
                "params": lineage.params,
                "metrics": {k: serialize.finite(v) for k, v in lineage.metrics.items()},
                "git_commit": lineage.git_commit,
                "git_branch": lineage.git_branch,
                "git_repo_url": lineage.git_repo_url,
                "git_dirty": lineage.git_dirty,
                "code_source": lineage.code_source,
            },
        }
    )


def not_found(request: Request) -> JSONResponse:
    return _json({"error": {"type": "NotFound", "message": f"no API route {request.url.path}"}}, 404)


def routes() -> list[Route]:
    """The API routes, all under ``/api/``."""
    return [
        Route("/api/session", session),
        Route("/api/experiments", list_experiments),
        Route("/api/experiments/{experiment_id}", get_experiment),
        Route("/api/experiments/{experiment_id}/keys", experiment_keys),
        Route("/api/experiments/{experiment_id}/runs", list_runs),
        Route("/api/runs/{run_id}", get_run),
        Route("/api/runs/{run_id}", delete_run, methods=["DELETE"]),
        Route("/api/runs/{run_id}/delete", delete_run, methods=["POST"]),
        Route("/api/runs/{run_id}/restore", restore_run, methods=["POST"]),
        Route("/api/runs/{run_id}/metric", metric),
        Route("/api/runs/{run_id}/artifacts", list_artifacts),
        Route("/api/runs/{run_id}/artifacts/preview", preview_artifact),
        Route("/api/runs/{run_id}/artifacts/raw", raw_artifact),
        Route("/api/runs/{run_id}/checkpoints", list_checkpoints),
        Route("/api/compare", compare),
        Route("/api/models", list_models),
        Route("/api/model", get_model),
        Route("/api/model-version", model_version),
    ]
