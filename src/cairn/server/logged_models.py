"""MLflow 3's logged models (``/api/2.0/mlflow/logged-models...``), recorded on their source run (or experiment).

``mlflow.<flavor>.log_model`` first creates a logged model, links it to the run (``runs/outputs``),
uploads the model directory to the logged model's ``artifact_uri``, finalizes it and registers
``models:/<model_id>``. cairn keeps no separate table for this: a logged model belongs to the run that
made it (as cairn's own ``log_model`` records its models in the run's ``mlflow.log-model.history``
tag), so its record is one run tag, ``cairn.logged-model.<model_id>``, holding JSON (name, type,
status, tags, params, times, location). The model id embeds the run id (``m-<run id><8 hex>``), so a
lookup by id is one ``get_run`` on any server process. A model logged outside any run (MLflow 3 allows
it) is recorded the same way as an experiment tag, with the id ``m-e<experiment id>-<16 hex>``. The
files live where MLflow puts them, ``<experiment artifact location>/models/<model_id>/artifacts``.

Limits of this choice: a model's params are its run's params plus its own, stored in the tag (8,000
characters); two clients changing the same model's tags at the same instant may lose one change (each
write replaces the record). Deleting a logged model removes its run tag (an experiment keeps a
``{"deleted": true}`` record, as experiment tags cannot be removed); its files stay, as in MLflow.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute

from cairn.errors import InvalidArgument, NotFound
from cairn.server.auth.permissions import Principal, readable_experiments
from cairn.server.protocol import ServerContext, invalid, json_route
from cairn.server.registry_api import (
    Args,
    Body,
    client_location,
    encode_token,
    endpoint,
    integer,
    page_offset,
    required_text,
    strings,
    tag_list,
    text,
    viewer_endpoint,
)

__all__ = [
    "RECORD_TAG_PREFIX",
    "LoggedModel",
    "LoggedModels",
    "logged_model_routes",
    "model_id_of_location",
    "owner_of_model_id",
]

RECORD_TAG_PREFIX = "cairn.logged-model."
STATUSES = {1: "LOGGED_MODEL_PENDING", 2: "LOGGED_MODEL_READY", 3: "LOGGED_MODEL_UPLOAD_FAILED"}
MAX_SEARCH = 1000
_RUN_MODEL_ID = re.compile(r"^m-([0-9a-f]{32})[0-9a-f]{8}$")
_EXPERIMENT_MODEL_ID = re.compile(r"^m-e([0-9]{1,19})-[0-9a-f]{16}$")
_LOCATION = re.compile(r"/models/(m-(?:[0-9a-f]{40}|e[0-9]{1,19}-[0-9a-f]{16}))/artifacts/?$")
_DELETED = json.dumps({"deleted": True})
_FILTER_CLAUSE = re.compile(
    r"\s*(?P<key>name|source_run_id|status|model_type)\s*=\s*(?P<q>['\"])(?P<value>.*?)(?P=q)\s*", re.IGNORECASE
)
_AND = re.compile(r"AND\s", re.IGNORECASE)
_ORDER_KEYS = {"creation_timestamp", "last_updated_timestamp", "name"}


def model_id_of_location(location: str | None) -> str | None:
    """The logged model whose files are at ``location`` (``.../models/<model_id>/artifacts``), if any."""
    match = _LOCATION.search(location or "")
    return match.group(1) if match else None


def owner_of_model_id(model_id: str) -> tuple[str, str] | None:
    """Where a logged model's record lives, read from its id: ``("run", run_id)`` or
    ``("experiment", experiment_id)``; None for an id this server never hands out."""
    if match := _RUN_MODEL_ID.match(model_id):
        return "run", match.group(1)
    if match := _EXPERIMENT_MODEL_ID.match(model_id):
        return "experiment", match.group(1)
    return None


@dataclass
class LoggedModel:
    """One logged model, as recorded in its run's tag."""

    model_id: str
    experiment_id: str
    source_run_id: str
    name: str
    artifact_location: str
    creation_timestamp: int
    last_updated_timestamp: int
    status: str = STATUSES[1]
    status_message: str = ""
    model_type: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def record(self) -> str:
        """The tag value (what is not derivable from the id and the run)."""
        keys = ("name", "artifact_location", "creation_timestamp", "last_updated_timestamp", "status")
        body: dict[str, Any] = {key: getattr(self, key) for key in keys}
        body.update(
            {
                k: v
                for k, v in (
                    ("status_message", self.status_message),
                    ("model_type", self.model_type),
                    ("tags", self.tags),
                    ("params", self.params),
                )
                if v
            }
        )
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    def to_json(self, ctx: ServerContext, run_params: dict[str, str]) -> Body:
        """MLflow's ``LoggedModel`` message: ``{"info": ..., "data": ...}``."""
        info: Body = {
            "model_id": self.model_id,
            "experiment_id": self.experiment_id,
            "name": self.name,
            "creation_timestamp_ms": self.creation_timestamp,
            "last_updated_timestamp_ms": self.last_updated_timestamp,
            "artifact_uri": client_location(ctx, self.artifact_location),
            "status": self.status,
        }
        if self.source_run_id:
            info["source_run_id"] = self.source_run_id
        if self.model_type:
            info["model_type"] = self.model_type
        if self.status_message:
            info["status_message"] = self.status_message
        if self.tags:
            info["tags"] = [{"key": k, "value": v} for k, v in self.tags.items()]
        params = {**run_params, **self.params}
        data: Body = {"params": [{"key": k, "value": v} for k, v in params.items()]} if params else {}
        return {"info": info, "data": data}


