"""``Client``: the explicit-id tracking API (MLflow's ``MlflowClient`` names and semantics).

Metric points go through the store's background batcher unless ``synchronous=True``; every read
made through a client first flushes the points queued in this process, so a process always reads
its own writes. Failures of background work (a checkpoint write or upload, a point the store refused) are
raised once by the next logging call, through the background service's one error box
(:func:`cairn.background.raise_errors`).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn import background
from cairn.errors import InvalidArgument
from cairn.registry.client import RegistryMethods
from cairn.store.base import MetricPoint, TrackingStore
from cairn.tracking import background_errors, config, context, rendering, system_tags, validation
from cairn.tracking.entities import (
    Experiment,
    FileInfo,
    Metric,
    PagedList,
    Param,
    Run,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)

if TYPE_CHECKING:
    from cairn.tracking.batcher import MetricBatcher

_EXPERIMENT_FILTER = re.compile(r"^\s*name\s+(=|LIKE|ILIKE)\s+'((?:[^'\\]|\\.)*)'\s*$", re.IGNORECASE)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Client(RegistryMethods):
    """Tracking client bound to one store.

    Args:
        tracking_uri: database URL or directory; defaults to ``CAIRN_TRACKING_URI`` / ``./cairn-runs``.
        artifact_root: where new experiments put artifacts; defaults to ``CAIRN_ARTIFACT_ROOT``.
    """

    def __init__(self, tracking_uri: str | None = None, artifact_root: str | None = None) -> None:
        self._store = config.get_store(tracking_uri, artifact_root)
        self._batcher_instance: MetricBatcher | None = None

    @property
    def store(self) -> TrackingStore:
        return self._store

    @property
    def _batcher(self) -> MetricBatcher:
        if self._batcher_instance is None:
            self._batcher_instance = config.get_batcher(self._store)
        return self._batcher_instance

    def flush(self) -> None:
        """Write every queued metric point now; raises the background writer's first error."""
        batcher = config.existing_batcher(self._store)
        if batcher is not None:
            batcher.flush()

    def _read(self) -> TrackingStore:
        batcher = config.existing_batcher(self._store)
        if batcher is not None and batcher.pending:
            batcher.flush()
        return self._store

    # -- experiments ---------------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        clean_tags = {validation.validate_key(k, "tag"): validation.tag_value(v, k) for k, v in (tags or {}).items()}
        return self._store.create_experiment(name, artifact_location, clean_tags)

    def get_experiment(self, experiment_id: str) -> Experiment:
        return self._store.get_experiment(str(experiment_id))

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        return self._store.get_experiment_by_name(name)

    def search_experiments(
        self,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        filter_string: str | None = None,
    ) -> list[Experiment]:
        """Experiments by id; ``filter_string`` may be ``name = '...'``, ``name LIKE '...'`` or ILIKE."""
        if not filter_string:
            return self._store.search_experiments(view_type, max_results)
        match = _EXPERIMENT_FILTER.match(filter_string)
        if not match:
            from cairn.errors import FilterSyntaxError

            raise FilterSyntaxError(
                "experiment filters support name = '...', name LIKE '...' and name ILIKE '...'",
                text=filter_string,
            )
        op, value = match.group(1).upper(), match.group(2).replace("\\'", "'")
        if op == "LIKE":
            return self._store.search_experiments(view_type, max_results, name_like=value)
        if op == "=":
            found = self._store.get_experiment_by_name(value)
            return [found] if found is not None and found.lifecycle_stage in view_type.stages() else []
        everything = self._store.search_experiments(view_type, 50_000)
        pattern = re.compile(_like_to_regex(value), re.IGNORECASE | re.DOTALL)
        return [e for e in everything if pattern.fullmatch(e.name)][:max_results]

    def delete_experiment(self, experiment_id: str) -> None:
        self._store.delete_experiment(str(experiment_id))

    def restore_experiment(self, experiment_id: str) -> None:
        self._store.restore_experiment(str(experiment_id))

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        self._store.rename_experiment(str(experiment_id), new_name)

    def set_experiment_tag(self, experiment_id: str, key: str, value: Any) -> None:
        validation.validate_key(key, "tag")
        self._store.set_experiment_tag(str(experiment_id), key, validation.tag_value(value, key))

    # -- runs ----------------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: Mapping[str, Any] | None = None,
        run_name: str | None = None,
    ) -> Run:
        """Create a RUNNING run with system tags (user, source, git) merged under ``tags``."""
        all_tags = context.default_tags()
        all_tags.update({k: validation.tag_value(v, k) for k, v in (tags or {}).items()})
        for key in all_tags:
            validation.validate_key(key, "tag")
        name = validation.run_name(run_name or all_tags.get(system_tags.RUN_NAME) or context.generate_run_name())
        all_tags[system_tags.RUN_NAME] = name
        return self._store.create_run(
            str(experiment_id),
            user_id=all_tags[system_tags.USER],
            start_time=start_time if start_time is not None else now_ms(),
            run_name=name,
            tags=[RunTag(k, v) for k, v in all_tags.items()],
        )

    def get_run(self, run_id: str) -> Run:
        return self._read().get_run(run_id)

    def get_parent_run(self, run_id: str) -> Run | None:
        parent = self.get_run(run_id).data.tags.get(system_tags.PARENT_RUN_ID)
        return self.get_run(parent) if parent else None

    def update_run(self, run_id: str, status: str | RunStatus | None = None, name: str | None = None) -> RunInfo:
        parsed = RunStatus.parse(status) if status is not None else None
        if parsed is not None and parsed.is_terminated:
            self.flush()
        return self._store.update_run_info(
            run_id, status=parsed, run_name=name, end_time=now_ms() if parsed and parsed.is_terminated else None
        )

    def set_terminated(self, run_id: str, status: str | RunStatus = "FINISHED", end_time: int | None = None) -> None:
        """End a run: flush its queued points, then record status and end time.

        If background workers of this process belong to the run (checkpoint uploads, its resume lease), the
        background service's ordered drain for the run comes first, as at the fluent ``end_run``: uploads
        finish, then the lease is released. A point the writer could not store is raised here (after the run
        is ended anyway).
        """
        parsed = RunStatus.parse(status)
        try:
            if background.service().has_run_workers(run_id):
                background.drain(run_id)
            self.flush()
        finally:
            self._store.update_run_info(run_id, status=parsed, end_time=end_time or now_ms())

    def delete_run(self, run_id: str) -> None:
        self.flush()
        self._store.delete_run(run_id)

    def restore_run(self, run_id: str) -> None:
        self._store.restore_run(run_id)

    def search_runs(
        self,
        experiment_ids: str | Sequence[str],
        filter_string: str = "",
        run_view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        ids = [experiment_ids] if isinstance(experiment_ids, str) else [str(e) for e in experiment_ids]
        return self._read().search_runs(ids, filter_string or "", run_view_type, max_results, order_by, page_token)

    # -- run data ------------------------------------------------------------------------------

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: Any,
        timestamp: int | None = None,
        step: int | None = None,
        synchronous: bool = False,
    ) -> None:
        """Record one point. Queued for the background writer unless ``synchronous``."""
        validation.validate_key(key)
        point = MetricPoint(
            run_id,
            key,
            validation.metric_value(value, key),
            validation.metric_timestamp(timestamp, key) if timestamp is not None else time.time_ns() // 1_000_000,
            validation.metric_step(step, key) if step is not None else 0,
        )
        if synchronous:
            self._store.log_metric_points([point])
        else:
            self._batcher.add(point)
        if background_errors.pending:  # a checkpoint write failed: say so now (this point is already queued)
            background.raise_errors()

    def log_param(self, run_id: str, key: str, value: Any) -> Any:
        """Params are immutable: a different value for a logged key raises ParamConflict."""
        validation.validate_key(key, "param")
        self._store.log_batch(run_id, params=[Param(key, validation.param_value(value, key))])
        if background_errors.pending:
            background.raise_errors()
        return value

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        validation.validate_key(key, "tag")
        self._store.log_batch(run_id, tags=[RunTag(key, validation.tag_value(value, key))])

    def delete_tag(self, run_id: str, key: str) -> None:
        self._store.delete_tag(run_id, key)

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        synchronous: bool = True,
    ) -> None:
        """Params, tags and metrics of one run; with ``synchronous=False`` metrics are queued.

        Every key and value is checked before anything is written or queued (InvalidArgument).
        """
        points = [_checked_point(run_id, metric) for metric in metrics]
        checked_params = [
            Param(validation.validate_key(p.key, "param"), validation.param_value(p.value, p.key)) for p in params
        ]
        checked_tags = [
            RunTag(validation.validate_key(t.key, "tag"), validation.tag_value(t.value, t.key)) for t in tags
        ]
        if synchronous:
            self._store.log_batch(run_id, metrics, checked_params, checked_tags)
        else:
            if checked_params or checked_tags:
                self._store.log_batch(run_id, (), checked_params, checked_tags)
            self._batcher.add_many(points)
        if background_errors.pending:
            background.raise_errors()

    def get_metric_history(self, run_id: str, key: str, *, include_superseded: bool = False) -> list[Metric]:
        """Points ordered by step; points superseded by a resume are hidden unless asked for."""
        return self._read().get_metric_history(run_id, key, include_superseded=include_superseded)

    # -- artifacts -----------------------------------------------------------------------------

    def log_artifact(self, run_id: str, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        path = Path(local_path)
        if not path.is_file():
            raise InvalidArgument(f"log_artifact: {path} is not a file (use log_artifacts for a directory)")
        self.artifact_store(run_id).put_file(path, artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        path = Path(local_dir)
        if not path.is_dir():
            raise InvalidArgument(f"log_artifacts: {path} is not a directory")
        self.artifact_store(run_id).put_dir(path, artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.artifact_store(run_id).put_bytes(text.encode("utf-8"), artifact_file)

    def log_dict(self, run_id: str, dictionary: Any, artifact_file: str) -> None:
        self.artifact_store(run_id).put_bytes(rendering.dict_bytes(dictionary, artifact_file), artifact_file)

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        self.artifact_store(run_id).put_bytes(rendering.figure_bytes(figure, artifact_file), artifact_file)

    def log_image(
        self,
        run_id: str,
        image: Any,
        artifact_file: str | None = None,
        *,
        key: str | None = None,
        step: int | None = None,
    ) -> None:
        """Save an image at ``artifact_file``, or at ``images/<key>/step_<step>.png`` given ``key``."""
        if artifact_file is None:
            if key is None:
                raise InvalidArgument("log_image needs artifact_file or key")
            validation.validate_key(key, "image")
            artifact_file = f"images/{key}/step_{validation.metric_step(step, key):08d}.png"
        self.artifact_store(run_id).put_bytes(rendering.image_bytes(image, artifact_file), artifact_file)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        return self.artifact_store(run_id).list(path)

    def download_artifacts(self, run_id: str, path: str = "", dst_path: str | os.PathLike[str] | None = None) -> str:
        """Copy an artifact file or directory to ``dst_path`` (a new temp dir by default)."""
        destination = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="cairn-"))
        destination.mkdir(parents=True, exist_ok=True)
        return str(self.artifact_store(run_id).download(path or None, destination))


def _checked_point(run_id: str, metric: Metric) -> MetricPoint:
    """``metric`` of ``run_id`` as a point the store can hold, or InvalidArgument naming its key."""
    key = validation.validate_key(metric.key)
    return MetricPoint(
        run_id,
        key,
        validation.metric_value(metric.value, key),
        validation.metric_timestamp(metric.timestamp, key),
        validation.metric_step(metric.step, key),
    )


def _like_to_regex(pattern: str) -> str:
    out = []
    for char in pattern:
        out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return "".join(out)
