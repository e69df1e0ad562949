"""MLflow's tracking REST API (experiments, runs, run data, metric history) over a cairn store.

Paths, request fields, JSON shapes, error codes and limits follow MLflow 3's ``server/handlers.py``
and ``service.proto``. Requests are checked completely before anything is written: a rejected
log-batch writes nothing. Writes go to the store synchronously (the client batches; the server does not
queue), so a 200 means the data is stored.

Artifact locations: the store records real locations (``<artifact root>/<experiment id>``), so cairn's
own Client reads the same store directly. With ``serve_artifacts``, locations under the server's
artifact root are shown to clients as ``mlflow-artifacts:/<relative path>`` (what ``mlflow server``
answers), which the artifact proxy serves.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from cairn.errors import NotFound, ResourceAlreadyExists
from cairn.server.auth.middleware import principal_of
from cairn.server.auth.permissions import Principal, readable_experiments
from cairn.server.group_commit import GroupCommit
from cairn.server.locations import public_location
from cairn.server.protocol import ServerContext, invalid, json_object, json_route, read_body, request_args
from cairn.store._sql.store import KeyedMetrics, SqlTrackingStore
from cairn.tracking import context, system_tags, validation
from cairn.tracking.entities import Experiment, Metric, Param, Run, RunInfo, RunStatus, RunTag, ViewType

__all__ = ["experiment_json", "public_location", "routes", "run_info_json", "run_json"]

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_BATCH_LOG_REQUEST_SIZE = 1_000_000
SEARCH_MAX_RESULTS = 50_000
MAX_RUNS_GET_METRIC_HISTORY_BULK = 100
MAX_RESULTS_PER_RUN = 2500
INPUTS_TAG = "cairn.inputs.datasets"
"""Run tag holding the dataset inputs a client logged (JSON list), as cairn has no datasets table."""

_INTEGER = re.compile(r"-?[0-9]{1,19}")

Args = dict[str, Any]
Operation = Callable[[ServerContext, Args], dict[str, Any]]
FilteredOperation = Callable[[ServerContext, Args, "Principal | None"], dict[str, Any]]


# -- argument checking ---------------------------------------------------------------------------


def _str(args: Args, name: str, *, required: bool = False, default: str | None = None) -> str | None:
    value = args.get(name)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing value for required parameter '{name}'.")
        return default
    if isinstance(value, list):
        raise invalid(f"Parameter '{name}' must be given once.")
    if not isinstance(value, str):
        raise invalid(f"Invalid value {value!r} for parameter '{name}' supplied: expected a string.")
    return value


def _required(args: Args, name: str) -> str:
    value = _str(args, name, required=True)
    assert value is not None
    return value


def _run_id(args: Args) -> str:
    """``run_id``, or the legacy ``run_uuid`` MLflow clients also send."""
    value = _str(args, "run_id") or _str(args, "run_uuid")
    if value is None:
        raise invalid("Missing value for required parameter 'run_id'.")
    return value


def _int(args: Args, name: str, default: int | None = None, *, low: int | None = None, high: int | None = None) -> Any:
    value = args.get(name)
    if value is None or value == "":
        return default
    number: int
    if isinstance(value, bool):
        raise invalid(f"Invalid value {value!r} for parameter '{name}' supplied: expected an integer.")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and _INTEGER.fullmatch(value.strip()) is not None
    ):
        number = int(value)
    else:
        raise invalid(f"Invalid value {value!r} for parameter '{name}' supplied: expected an integer.")
    if (low is not None and number < low) or (high is not None and number > high):
        raise invalid(f"Invalid value {number} for parameter '{name}': must be between {low} and {high}.")
    return number


def _number(value: Any, what: str) -> float:
    """A double as proto JSON carries it: a number, or ``"NaN"``/``"Infinity"``/``"-Infinity"``."""
    if isinstance(value, bool):
        raise invalid(f"Invalid value {value!r} for {what}: expected a number.")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise invalid(f"Invalid value {value!r} for {what}: expected a number.")


def _list(args: Args, name: str) -> list[Any]:
    value = args.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]  # a query-string key given once
    if not isinstance(value, list):
        raise invalid(f"Invalid value {value!r} for parameter '{name}' supplied: expected an array.")
    return value


def _objects(args: Args, name: str) -> list[dict[str, Any]]:
    items = _list(args, name)
    for item in items:
        if not isinstance(item, dict):
            raise invalid(f"Invalid value {item!r} in '{name}': expected an object.")
    return items


def _view_type(args: Args, name: str) -> ViewType:
    value = args.get(name)
    if value is None or value == "":
        return ViewType.ACTIVE_ONLY
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return ViewType(value)
        except ValueError:
            pass
    if isinstance(value, str):
        if value.isdigit():
            return _view_type({name: int(value)}, name)
        if value.upper() in ViewType.__members__:
            return ViewType[value.upper()]
    raise invalid(f"Invalid value {value!r} for parameter '{name}': expected ACTIVE_ONLY, DELETED_ONLY or ALL.")


def _key_values(items: list[dict[str, Any]], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, value = item.get("key"), item.get("value", "")
        if not isinstance(key, str):
            raise invalid(f"Invalid {what} {item!r}: 'key' must be a string.")
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise invalid(f"Invalid {what} {item!r}: 'value' must be a string.")
        pairs.append((key, str(value)))
    return pairs


def _offset_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid(f"Invalid page token {token!r}.") from None
    if not isinstance(offset, int) or offset < 0:
        raise invalid(f"Invalid page token {token!r}.")
    return offset


def _make_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


# -- JSON shapes ---------------------------------------------------------------------------------


def _double(value: float) -> float | str:
    """Proto JSON for a double: non-finite values as ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