def _now() -> int:
    return time.time_ns() // 1_000_000


def _status(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in STATUSES:
        return STATUSES[value]
    if isinstance(value, str) and value.isdecimal() and int(value) in STATUSES:
        return STATUSES[int(value)]
    if isinstance(value, str) and value in STATUSES.values():
        return value
    raise invalid(f"Invalid value {value!r} for parameter 'status': expected one of {', '.join(STATUSES.values())}")


class LoggedModels:
    """Logged models of the server's store (records in run tags; see the module docstring)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.client = ctx.client

    # -- records -----------------------------------------------------------------------------------

    def _load(self, model_id: str) -> tuple[LoggedModel, dict[str, str]]:
        """The model and its run's params. Raises NotFound."""
        missing = NotFound(f"Logged model with ID '{model_id}' not found.")
        key = RECORD_TAG_PREFIX + model_id
        try:
            if match := _RUN_MODEL_ID.match(model_id):
                run = self.client.get_run(match.group(1))
                raw, experiment_id, run_id, params = (
                    run.data.tags.get(key),
                    run.info.experiment_id,
                    run.info.run_id,
                    dict(run.data.params),
                )
            elif match := _EXPERIMENT_MODEL_ID.match(model_id):
                experiment = self.client.get_experiment(match.group(1))
                raw, experiment_id, run_id, params = experiment.tags.get(key), experiment.experiment_id, "", {}
            else:
                raise missing
        except NotFound:
            raise missing from None
        if raw is None or raw == _DELETED:
            raise missing
        return self._parse(model_id, experiment_id, run_id, raw), params

    @staticmethod
    def _parse(model_id: str, experiment_id: str, run_id: str, raw: str) -> LoggedModel:
        body = json.loads(raw)
        return LoggedModel(
            model_id=model_id,
            experiment_id=str(experiment_id),
            source_run_id=run_id,
            name=body["name"],
            artifact_location=body["artifact_location"],
            creation_timestamp=body["creation_timestamp"],
            last_updated_timestamp=body["last_updated_timestamp"],
            status=body["status"],
            status_message=body.get("status_message", ""),
            model_type=body.get("model_type", ""),
            tags=body.get("tags", {}),
            params=body.get("params", {}),
        )

    def _save(self, model: LoggedModel) -> None:
        key = RECORD_TAG_PREFIX + model.model_id
        try:
            if model.source_run_id:
                self.client.set_tag(model.source_run_id, key, model.record())
            else:
                self.client.set_experiment_tag(model.experiment_id, key, model.record())
        except InvalidArgument as exc:
            owner = f"run {model.source_run_id}" if model.source_run_id else f"experiment {model.experiment_id}"
            raise invalid(
                f"logged model {model.model_id}: its tags and params do not fit in its record on {owner} ({exc})"
            ) from None

    def get(self, model_id: str) -> LoggedModel:
        return self._load(model_id)[0]

    # -- operations --------------------------------------------------------------------------------

    def create(self, args: Args) -> Body:
        experiment_id = required_text(args, "experiment_id")
        run_id = text(args, "source_run_id") or ""
        experiment = self.client.get_experiment(experiment_id)
        run_params: dict[str, str] = {}
        if run_id:
            run = self.client.get_run(run_id)
            if str(run.info.experiment_id) != experiment_id:
                raise invalid(f"run {run_id} belongs to experiment {run.info.experiment_id}, not {experiment_id}")
            run_params, taken = dict(run.data.params), run.data.tags
        else:
            taken = experiment.tags
        while True:
            model_id = f"m-{run_id}{secrets.token_hex(4)}" if run_id else f"m-e{experiment_id}-{secrets.token_hex(8)}"
            if RECORD_TAG_PREFIX + model_id not in taken:
                break
        params = {k: v for k, v in tag_list(args, "params").items() if run_params.get(k) != v}
        now = _now()
        model = LoggedModel(
            model_id=model_id,
            experiment_id=experiment_id,
            source_run_id=run_id,
            name=text(args, "name") or f"model-{secrets.token_hex(3)}",
            artifact_location=f"{experiment.artifact_location.rstrip('/')}/models/{model_id}/artifacts",
            creation_timestamp=now,
            last_updated_timestamp=now,
            model_type=text(args, "model_type") or "",
            tags=tag_list(args),
            params=params,
        )
        self._save(model)
        return {"model": model.to_json(self.ctx, run_params)}

    def _update(self, model_id: str, change: Any) -> Body:
        model, run_params = self._load(model_id)
        change(model)
        model.last_updated_timestamp = _now()
        self._save(model)
        return {"model": model.to_json(self.ctx, run_params)}

    def finalize(self, args: Args) -> Body:
        status = _status(args.get("status"))

        def apply(model: LoggedModel) -> None:
            model.status = status

        return self._update(str(args["model_id"]), apply)

    def set_tags(self, args: Args) -> Body:
        tags = tag_list(args)

        def apply(model: LoggedModel) -> None:
            model.tags.update(tags)

        self._update(str(args["model_id"]), apply)
        return {}

    def delete_tag(self, args: Args) -> Body:
        key = str(args["tag_key"])

        def apply(model: LoggedModel) -> None:
            model.tags.pop(key, None)

        self._update(str(args["model_id"]), apply)
        return {}

    def log_params(self, args: Args) -> Body:
        params = tag_list(args, "params")

        def apply(model: LoggedModel) -> None:
            model.params.update(params)

        self._update(str(args["model_id"]), apply)
        return {}

    def fetch(self, args: Args) -> Body:
        model, run_params = self._load(str(args["model_id"]))
        return {"model": model.to_json(self.ctx, run_params)}

    def delete(self, args: Args) -> Body:
        model = self.get(str(args["model_id"]))
        if model.source_run_id:
            self.client.delete_tag(model.source_run_id, RECORD_TAG_PREFIX + model.model_id)
        else:
            self.client.set_experiment_tag(model.experiment_id, RECORD_TAG_PREFIX + model.model_id, _DELETED)
        return {}

    def log_outputs(self, args: Args) -> Body:
        """``runs/outputs``: the link is the model's source run; check that both exist."""
        run_id = required_text(args, "run_id")
        self.client.get_run(run_id)
        models = args.get("models") or []
        if not isinstance(models, list):
            raise invalid("Invalid value for parameter 'models': expected an array")
        for item in models:
            if not isinstance(item, dict) or not isinstance(item.get("model_id"), str):
                raise invalid(f"Invalid model output {item!r}: expected {{'model_id': str, 'step': int}}")
            self.get(item["model_id"])
        return {}

    def search(self, args: Args, principal: Principal | None = None) -> Body:
        """With ``principal`` (auth on): only in the requested experiments it may read (as MLflow's auth
        does, the others are left out rather than refused)."""
        experiment_ids = strings(args, "experiment_ids")
        if not experiment_ids:
            raise invalid("Missing value for required parameter 'experiment_ids'.")
        visible = readable_experiments(principal)
        if visible is not None:
            experiment_ids = [e for e in experiment_ids if e in visible]
            if not experiment_ids:
                return {"models": []}
        max_results = integer(args, "max_results", 100, maximum=MAX_SEARCH)
        conditions = _parse_filter(text(args, "filter"))
        found = [m for m in self._candidates(experiment_ids, conditions) if _matches(m, conditions)]
        found = _ordered(found, args.get("order_by"))
        offset = page_offset(args)
        chunk = found[offset : offset + max_results]
        body: Body = {"models": [model.to_json(self.ctx, params) for model, params in chunk]}
        if len(found) > offset + max_results:
            body["next_page_token"] = encode_token(offset + max_results)
        return body

    def _candidates(
        self, experiment_ids: list[str], conditions: dict[str, str]
    ) -> list[tuple[LoggedModel, dict[str, str]]]:
        run_id = conditions.get("source_run_id")
        if run_id is not None:
            try:
                runs = [self.client.get_run(run_id)]
            except NotFound:
                return []
        else:
            runs, token = [], None
            while True:
                paged = self.client.search_runs(experiment_ids, max_results=1000, page_token=token)
                runs.extend(paged.items)
                token = paged.next_page_token
                if not token:
                    break
        result: list[tuple[LoggedModel, dict[str, str]]] = []
        if run_id is None:  # models logged outside any run
            for experiment_id in experiment_ids:
                try:
                    experiment = self.client.get_experiment(experiment_id)
                except NotFound:
                    continue
                for key, raw in experiment.tags.items():
                    if key.startswith(RECORD_TAG_PREFIX) and raw != _DELETED:
                        model = self._parse(key[len(RECORD_TAG_PREFIX) :], experiment.experiment_id, "", raw)
                        result.append((model, {}))
        for run in runs:
            if str(run.info.experiment_id) not in experiment_ids:
                continue
            for key, raw in run.data.tags.items():
                if key.startswith(RECORD_TAG_PREFIX):
                    model = self._parse(key[len(RECORD_TAG_PREFIX) :], run.info.experiment_id, run.info.run_id, raw)
                    result.append((model, dict(run.data.params)))
        return result

    def source_of(self, source: str, model_id: str | None) -> LoggedModel | None:
        """The logged model a ``models:/<model_id>`` version source names (None for other sources).

        Raises:
            MlflowApiError: INVALID_PARAMETER_VALUE when ``model_id`` disagrees with the source.
        """
        if not source.startswith("models:/"):
            return None
        ref = source[len("models:/") :].strip("/")
        if "/" in ref or "@" in ref:
            return None  # models:/<name>/<version>: another registered version, resolved by the client
        if model_id and model_id != ref:
            raise invalid(
                f"Invalid model version source: '{source}'. The model_id request parameter must identify "
                "the resource that contains the source."
            )
        return self.get(ref)


def _parse_filter(filter_string: str | None) -> dict[str, str]:
    """``name = '...'``, ``source_run_id = '...'``, ``status = '...'``, ``model_type = '...'`` joined by AND."""
    conditions: dict[str, str] = {}
    text_ = filter_string or ""
    position = 0
    while text_[position:].strip():
        match = _FILTER_CLAUSE.match(text_, position)
        if match is None:
            raise invalid(
                f"Unsupported logged model filter {filter_string!r} at position {position}; cairn supports "
                "name, source_run_id, status and model_type compared with = to a quoted value, joined by AND"
            )
        conditions[match.group("key").lower()] = match.group("value")
        position = match.end()
        joiner = _AND.match(text_, position)
        if joiner is not None:
            position = joiner.end()
        elif text_[position:].strip():
            raise invalid(f"Expected AND at position {position} of logged model filter {filter_string!r}")
    return conditions


def _matches(item: tuple[LoggedModel, dict[str, str]], conditions: dict[str, str]) -> bool:
    model = item[0]
    return all(str(getattr(model, key)) == value for key, value in conditions.items())


def _ordered(
    items: list[tuple[LoggedModel, dict[str, str]]], order_by: Any
) -> list[tuple[LoggedModel, dict[str, str]]]:
    clauses = order_by or [{"field_name": "creation_timestamp", "ascending": False}]
    if not isinstance(clauses, list):
        raise invalid("Invalid value for parameter 'order_by': expected an array")
    for clause in reversed(clauses):
        name = clause.get("field_name") if isinstance(clause, dict) else None
        if name not in _ORDER_KEYS:
            raise invalid(f"Cannot order logged models by {clause!r}; use one of {', '.join(sorted(_ORDER_KEYS))}")
        ascending = clause.get("ascending", True) is not False
        items = sorted(items, key=_sort_key(str(name)), reverse=not ascending)
    return items


def _sort_key(name: str) -> Callable[[tuple[LoggedModel, dict[str, str]]], Any]:
    def key(item: tuple[LoggedModel, dict[str, str]]) -> Any:
        return getattr(item[0], name)

    return key


def logged_model_routes(ctx: ServerContext) -> list[BaseRoute]:
    """``logged-models`` create/get/finalize/delete/search/tags/params and ``runs/outputs``."""
    models = LoggedModels(ctx)
    table: list[tuple[str, Callable[[Args], Body], str]] = [
        ("logged-models", models.create, "POST"),
        ("runs/outputs", models.log_outputs, "POST"),
        ("logged-models/{model_id}", models.fetch, "GET"),
        ("logged-models/{model_id}", models.finalize, "PATCH"),
        ("logged-models/{model_id}", models.delete, "DELETE"),
        ("logged-models/{model_id}/tags", models.set_tags, "PATCH"),
        ("logged-models/{model_id}/tags/{tag_key:path}", models.delete_tag, "DELETE"),
        ("logged-models/{model_id}/params", models.log_params, "POST"),
    ]
    routes = json_route("logged-models/search", viewer_endpoint(ctx, _viewer_search(models)), ["POST"])
    for path, operation, method in table:
        path_args = {name: name for name in ("model_id", "tag_key") if "{" + name in path}
        routes += json_route(path, endpoint(ctx, _ignoring_ctx(operation), **path_args), [method])
    return routes


def _viewer_search(models: LoggedModels) -> Callable[[ServerContext, Args, Principal | None], Body]:
    def handler(ctx: ServerContext, args: Args, principal: Principal | None) -> Body:
        return models.search(args, principal)

    return handler


def _ignoring_ctx(operation: Callable[[Args], Body]) -> Callable[[ServerContext, Args], Body]:
    def handler(ctx: ServerContext, args: Args) -> Body:
        return operation(args)

    return handler
