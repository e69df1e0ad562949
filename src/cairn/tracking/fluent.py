"""The fluent API: ``cairn.start_run()``, ``cairn.log_metric()``, ... on an implicit active run.

Semantics follow MLflow: logging without an active run starts one; ``start_run`` inside a run
needs ``nested=True``; ``start_run(run_id=...)`` (or ``CAIRN_RUN_ID``) resumes an existing run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from cairn import background
from cairn.errors import ExperimentNotFound, InvalidArgument, RunNotActive
from cairn.store.base import DEFAULT_EXPERIMENT_ID, MetricPoint
from cairn.tracking import background_errors, config, env, lifecycle, system_tags, validation
from cairn.tracking.client import Client
from cairn.tracking.entities import (
    Experiment,
    FileInfo,
    LifecycleStage,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
    ViewType,
)

if TYPE_CHECKING:
    import pandas

_run_stack: list[ActiveRun] = []
_stack_lock = threading.RLock()
_last_active_run_id: str | None = None
_active_experiment_id: str | None = None
_client: Client | None = None
_client_generation = -1
_end_run_hooks: list[Callable[[str, RunStatus], None]] = []


class ActiveRun(Run):
    """The run returned by :func:`start_run`; a context manager that ends the run on exit.

    Leaving the block normally marks the run FINISHED, through an exception FAILED, through
    KeyboardInterrupt KILLED.
    """

    def __init__(self, run: Run) -> None:
        super().__init__(run.info, run.data)

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            status = RunStatus.FINISHED
        elif issubclass(kind, KeyboardInterrupt):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
        with _stack_lock:
            if any(r.info.run_id == self.info.run_id for r in _run_stack):
                end_run(status, _run_id=self.info.run_id)


def _get_client() -> Client:
    global _client, _client_generation
    if _client is None or _client_generation != config.generation():
        _client = Client()
        _client_generation = config.generation()
    return _client


def set_tracking_uri(uri: str | os.PathLike[str] | None) -> None:
    """Point the fluent API at another store; ``None`` returns to ``CAIRN_TRACKING_URI``/default."""
    global _client, _active_experiment_id
    config.set_tracking_uri(uri)
    _client = None
    _active_experiment_id = None


get_tracking_uri = config.get_tracking_uri


# -- experiments ---------------------------------------------------------------------------------


def set_experiment(experiment_name: str | None = None, experiment_id: str | None = None) -> Experiment:
    """Make an experiment active for later runs, creating it by name if missing."""
    global _active_experiment_id
    if (experiment_name is None) == (experiment_id is None):
        raise InvalidArgument("set_experiment takes exactly one of experiment_name or experiment_id")
    client = _get_client()
    if experiment_id is not None:
        experiment = client.get_experiment(str(experiment_id))
    else:
        assert experiment_name is not None
        found = client.get_experiment_by_name(experiment_name)
        if found is None:
            from cairn.errors import ResourceAlreadyExists

            try:
                client.create_experiment(experiment_name)
            except ResourceAlreadyExists:  # another process created it first
                pass
            found = client.get_experiment_by_name(experiment_name)
            assert found is not None
        experiment = found
    if experiment.lifecycle_stage is LifecycleStage.DELETED:
        raise RunNotActive(
            f"experiment {experiment.name!r} (id {experiment.experiment_id}) is deleted; "
            "restore it with Client().restore_experiment() or pick another name"
        )
    _active_experiment_id = experiment.experiment_id
    return experiment


def create_experiment(name: str, artifact_location: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    return _get_client().create_experiment(name, artifact_location, tags)


def get_experiment(experiment_id: str) -> Experiment:
    return _get_client().get_experiment(experiment_id)


def get_experiment_by_name(name: str) -> Experiment | None:
    return _get_client().get_experiment_by_name(name)


def search_experiments(
    view_type: ViewType = ViewType.ACTIVE_ONLY, max_results: int = 1000, filter_string: str | None = None
) -> list[Experiment]:
    return _get_client().search_experiments(view_type, max_results, filter_string)


def delete_experiment(experiment_id: str) -> None:
    _get_client().delete_experiment(experiment_id)


def _resolve_experiment_id(explicit: str | None) -> str:
    if explicit is not None:
        return str(explicit)
    if _active_experiment_id is not None:
        return _active_experiment_id
    named = env.experiment()  # CAIRN_EXPERIMENT_ID/NAME, else MLFLOW_EXPERIMENT_ID/NAME
    if named is None:
        return DEFAULT_EXPERIMENT_ID
    if named.name.endswith(env.EXPERIMENT_ID):
        return named.value
    return set_experiment(named.value).experiment_id


# -- runs ----------------------------------------------------------------------------------------


def start_run(
    run_id: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    parent_run_id: str | None = None,
) -> ActiveRun:
    """Start a new run, or resume ``run_id`` (also taken from ``CAIRN_RUN_ID``, else ``MLFLOW_RUN_ID``), and make
    it active."""
    global _last_active_run_id
    client = _get_client()
    with _stack_lock:
        if _run_stack and not nested:
            active = _run_stack[-1].info
            raise InvalidArgument(
                f"run {active.run_id} ({active.run_name}) is already active; end it with cairn.end_run() "
                "or start this one with nested=True"
            )
        env_run_id = env.get(env.RUN_ID) if not _run_stack else None  # CAIRN_RUN_ID, else MLFLOW_RUN_ID
        resume_id = run_id or env_run_id
        parent = parent_run_id or (_run_stack[-1].info.run_id if _run_stack else None)
        if resume_id:
            run = _resume(client, resume_id, experiment_id, run_name, tags, description)
        else:
            all_tags = dict(tags or {})
            if parent:
                all_tags[system_tags.PARENT_RUN_ID] = parent
            if description is not None:
                all_tags[system_tags.NOTE] = description
            run = client.create_run(_resolve_experiment_id(experiment_id), tags=all_tags, run_name=run_name)
        active_run = ActiveRun(run)
        _run_stack.append(active_run)
        _last_active_run_id = run.info.run_id
    lifecycle.install(_end_all_runs)
    return active_run


def _resume(
    client: Client,
    run_id: str,
    experiment_id: str | None,
    run_name: str | None,
    tags: Mapping[str, Any] | None,
    description: str | None,
) -> Run:
    run = client.get_run(run_id)
    if run.info.lifecycle_stage is LifecycleStage.DELETED:
        raise RunNotActive(f"run {run_id} is deleted; restore it with Client().restore_run() before resuming it")
    if experiment_id is not None and str(experiment_id) != run.info.experiment_id:
        raise InvalidArgument(f"run {run_id} belongs to experiment {run.info.experiment_id}, not {experiment_id}")
    extra = dict(tags or {})
    if description is not None:
        extra[system_tags.NOTE] = description
    if extra:
        client.log_batch(run_id, tags=[RunTag(k, validation.tag_value(v, k)) for k, v in extra.items()])
    client.store.update_run_info(run_id, status=RunStatus.RUNNING, run_name=run_name)
    return client.get_run(run_id)


def add_end_run_hook(hook: Callable[[str, RunStatus], None]) -> None:
    """Call ``hook(run_id, status)`` whenever a run of the fluent stack ends (``end_run``, leaving its
    ``with`` block, interpreter exit, SIGTERM), while it is still the active run, before it is marked
    terminated. Integrations use it to finish background work (checkpoint uploads, final models).

    A hook that raises does not stop the run from ending: the run is terminated, the remaining hooks
    run, and the first error is raised afterwards. Adding the same hook twice has no effect.
    """
    with _stack_lock:
        if hook not in _end_run_hooks:
            _end_run_hooks.append(hook)


def remove_end_run_hook(hook: Callable[[str, RunStatus], None]) -> None:
    """Forget a hook added by :func:`add_end_run_hook` (no error if absent)."""
    with _stack_lock:
        if hook in _end_run_hooks:
            _end_run_hooks.remove(hook)


def end_run(status: str | RunStatus = "FINISHED", *, _run_id: str | None = None) -> None:
    """End the active run: its end-run hooks, then the background service's ordered drain (system
    metrics, autolog tasks, checkpoint writes, metric points, uploads, fsync), then its status.

    Raises:
        CairnError: an end-run hook or background work (a checkpoint write, an fsync, a metric point the
            store refused) failed; the run ended anyway.
    """
    errors: list[BaseException] = []
    with _stack_lock:
        if not _run_stack:
            return
        if _run_id is not None:
            while _run_stack and _run_stack[-1].info.run_id != _run_id:  # children left open by the user
                _end_top(RunStatus.parse(status), errors)
        if _run_stack:
            _end_top(RunStatus.parse(status), errors)
    if errors:
        raise errors[0]


def _end_top(status: RunStatus, errors: list[BaseException]) -> None:
    run_id = _run_stack[-1].info.run_id
    for hook in list(_end_run_hooks):
        try:
            hook(run_id, status)
        except Exception as exc:  # raised once the run is terminated
            errors.append(exc)
    background.drain(run_id)
    try:
        background.raise_errors()
    except Exception as exc:  # raised once the run is terminated
        errors.append(exc)
    run = _run_stack.pop()
    _get_client().set_terminated(run.info.run_id, status)


def _end_all_runs(status: RunStatus) -> None:
    errors: list[BaseException] = []
    with _stack_lock:
        while _run_stack:
            _end_top(status, errors)
    if errors:
        raise errors[0]


def reset() -> None:
    """Forget the run stack, active experiment and client without ending runs (for tests)."""
    global _client, _active_experiment_id, _last_active_run_id
    with _stack_lock:
        _run_stack.clear()
        _client = None
        _active_experiment_id = None
        _last_active_run_id = None
    background.reset()


def active_run() -> ActiveRun | None:
    return _run_stack[-1] if _run_stack else None


def last_active_run() -> Run | None:
    """The active run, else the most recently ended one (fresh from the store)."""
    if _run_stack:
        return _get_client().get_run(_run_stack[-1].info.run_id)
    return _get_client().get_run(_last_active_run_id) if _last_active_run_id else None


def _active_run_id() -> str:
    if _run_stack:
        return _run_stack[-1].info.run_id
    return start_run().info.run_id


def get_run(run_id: str) -> Run:
    return _get_client().get_run(run_id)


def delete_run(run_id: str) -> None:
    _get_client().delete_run(run_id)


# -- logging -------------------------------------------------------------------------------------


def log_metric(
    key: str,
    value: Any,
    step: int | None = None,
    timestamp: int | None = None,
    synchronous: bool = False,
    run_id: str | None = None,
) -> None:
    """Log one metric point to the active run (queued; ``synchronous=True`` writes through)."""
    _get_client().log_metric(run_id or _active_run_id(), key, value, timestamp, step, synchronous)


def log_metrics(
    metrics: Mapping[str, Any],
    step: int | None = None,
    timestamp: int | None = None,
    synchronous: bool = False,
    run_id: str | None = None,
) -> None:
    client = _get_client()
    rid = run_id or _active_run_id()
    first_key = next(iter(metrics), "")
    ts = validation.metric_timestamp(timestamp, first_key) if timestamp is not None else time.time_ns() // 1_000_000
    clean_step = validation.metric_step(step, first_key) if step is not None else 0
    points = [
        MetricPoint(rid, validation.validate_key(k), validation.metric_value(v, k), ts, clean_step)
        for k, v in metrics.items()
    ]
    if synchronous:
        client.store.log_metric_points(points)
    else:
        batcher = config.get_batcher(client.store)
        for point in points:
            batcher.add(point)
    if background_errors.pending:  # a checkpoint write failed: say so now (these points are already queued)
        background_errors.raise_pending()


def log_param(key: str, value: Any, synchronous: bool = True) -> Any:
    return _get_client().log_param(_active_run_id(), key, value)


def log_params(params: Mapping[str, Any], synchronous: bool = True, run_id: str | None = None) -> None:
    _get_client().log_batch(run_id or _active_run_id(), params=[Param(k, v) for k, v in params.items()])


def set_tag(key: str, value: Any, synchronous: bool = True) -> None:
    _get_client().set_tag(_active_run_id(), key, value)


def set_tags(tags: Mapping[str, Any], synchronous: bool = True) -> None:
    _get_client().log_batch(_active_run_id(), tags=[RunTag(k, v) for k, v in tags.items()])


def delete_tag(key: str) -> None:
    _get_client().delete_tag(_active_run_id(), key)


def flush() -> None:
    """Write every queued metric point of this process now; raise a failure of background work not raised yet."""
    for batcher in config.all_batchers():
        batcher.flush()
    background.raise_errors()


# -- artifacts -----------------------------------------------------------------------------------


def log_artifact(
    local_path: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None
) -> None:
    _get_client().log_artifact(run_id or _active_run_id(), local_path, artifact_path)


def log_artifacts(
    local_dir: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None
) -> None:
    _get_client().log_artifacts(run_id or _active_run_id(), local_dir, artifact_path)


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    _get_client().log_text(run_id or _active_run_id(), text, artifact_file)


def log_dict(dictionary: Any, artifact_file: str, run_id: str | None = None) -> None:
    _get_client().log_dict(run_id or _active_run_id(), dictionary, artifact_file)


def log_figure(figure: Any, artifact_file: str, *, run_id: str | None = None) -> None:
    _get_client().log_figure(run_id or _active_run_id(), figure, artifact_file)


def log_image(
    image: Any,
    artifact_file: str | None = None,
    *,
    key: str | None = None,
    step: int | None = None,
    run_id: str | None = None,
) -> None:
    _get_client().log_image(run_id or _active_run_id(), image, artifact_file, key=key, step=step)


def get_artifact_uri(artifact_path: str | None = None) -> str:
    """URI of the active run's artifact root, or of a path inside it."""
    client = _get_client()
    store = client.artifact_store(_active_run_id())
    return store.uri_for(artifact_path) if artifact_path else store.root