def _stored_location(ctx: ServerContext, location: str | None) -> str | None:
    """A client-requested experiment location as the store records it.

    ``mlflow-artifacts:/x`` maps under the artifact root; remote URLs (``s3://``...) are kept; a plain
    path or ``file:`` URI is refused: a remote client must not choose where the server host writes.
    """
    if not location:
        return None
    if location.startswith("mlflow-artifacts:"):
        if not ctx.serve_artifacts:
            raise invalid("mlflow-artifacts: locations need a server started with --serve-artifacts.")
        relative = location[len("mlflow-artifacts:") :].lstrip("/")
        if any(part in ("", ".", "..") for part in relative.split("/")):
            raise invalid(f"Invalid artifact location {location!r}.")
        return f"{ctx.artifact_root.rstrip('/')}/{relative}"
    scheme, sep, _ = location.partition("://")
    if not sep or scheme.lower() == "file" or len(scheme) < 2:
        raise invalid(
            f"Artifact location {location!r} is a path on the server's disk; give a URL such as s3://... "
            "or leave it empty for the server's artifact root."
        )
    return location


def experiment_json(ctx: ServerContext, experiment: Experiment) -> dict[str, Any]:
    body: dict[str, Any] = {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "artifact_location": public_location(ctx, experiment.artifact_location),
        "lifecycle_stage": experiment.lifecycle_stage.value,
        "tags": _tags(experiment.tags),
    }
    if experiment.creation_time is not None:
        body["creation_time"] = experiment.creation_time
    if experiment.last_update_time is not None:
        body["last_update_time"] = experiment.last_update_time
    return body


def run_info_json(ctx: ServerContext, info: RunInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run_id": info.run_id,
        "run_uuid": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "user_id": info.user_id,
        "status": info.status.value,
        "start_time": info.start_time,
        "artifact_uri": public_location(ctx, info.artifact_uri),
        "lifecycle_stage": info.lifecycle_stage.value,
    }
    if info.end_time is not None:
        body["end_time"] = info.end_time
    return body


def _metric_json(metric: Metric) -> dict[str, Any]:
    return {"key": metric.key, "value": _double(metric.value), "timestamp": metric.timestamp, "step": metric.step}


def run_json(ctx: ServerContext, run: Run, latest: dict[str, Metric] | None = None) -> dict[str, Any]:
    """A run as MLflow shows it; ``latest`` gives each metric's step and timestamp when known."""
    metrics = []
    for key, value in run.data.metrics.items():
        point = (latest or {}).get(key)
        metrics.append(_metric_json(point) if point is not None else {"key": key, "value": _double(value)})
    tags = dict(run.data.tags)
    inputs_text = tags.pop(INPUTS_TAG, None)
    return {
        "info": run_info_json(ctx, run.info),
        "data": {
            "metrics": metrics,
            "params": [{"key": k, "value": v} for k, v in run.data.params.items()],
            "tags": _tags(tags),
        },
        "inputs": {"dataset_inputs": _stored_inputs(inputs_text)},
        "outputs": {"model_outputs": _model_outputs(tags)},
    }


LOGGED_MODEL_TAG_PREFIX = "cairn.logged-model."
"""Run tags recording MLflow 3 logged models (``server/logged_models.py``: ``RECORD_TAG_PREFIX``)."""


def _model_outputs(tags: dict[str, str]) -> list[dict[str, Any]]:
    """The run's logged models as MLflow's ``RunOutputs.model_outputs`` (``{"model_id", "step"}``); the
    step is the record's ``step`` when it has one, else 0."""
    outputs = []
    for key, value in tags.items():
        if not key.startswith(LOGGED_MODEL_TAG_PREFIX):
            continue
        try:
            record = json.loads(value)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("deleted"):
            continue
        step = record.get("step", 0)
        outputs.append({"model_id": key[len(LOGGED_MODEL_TAG_PREFIX) :], "step": step if isinstance(step, int) else 0})
    return outputs


def _stored_inputs(text: str | None) -> list[dict[str, Any]]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


