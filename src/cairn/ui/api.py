"""The JSON API behind the UI's pages. Handlers are plain functions: Starlette runs them in its
thread pool, so blocking store calls never stall the event loop.

Errors come back as ``{"error": {"type", "message", ...}}`` with a status from :func:`error_status`;
a filter syntax error adds ``position`` (offset of the offending token) and ``text``.

With ``cairn server --auth`` every handler asks :mod:`cairn.ui.access` what the user may do: lists
(experiments, models) hold only what the user may read, a single resource the user may not read is
refused with 403 (as MLflow's own API answers; a run is readable through its experiment), and
experiments, runs and models carry ``"permission"`` (``READ``/``EDIT``/``MANAGE``) so the page
shows only the controls the user may use. Without ``--auth`` the permission is always ``MANAGE``.
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
from cairn.server.auth.permissions import Permission
from cairn.tracking.entities import ViewType
from cairn.ui import artifacts, serialize, sql
from cairn.ui.access import Access, AccessDenied, NotLoggedIn, access_of
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
    if isinstance(exc, NotLoggedIn):
        return 401
    if isinstance(exc, AccessDenied):
        return 403
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


def _run_experiment(client: Client, run_id: str) -> str:
    return client.store.get_run_info(run_id).experiment_id


def _require_run(request: Request, needed: Permission, what: str) -> tuple[Access, Permission]:
    """The request's access and its permission on the run of the path's ``run_id`` (AccessDenied when
    below ``needed``; without --auth no lookup is made)."""
    access = access_of(request)
    if access.principal is None:
        return access, Permission.MANAGE
    run_id = request.path_params["run_id"]
    return access, access.require_experiment(_run_experiment(_client(request), run_id), needed, f"{what} run {run_id}")


# -- session, experiments --------------------------------------------------------------------------


def list_experiments(request: Request) -> JSONResponse:
    """The experiments the user may read, each with its ``permission``."""
    client = _client(request)
    access = access_of(request)
    view = _view(request)
    counts = sql.run_counts(client.store)
    counts_known = sql.database_of(client.store) is not None
    listed = []
    for experiment in client.search_experiments(view, 50_000):
        permission = access.experiment(experiment.experiment_id)
        if permission < Permission.READ:
            continue
        item = serialize.experiment_json(experiment, counts.get(experiment.experiment_id, {}) if counts_known else None)
        item["permission"] = permission.name
        listed.append(item)
    return _json({"experiments": listed})


def _readable_experiment_id(request: Request, what: str) -> tuple[str, Permission]:
    experiment_id = request.path_params["experiment_id"]
    permission = access_of(request).require_experiment(experiment_id, Permission.READ, what)
    return experiment_id, permission


def get_experiment(request: Request) -> JSONResponse:
    client = _client(request)
    experiment_id, permission = _readable_experiment_id(request, "reading")
    experiment = client.get_experiment(experiment_id)
    counts = sql.run_counts(client.store).get(experiment.experiment_id, {})
    return _json({"experiment": {**serialize.experiment_json(experiment, counts), "permission": permission.name}})


def experiment_keys(request: Request) -> JSONResponse:
    """Distinct param and metric keys over the experiment's runs (for the column picker)."""
    client = _client(request)
    experiment_id, _ = _readable_experiment_id(request, "reading")
    experiment = client.get_experiment(experiment_id)
    return _json({"keys": sql.experiment_keys(client.store, experiment.experiment_id, _view(request))})


def list_runs(request: Request) -> JSONResponse:
    """One page of an experiment's runs: ``filter``, ``order_by`` (repeatable), ``page_token``,
    ``max_results``, ``view`` (active, deleted, all). ``total`` counts every matching run."""
    client = _client(request)
    readable_id, permission = _readable_experiment_id(request, "listing the runs of")
    experiment_id = client.get_experiment(readable_id).experiment_id
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
            "permission": permission.name,
        }
    )


# -- runs ------------------------------------------------------------------------------------------


def get_run(request: Request) -> JSONResponse:
    """The run with every tag, its experiment, its metric keys and the model versions made from it
    (those of models the user may read); ``permission`` is the user's on the run's experiment."""
    client = _client(request)
    access, permission = _require_run(request, Permission.READ, "reading")
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
            "model_versions": [serialize.version_json(v) for v in versions if access.model(v.name) >= Permission.READ],
            "permission": permission.name,
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
    _require_run(request, Permission.READ, "reading")
    series = metric_series(client.store, request.path_params["run_id"], key, max_points=max_points, x=x)
    return _json(series.to_json())