def list_artifacts(path: str | None = None, run_id: str | None = None) -> list[FileInfo]:
    return _get_client().list_artifacts(run_id or _active_run_id(), path)


def download_artifacts(
    artifact_path: str = "", run_id: str | None = None, dst_path: str | os.PathLike[str] | None = None
) -> str:
    """Download an artifact of ``run_id`` (default: the active run) and return its local path."""
    rid = run_id or (_run_stack[-1].info.run_id if _run_stack else None)
    if rid is None:
        raise InvalidArgument("download_artifacts needs run_id when no run is active")
    return _get_client().download_artifacts(rid, artifact_path, dst_path)


# -- search --------------------------------------------------------------------------------------


def search_runs(
    experiment_ids: Sequence[str] | None = None,
    filter_string: str = "",
    run_view_type: ViewType = ViewType.ACTIVE_ONLY,
    max_results: int = 100_000,
    order_by: Sequence[str] | None = None,
    output_format: Literal["pandas", "list"] = "pandas",
    search_all_experiments: bool = False,
    experiment_names: Sequence[str] | None = None,
) -> pandas.DataFrame | list[Run]:
    """Runs matching an MLflow filter string, as a DataFrame (MLflow's columns) or a list."""
    client = _get_client()
    ids = [str(e) for e in experiment_ids or []]
    for name in experiment_names or []:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ExperimentNotFound(f"no experiment named {name!r}")
        ids.append(experiment.experiment_id)
    if not ids:
        if search_all_experiments:
            ids = [e.experiment_id for e in client.search_experiments(ViewType.ALL, 50_000)]
        else:
            ids = [_resolve_experiment_id(None)]
    runs: list[Run] = []
    token: str | None = None
    while len(runs) < max_results:
        page = client.search_runs(
            ids, filter_string, run_view_type, min(50_000, max_results - len(runs)), order_by, token
        )
        runs.extend(page.items)
        token = page.next_page_token
        if not token:
            break
    if output_format == "list":
        return runs
    if output_format != "pandas":
        raise InvalidArgument(f"output_format must be 'pandas' or 'list', got {output_format!r}")
    return runs_to_frame(runs)


def runs_to_frame(runs: Sequence[Run]) -> pandas.DataFrame:
    """MLflow's search_runs frame: run_id, experiment_id, status, ..., metrics.*, params.*, tags.*."""
    import pandas as pd

    rows = []
    for run in runs:
        info = run.info
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "experiment_id": info.experiment_id,
            "status": info.status.value,
            "artifact_uri": info.artifact_uri,
            "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else pd.NaT,
            "run_name": info.run_name,
        }
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    columns = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time", "run_name"]
    frame = pd.DataFrame(rows, columns=None if rows else columns)
    return frame


__all__ = [
    "ActiveRun",
    "Metric",
    "active_run",
    "add_end_run_hook",
    "create_experiment",
    "delete_experiment",
    "delete_run",
    "delete_tag",
    "download_artifacts",
    "end_run",
    "flush",
    "get_artifact_uri",
    "get_experiment",
    "get_experiment_by_name",
    "get_run",
    "get_tracking_uri",
    "last_active_run",
    "list_artifacts",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_figure",
    "log_image",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_text",
    "remove_end_run_hook",
    "search_experiments",
    "search_runs",
    "set_experiment",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
]