# -- experiments ---------------------------------------------------------------------------------


def create_experiment(ctx: ServerContext, args: Args) -> dict[str, Any]:
    name = validation.experiment_name(_required(args, "name"))
    location = _stored_location(ctx, _str(args, "artifact_location"))
    tags = dict(_key_values(_objects(args, "tags"), "experiment tag"))
    if ctx.client.get_experiment_by_name(name) is not None:
        raise ResourceAlreadyExists(f"Experiment(name={name}) already exists.")
    return {"experiment_id": ctx.client.create_experiment(name, location, tags)}


def get_experiment(ctx: ServerContext, args: Args) -> dict[str, Any]:
    experiment = ctx.client.get_experiment(_required(args, "experiment_id"))
    return {"experiment": experiment_json(ctx, experiment)}


def get_experiment_by_name(ctx: ServerContext, args: Args) -> dict[str, Any]:
    name = _required(args, "experiment_name")
    experiment = ctx.client.get_experiment_by_name(name)
    if experiment is None:
        raise NotFound(f"Could not find experiment with name '{name}'")
    return {"experiment": experiment_json(ctx, experiment)}


_EXPERIMENT_ATTRIBUTES = ("name", "experiment_id", "creation_time", "last_update_time")
_EXPERIMENT_NUMERIC = ("creation_time", "last_update_time")
_EXPERIMENT_DEFAULT_ORDER = ["creation_time DESC", "experiment_id ASC"]
_CLAUSE = re.compile(
    r"\s*(?:(?P<entity>attributes?|tags?)\.)?(?P<key>`[^`]+`|\"[^\"]+\"|[\w][\w.:/-]*)"
    r"\s*(?P<op>is\s+not\s+null\b|is\s+null\b|not\s+in\b|in\b|ilike\b|like\b|!=|<=|>=|=|<|>)",
    re.IGNORECASE,
)
_VALUE = re.compile(
    r"\s*(?:'(?P<single>(?:[^'\\]|\\.|'')*)'|\"(?P<double>(?:[^\"\\]|\\.|\"\")*)\""
    r"|(?P<number>[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|\((?P<list>[^)]*)\))"
)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_LIST_ITEM = re.compile(r"\s*(?:'((?:[^'\\]|\\.|'')*)'|\"((?:[^\"\\]|\\.|\"\")*)\")\s*(,|$)")
_ORDER = re.compile(
    r"\s*(?:(?P<entity>attributes?|tags?)\.)?(?P<key>`[^`]+`|\"[^\"]+\"|[\w][\w.:/-]*)\s*(?P<dir>asc|desc)?\s*$",
    re.IGNORECASE,
)


def _unquote(text: str, quote: str) -> str:
    return text.replace(quote * 2, quote).replace("\\" + quote, quote).replace("\\\\", "\\")


def _identifier(entity: str | None, key: str, valid: tuple[str, ...]) -> tuple[str, str]:
    key = key[1:-1] if key[:1] in '`"' else key
    kind = "tag" if entity and entity.lower().startswith("tag") else "attribute"
    if kind == "attribute" and key not in valid:
        raise invalid(f"Invalid attribute key '{key}' specified. Valid keys are '{set(valid)}'")
    return kind, key


def _experiment_filter(text: str | None) -> list[tuple[str, str, str, Any]]:
    """MLflow's experiment filter: ``name``, ``experiment_id``, ``creation_time``, ``last_update_time`` and
    ``tags.<key>`` comparisons joined by AND (``SearchExperimentsUtils``)."""
    clauses: list[tuple[str, str, str, Any]] = []
    if not text or not text.strip():
        return clauses
    pos = 0
    while True:
        found = _CLAUSE.match(text, pos)
        if found is None:
            raise invalid(f"Invalid clause(s) in filter string: {text[pos:].strip()!r}")
        kind, key = _identifier(found["entity"], found["key"], _EXPERIMENT_ATTRIBUTES)
        op = " ".join(found["op"].upper().split())
        pos = found.end()
        value: Any = None
        is_number = False
        if op not in ("IS NULL", "IS NOT NULL"):
            literal = _VALUE.match(text, pos)
            if literal is None:
                raise invalid(f"Invalid value in filter string {text!r} at {text[pos:].strip()!r}")
            pos = literal.end()
            if literal["list"] is not None:
                value = tuple(
                    _unquote(m[1], "'") if m[1] is not None else _unquote(m[2], '"')
                    for m in _LIST_ITEM.finditer(literal["list"])
                )
            elif literal["number"] is not None:
                value, is_number = literal["number"], True
            elif literal["single"] is not None:
                value = _unquote(literal["single"], "'")
            else:
                value = _unquote(literal["double"], '"')
        clauses.append(_checked_clause(kind, key, op, value, literal_is_number=is_number))
        if text[pos:].strip() == "":
            return clauses
        joined = _AND.match(text, pos)
        if joined is None:
            raise invalid(f"Invalid clause(s) in filter string: {text[pos:].strip()!r} (join comparisons with AND)")
        pos = joined.end()