def delete_run(request: Request) -> JSONResponse:
    client = _client(request)
    _require_run(request, Permission.MANAGE, "deleting")
    run_id = request.path_params["run_id"]
    client.delete_run(run_id)
    return _json({"run_id": run_id, "lifecycle_stage": "deleted"})


def restore_run(request: Request) -> JSONResponse:
    client = _client(request)
    _require_run(request, Permission.MANAGE, "restoring")
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
    access = access_of(request)
    for run in found:
        access.require_experiment(run.info.experiment_id, Permission.READ, f"comparing run {run.info.run_id}")
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
    _require_run(request, Permission.READ, "reading the artifacts of")
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
    _require_run(request, Permission.READ, "reading the artifacts of")
    client = _client(request)
    store = client.artifact_store(request.path_params["run_id"])
    return _json(artifacts.preview(store, request.query_params.get("path", "")))


def raw_artifact(request: Request) -> Response:
    """The file itself, streamed, with a content type from an allow-list and a sandbox CSP.

    ``?download=1`` asks the browser to save it instead of showing it.
    """
    _require_run(request, Permission.READ, "reading the artifacts of")
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
    _require_run(request, Permission.READ, "reading the artifacts of")
    client = _client(request)
    run_id = request.path_params["run_id"]
    store = client.artifact_store(run_id)
    return _json({"checkpoints": artifacts.checkpoints(store, run_id)})


# -- registry --------------------------------------------------------------------------------------


def list_models(request: Request) -> JSONResponse:
    """The registered models the user may read, each with its ``permission``."""
    client = _client(request)
    access = access_of(request)
    listed = []
    for model in client.registry_store.search_registered_models(None, 50_000):
        permission = access.model(model.name)
        if permission >= Permission.READ:
            listed.append({**serialize.model_json(model), "permission": permission.name})
    return _json({"models": listed})


def get_model(request: Request) -> JSONResponse:
    client = _client(request)
    name = request.query_params.get("name", "")
    permission = access_of(request).require_model(name, Permission.READ, "reading")
    model = client.get_registered_model(name)
    versions = client.registry_store.search_model_versions(name=name, max_results=10_000)
    run_ids = [v.run_id for v in versions if v.run_id]
    present = _existing_runs(client, run_ids)
    items = []
    for version in versions:
        item = serialize.version_json(version)
        item["run_exists"] = version.run_id in present if version.run_id else None
        items.append(item)
    return _json({"model": {**serialize.model_json(model), "permission": permission.name}, "versions": items})


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
    """``?name=...&version=N``: the version and its lineage (run, params, metrics, git, source).

    When the user may read the model but not the experiment of its source run, the run's details
    (params, metrics, git, code) are left out and ``run_hidden`` is true.
    """
    client = _client(request)
    name = request.query_params.get("name", "")
    access = access_of(request)
    permission = access.require_model(name, Permission.READ, "reading")
    lineage = client.get_model_version_lineage(name, request.query_params.get("version", ""))
    run = lineage.run
    hidden = run is not None and access.experiment(run.info.experiment_id) < Permission.READ
    shown = None if hidden else lineage
    return _json(
        {
            "version": serialize.version_json(lineage.model_version),
            "permission": permission.name,
            "lineage": {
                "source": lineage.source,
                "run_id": lineage.run_id,
                "run_hidden": hidden,
                "run": serialize.run_json(run, all_tags=False) if run is not None and not hidden else None,
                "run_missing": lineage.run_id is not None and run is None,
                "params": shown.params if shown else {},
                "metrics": {k: serialize.finite(v) for k, v in shown.metrics.items()} if shown else {},
                "git_commit": shown.git_commit if shown else None,
                "git_branch": shown.git_branch if shown else None,
                "git_repo_url": shown.git_repo_url if shown else None,
                "git_dirty": shown.git_dirty if shown else None,
                "code_source": shown.code_source if shown else None,
            },
        }
    )


def not_found(request: Request) -> JSONResponse:
    return _json({"error": {"type": "NotFound", "message": f"no API route {request.url.path}"}}, 404)


def routes() -> list[Route]:
    """The API routes, all under ``/api/``."""
    return [
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