def _checked_clause(kind: str, key: str, op: str, value: Any, *, literal_is_number: bool) -> tuple[str, str, str, Any]:
    if kind == "tag":
        if op not in ("=", "!=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"):
            raise invalid(f"Invalid comparator for tag: {op}")
        if op not in ("IS NULL", "IS NOT NULL") and (not isinstance(value, str) or literal_is_number):
            raise invalid(f"Expected a quoted string value for tag '{key}'")
        return kind, key, op, value
    if op in ("IS NULL", "IS NOT NULL"):
        raise invalid(f"IS NULL / IS NOT NULL is only supported for tags, not for attribute '{key}'")
    if key == "experiment_id":
        if op not in ("=", "!=", "IN", "NOT IN"):
            raise invalid(f"Invalid comparator for experiment_id: {op}")
        return kind, key, op, value
    if key in _EXPERIMENT_NUMERIC:
        if op not in ("=", "!=", "<", "<=", ">", ">="):
            raise invalid(f"Invalid comparator for numeric attribute: {op}")
        if not literal_is_number or _INTEGER.fullmatch(str(value)) is None:
            raise invalid(f"Invalid value for numeric attribute '{key}': {value!r}")
        return kind, key, op, int(value)
    if op not in ("=", "!=", "LIKE", "ILIKE") or not isinstance(value, str) or literal_is_number:
        raise invalid(f"Invalid comparator or value for string attribute '{key}': {op} {value!r}")
    return kind, key, op, value


def _like(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    parts = []
    escaped = False
    for char in pattern:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL | (0 if case_sensitive else re.IGNORECASE))


def _compare(lhs: Any, op: str, rhs: Any) -> bool:
    if lhs is None:
        return False
    if op in ("LIKE", "ILIKE"):
        return _like(rhs, op == "LIKE").fullmatch(lhs) is not None
    if op in ("IN", "NOT IN"):
        return (lhs in rhs) == (op == "IN")
    if op == "=":
        return bool(lhs == rhs)
    if op == "!=":
        return bool(lhs != rhs)
    if op == "<":
        return bool(lhs < rhs)
    if op == "<=":
        return bool(lhs <= rhs)
    if op == ">":
        return bool(lhs > rhs)
    return bool(lhs >= rhs)


def _experiment_matches(experiment: Experiment, clauses: list[tuple[str, str, str, Any]]) -> bool:
    for kind, key, op, value in clauses:
        if kind == "tag":
            if op in ("IS NULL", "IS NOT NULL"):
                if (key in experiment.tags) != (op == "IS NOT NULL"):
                    return False
            elif key not in experiment.tags or not _compare(experiment.tags[key], op, value):
                return False
        elif not _compare(getattr(experiment, key), op, value):
            return False
    return True


def _experiment_order(clauses: list[str]) -> list[tuple[str, bool]]:
    order: list[tuple[str, bool]] = []
    for clause in clauses or _EXPERIMENT_DEFAULT_ORDER:
        found = _ORDER.match(clause)
        if found is None:
            raise invalid(f"Invalid order_by clause '{clause}'.")
        kind, key = _identifier(found["entity"], found["key"], _EXPERIMENT_ATTRIBUTES)
        if kind != "attribute":
            raise invalid(f"Invalid order_by entity: {kind}")
        order.append((key, (found["dir"] or "ASC").upper() == "ASC"))
    if not any(key == "experiment_id" for key, _ in order):
        order.append(("experiment_id", False))  # MLflow's tie-breaker
    return order


def _sorted_experiments(found: list[Experiment], order: list[tuple[str, bool]]) -> list[Experiment]:
    """Stable sorts from the last key to the first; missing values last in either direction."""
    result = list(found)
    for key, ascending in reversed(order):

        def value(e: Experiment, key: str = key) -> Any:
            raw = getattr(e, key)
            return int(raw) if key == "experiment_id" and str(raw).isdigit() else raw

        present = [e for e in result if value(e) is not None]
        missing = [e for e in result if value(e) is None]
        result = sorted(present, key=value, reverse=not ascending) + missing
    return result


def search_experiments(ctx: ServerContext, args: Args, principal: Principal | None = None) -> dict[str, Any]:
    """MLflow's experiment search: filter on name, id, times and tags; order_by attributes (default
    ``creation_time DESC, experiment_id ASC``); offset page tokens. With ``principal`` (auth on), only the
    experiments it may read, filtered before paging."""
    max_results = _int(args, "max_results", 1000, low=1, high=SEARCH_MAX_RESULTS)
    offset = _offset_token(_str(args, "page_token"))
    view = _view_type(args, "view_type")
    order_by = _list(args, "order_by")
    if not all(isinstance(o, str) for o in order_by):
        raise invalid("order_by must be a list of strings.")
    clauses = _experiment_filter(_str(args, "filter"))
    order = _experiment_order(order_by)
    # The store filters by view (and by a case-sensitive name LIKE); the rest is done here.
    name_like = next((v for kind, key, op, v in clauses if (kind, key, op) == ("attribute", "name", "LIKE")), None)
    candidates = ctx.client.store.search_experiments(view, SEARCH_MAX_RESULTS, name_like=name_like)
    visible = readable_experiments(principal)
    if visible is not None:
        candidates = [e for e in candidates if str(e.experiment_id) in visible]
    found = _sorted_experiments([e for e in candidates if _experiment_matches(e, clauses)], order)
    page = found[offset : offset + max_results]
    body: dict[str, Any] = {"experiments": [experiment_json(ctx, e) for e in page]}
    if len(found) > offset + max_results:
        body["next_page_token"] = _make_token(offset + max_results)
    return body


def update_experiment(ctx: ServerContext, args: Args) -> dict[str, Any]:
    experiment_id = _required(args, "experiment_id")
    new_name = _str(args, "new_name")
    if new_name:
        ctx.client.rename_experiment(experiment_id, validation.experiment_name(new_name))
    else:
        ctx.client.get_experiment(experiment_id)
    return {}


def delete_experiment(ctx: ServerContext, args: Args) -> dict[str, Any]:
    ctx.client.delete_experiment(_required(args, "experiment_id"))
    return {}


def restore_experiment(ctx: ServerContext, args: Args) -> dict[str, Any]:
    ctx.client.restore_experiment(_required(args, "experiment_id"))
    return {}


def set_experiment_tag(ctx: ServerContext, args: Args) -> dict[str, Any]:
    key = _required(args, "key")
    value = _str(args, "value", default="") or ""
    ctx.client.set_experiment_tag(_required(args, "experiment_id"), key, value)
    return {}


# -- runs ----------------------------------------------------------------------------------------


def create_run(ctx: ServerContext, args: Args) -> dict[str, Any]:
    experiment_id = _str(args, "experiment_id", default="0") or "0"
    tags = dict(_key_values(_objects(args, "tags"), "run tag"))
    for key, value in tags.items():
        validation.validate_key(key, "tag")
        validation.tag_value(value, key)
    name = _str(args, "run_name") or tags.get(system_tags.RUN_NAME) or context.generate_run_name()
    name = validation.run_name(name)
    tags[system_tags.RUN_NAME] = name
    user = _str(args, "user_id") or tags.get(system_tags.USER) or ""
    start_time = _int(args, "start_time", None, low=0)
    run = ctx.client.store.create_run(
        experiment_id,
        user_id=user,
        start_time=start_time if start_time is not None else _now(),
        run_name=name,
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    return {"run": run_json(ctx, run)}


def _now() -> int:
    from cairn.tracking.client import now_ms

    return now_ms()


def get_run(ctx: ServerContext, args: Args) -> dict[str, Any]:
    run = ctx.client.get_run(_run_id(args))
    latest = ctx.client.store.latest_metrics([run.info.run_id])
    return {"run": run_json(ctx, run, latest.get(run.info.run_id))}


def update_run(ctx: ServerContext, args: Args) -> dict[str, Any]:
    run_id = _run_id(args)
    status_text = _str(args, "status")
    status = RunStatus.parse(status_text) if status_text else None
    end_time = _int(args, "end_time", None, low=0)
    name = _str(args, "run_name")
    info = ctx.client.store.update_run_info(
        run_id,
        status=status,
        end_time=end_time if end_time is not None else (_now() if status and status.is_terminated else None),
        run_name=validation.run_name(name) if name else None,
    )
    return {"run_info": run_info_json(ctx, info)}


def delete_run(ctx: ServerContext, args: Args) -> dict[str, Any]:
    ctx.client.store.delete_run(_run_id(args))
    return {}


def restore_run(ctx: ServerContext, args: Args) -> dict[str, Any]:
    ctx.client.store.restore_run(_run_id(args))
    return {}


def search_runs(ctx: ServerContext, args: Args, principal: Principal | None = None) -> dict[str, Any]:
    """MLflow's run search; with ``principal`` (auth on), only in the requested experiments it may read
    (as MLflow's auth does, the others are left out rather than refused)."""
    experiment_ids = [str(e) for e in _list(args, "experiment_ids")]
    visible = readable_experiments(principal)
    if visible is not None:
        experiment_ids = [e for e in experiment_ids if e in visible]
        if not experiment_ids:
            return {"runs": []}
    max_results = _int(args, "max_results", 1000, low=1, high=SEARCH_MAX_RESULTS)
    order_by = _list(args, "order_by")
    if not all(isinstance(o, str) for o in order_by):
        raise invalid("order_by must be a list of strings.")
    page = ctx.client.search_runs(
        experiment_ids,
        _str(args, "filter") or "",
        _view_type(args, "run_view_type"),
        max_results,
        order_by or None,
        _str(args, "page_token"),
    )
    latest = ctx.client.store.latest_metrics([run.info.run_id for run in page.items]) if page.items else {}
    body: dict[str, Any] = {"runs": [run_json(ctx, run, latest.get(run.info.run_id)) for run in page.items]}
    if page.next_page_token:
        body["next_page_token"] = page.next_page_token
    return body


# -- run data ------------------------------------------------------------------------------------


def _metric(item: dict[str, Any], default_time: int) -> Metric:
    key, value, timestamp, step = item.get("key"), item.get("value"), item.get("timestamp"), item.get("step")
    if type(value) is float and type(timestamp) is int and type(step) is int and type(key) is str:
        # what cairn's client sends: the checks below, for these types, in fewer steps
        return Metric(
            validation.validate_key(key),
            value,
            validation.metric_timestamp(timestamp, key),
            validation.metric_step(step, key),
        )
    return _any_metric(item, default_time)


def _any_metric(item: dict[str, Any], default_time: int) -> Metric:
    key = item.get("key")
    if not isinstance(key, str):
        raise invalid(f"Invalid metric {item!r}: 'key' must be a string.")
    validation.validate_key(key)
    if "value" not in item:
        raise invalid(f"Invalid metric {item!r}: missing 'value'.")
    timestamp = _int(item, "timestamp", default_time)
    step = _int(item, "step", 0)
    return Metric(
        key,
        _number(item["value"], f"metric {key!r}"),
        validation.metric_timestamp(timestamp, key),
        validation.metric_step(step, key),
    )


GROUP_COMMIT_MAX_METRICS = 200
"""Batches up to this size may share a transaction; a larger one pays for its own (and keeps the database's
work on concurrent batches in parallel)."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 256


def log_batch(
    ctx: ServerContext,
    args: Args,
    idempotency_key: str | None = None,
    group: GroupCommit | None = None,
    body: bytes | None = None,
) -> dict[str, Any]:
    """MLflow's log-batch; with an ``Idempotency-Key`` header the batch is written at most once per key
    (the key is recorded in the batch's transaction, so a client's retry after a lost response, sent to
    this or another server process on the same database, succeeds without writing again). A key reused
    with a different body (``body``: the request's bytes, else ``args`` re-encoded) is INVALID_PARAMETER_VALUE.
    With ``group``, a batch of metrics only may share its transaction with others arriving at the same time
    (see :mod:`cairn.server.group_commit`)."""
    run_id = _run_id(args)
    metric_items = _objects(args, "metrics")
    param_items = _objects(args, "params")
    tag_items = _objects(args, "tags")
    for name, items, limit in (
        ("metrics", metric_items, MAX_METRICS_PER_BATCH),
        ("params", param_items, MAX_PARAMS_TAGS_PER_BATCH),
        ("tags", tag_items, MAX_PARAMS_TAGS_PER_BATCH),
    ):
        if len(items) > limit:
            raise invalid(f"A batch logging request can contain at most {limit} {name}. Got {len(items)} {name}.")
    now = _now()
    metrics = [_metric(item, now) for item in metric_items]
    params = [Param(k, v) for k, v in _key_values(param_items, "param")]
    tags = [RunTag(k, v) for k, v in _key_values(tag_items, "tag")]
    if group is not None and not params and not tags and len(metrics) <= GROUP_COMMIT_MAX_METRICS:
        fingerprint = "" if idempotency_key is None else _fingerprint(args, body)
        group.write(KeyedMetrics(run_id, metrics, idempotency_key, fingerprint))
    elif idempotency_key is None:
        ctx.client.log_batch(run_id, metrics, params, tags, synchronous=True)
    else:
        # The client's checks, then the store's keyed write (the client has no key parameter).
        params = [
            Param(validation.validate_key(p.key, "param"), validation.param_value(p.value, p.key)) for p in params
        ]
        tags = [RunTag(validation.validate_key(t.key, "tag"), validation.tag_value(t.value, t.key)) for t in tags]
        ctx.client.store.log_batch(
            run_id, metrics, params, tags, idempotency_key=idempotency_key, fingerprint=_fingerprint(args, body)
        )
    _follow_run_name(ctx, run_id, tags)
    return {}


def _fingerprint(args: Args, body: bytes | None) -> str:
    """What a replayed key must match: a hash of the request's bytes.

    cairn's client sends the same bytes for a key every time (a retry re-sends them; a spool replay encodes
    the same points the same way), so a body that differs in any byte, key order and spacing included, is
    another request. Without the bytes, the hash of ``args`` as compact JSON in key order.
    """
    if body is None:
        text = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        body = text.encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _log_batch_request(ctx: ServerContext, body: bytes, key: str | None, group: GroupCommit | None) -> dict[str, Any]:
    return log_batch(ctx, json_object(body), key, group, body)


def _log_batch_endpoint(ctx: ServerContext) -> Callable[[Request], Any]:
    store = ctx.client.store
    group = GroupCommit(store) if isinstance(store, SqlTrackingStore) else None

    async def handler(request: Request) -> Response:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise invalid(f"{IDEMPOTENCY_HEADER} must have 1 to {MAX_IDEMPOTENCY_KEY} characters")
        raw = await read_body(request, max_bytes=MAX_BATCH_LOG_REQUEST_SIZE)
        return JSONResponse(await run_in_threadpool(_log_batch_request, ctx, raw, key, group))

    return handler


def _follow_run_name(ctx: ServerContext, run_id: str, tags: list[RunTag]) -> None:
    """Setting ``mlflow.runName`` renames the run, as in MLflow."""
    for tag in tags:
        if tag.key == system_tags.RUN_NAME:
            ctx.client.store.update_run_info(run_id, run_name=validation.run_name(tag.value))


def log_metric(ctx: ServerContext, args: Args) -> dict[str, Any]:
    run_id = _run_id(args)
    metric = _metric(args, _now())
    ctx.client.log_batch(run_id, [metric], synchronous=True)
    return {}


def log_param(ctx: ServerContext, args: Args) -> dict[str, Any]:
    run_id = _run_id(args)
    [(key, value)] = _key_values([{"key": _required(args, "key"), "value": args.get("value", "")}], "param")
    ctx.client.log_param(run_id, key, value)
    return {}


def set_tag(ctx: ServerContext, args: Args) -> dict[str, Any]:
    run_id = _run_id(args)
    [(key, value)] = _key_values([{"key": _required(args, "key"), "value": args.get("value", "")}], "tag")
    ctx.client.set_tag(run_id, key, value)
    _follow_run_name(ctx, run_id, [RunTag(key, value)])
    return {}


def delete_tag(ctx: ServerContext, args: Args) -> dict[str, Any]:
    ctx.client.delete_tag(_run_id(args), _required(args, "key"))
    return {}


_DATASET_FIELDS = ("name", "digest", "source_type", "source", "schema", "profile")


def log_inputs(ctx: ServerContext, args: Args) -> dict[str, Any]:
    """Dataset inputs are kept as a JSON list in the run tag ``cairn.inputs.datasets`` (deduplicated by
    name, digest and context); model inputs (MLflow 3 logged models) are accepted and not stored."""
    run_id = _run_id(args)
    received = []
    for item in _objects(args, "datasets"):
        dataset = item.get("dataset")
        if not isinstance(dataset, dict):
            raise invalid(f"Invalid dataset input {item!r}: 'dataset' must be an object.")
        kept = {f: str(dataset[f]) for f in _DATASET_FIELDS if dataset.get(f) is not None}
        if "name" not in kept or "digest" not in kept:
            raise invalid(f"Invalid dataset input {item!r}: 'name' and 'digest' are required.")
        tags = dict(_key_values(_objects(item, "tags"), "dataset tag"))
        received.append({"tags": _tags(tags), "dataset": kept})
    _objects(args, "models")
    if not received:
        ctx.client.get_run(run_id)
        return {}
    existing = _stored_inputs(ctx.client.get_run(run_id).data.tags.get(INPUTS_TAG))

    def identity(entry: dict[str, Any]) -> str:
        return json.dumps([entry["dataset"].get("name"), entry["dataset"].get("digest"), entry.get("tags")])

    seen = {identity(e) for e in existing if isinstance(e, dict) and isinstance(e.get("dataset"), dict)}
    merged = existing + [e for e in received if identity(e) not in seen]
    text = json.dumps(merged, separators=(",", ":"))
    if len(text) > validation.MAX_TAG_VALUE_LENGTH:  # keep what fits: drop schema/profile, newest last
        for entry in merged:
            entry["dataset"].pop("profile", None)
            entry["dataset"].pop("schema", None)
        text = json.dumps(merged, separators=(",", ":"))
    if len(text) > validation.MAX_TAG_VALUE_LENGTH:
        raise invalid(
            f"The run's dataset inputs exceed what cairn can record ({validation.MAX_TAG_VALUE_LENGTH} chars)."
        )
    ctx.client.set_tag(run_id, INPUTS_TAG, text)
    return {}


# -- metric history ------------------------------------------------------------------------------


def get_metric_history(ctx: ServerContext, args: Args) -> dict[str, Any]:
    run_id = _run_id(args)
    key = _required(args, "metric_key")
    max_results = _int(args, "max_results", None, low=1)
    offset = _offset_token(_str(args, "page_token"))
    history = ctx.client.get_metric_history(run_id, key)
    end = len(history) if max_results is None else offset + max_results
    body: dict[str, Any] = {"metrics": [_metric_json(m) for m in history[offset:end]]}
    if end < len(history):
        body["next_page_token"] = _make_token(end)
    return body


def _sample_steps(steps: list[int], max_results: int) -> set[int]:
    """At most ``max_results`` steps spread evenly over ``steps`` (sorted), always with the first and last."""
    if len(steps) <= max_results:
        return set(steps)
    if max_results == 1:
        return {steps[-1]}
    stride = (len(steps) - 1) / (max_results - 1)
    return {steps[round(i * stride)] for i in range(max_results)}


def get_metric_history_bulk_interval(ctx: ServerContext, args: Args) -> dict[str, Any]:
    run_ids = [str(r) for r in _list(args, "run_ids")]
    if not run_ids:
        raise invalid("Missing value for required parameter 'run_ids'.")
    if len(run_ids) > MAX_RUNS_GET_METRIC_HISTORY_BULK:
        raise invalid(
            f"GetMetricHistoryBulkInterval request must specify at most {MAX_RUNS_GET_METRIC_HISTORY_BULK} "
            f"run_ids. Received {len(run_ids)} run_ids."
        )
    key = _required(args, "metric_key")
    max_results = _int(args, "max_results", MAX_RESULTS_PER_RUN, low=1, high=MAX_RESULTS_PER_RUN)
    start_step, end_step = _int(args, "start_step"), _int(args, "end_step")
    if (start_step is None) != (end_step is None):
        raise invalid("If either start step or end step are specified, both must be specified.")
    if start_step is not None and start_step > end_step:
        raise invalid(
            f"end_step must be greater than start_step. Found start_step={start_step} and end_step={end_step}."
        )
    out: list[dict[str, Any]] = []
    for run_id in run_ids:
        history = ctx.client.get_metric_history(run_id, key)
        if start_step is not None:
            history = [m for m in history if start_step <= m.step <= end_step]
        steps = _sample_steps(sorted({m.step for m in history}), max_results)
        chosen = sorted((m for m in history if m.step in steps), key=lambda m: (m.step, m.timestamp))
        out.extend({**_metric_json(m), "run_id": run_id} for m in chosen[:max_results])
    return {"metrics": out}


# -- routes --------------------------------------------------------------------------------------


def _filtered_endpoint(ctx: ServerContext, operation: FilteredOperation) -> Callable[[Request], Any]:
    """An endpoint whose answer depends on who asks (searches: only what the user may read)."""

    async def handler(request: Request) -> Response:
        args = await request_args(request)
        body = await run_in_threadpool(operation, ctx, args, principal_of(request))
        return JSONResponse(body)

    return handler


def _endpoint(ctx: ServerContext, operation: Operation, *, max_bytes: int | None = None) -> Callable[[Request], Any]:
    async def handler(request: Request) -> Response:
        if max_bytes is not None:
            args = await request_args(request, max_bytes=max_bytes)
        else:
            args = await request_args(request)
        body = await run_in_threadpool(operation, ctx, args)
        return JSONResponse(body)

    return handler


_ENDPOINTS: list[tuple[str, Operation, list[str]]] = [
    ("experiments/create", create_experiment, ["POST"]),
    ("experiments/get", get_experiment, ["GET"]),
    ("experiments/get-by-name", get_experiment_by_name, ["GET"]),
    ("experiments/update", update_experiment, ["POST"]),
    ("experiments/delete", delete_experiment, ["POST"]),
    ("experiments/restore", restore_experiment, ["POST"]),
    ("experiments/set-experiment-tag", set_experiment_tag, ["POST"]),
    ("runs/create", create_run, ["POST"]),
    ("runs/get", get_run, ["GET"]),
    ("runs/update", update_run, ["POST"]),
    ("runs/delete", delete_run, ["POST"]),
    ("runs/restore", restore_run, ["POST"]),
    ("runs/log-metric", log_metric, ["POST"]),
    ("runs/log-parameter", log_param, ["POST"]),
    ("runs/set-tag", set_tag, ["POST"]),
    ("runs/delete-tag", delete_tag, ["POST"]),
    ("runs/log-inputs", log_inputs, ["POST"]),
    ("metrics/get-history", get_metric_history, ["GET"]),
    ("metrics/get-history-bulk-interval", get_metric_history_bulk_interval, ["GET"]),
]


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The tracking endpoints, under ``/api/2.0/mlflow/`` and ``/ajax-api/2.0/mlflow/``."""
    result: list[BaseRoute] = []
    for path, operation, methods in _ENDPOINTS:
        result += json_route(path, _endpoint(ctx, operation), methods)
    result += json_route("runs/log-batch", _log_batch_endpoint(ctx), ["POST"])
    result += json_route("experiments/search", _filtered_endpoint(ctx, search_experiments), ["GET", "POST"])
    result += json_route("runs/search", _filtered_endpoint(ctx, search_runs), ["POST"])
    return result
