"""Entities -> JSON-ready dicts for the UI's API. Non-finite floats become the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (JSON has no such numbers); the browser shows them as text."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cairn.registry.entities import ModelVersion, RegisteredModel
from cairn.tracking import system_tags
from cairn.tracking.entities import Experiment, Run

__all__ = ["experiment_json", "finite", "model_json", "run_json", "version_json"]

LIST_TAGS = (system_tags.USER, system_tags.SOURCE_NAME, system_tags.PARENT_RUN_ID, system_tags.GIT_COMMIT)
"""Tags sent with each run of a listing (the run page gets them all)."""


def finite(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def experiment_json(experiment: Experiment, counts: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "artifact_location": experiment.artifact_location,
        "lifecycle_stage": experiment.lifecycle_stage.value,
        "tags": dict(experiment.tags),
        "creation_time": experiment.creation_time,
        "last_update_time": experiment.last_update_time,
        "run_count": None if counts is None else counts.get("active", 0),
        "deleted_run_count": None if counts is None else counts.get("deleted", 0),
    }


def run_json(run: Run, *, all_tags: bool = True, tag_keys: Iterable[str] = LIST_TAGS) -> dict[str, Any]:
    info = run.info
    tags = dict(run.data.tags) if all_tags else {k: run.data.tags[k] for k in tag_keys if k in run.data.tags}
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "user_id": info.user_id,
        "status": info.status.value,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "lifecycle_stage": info.lifecycle_stage.value,
        "artifact_uri": info.artifact_uri,
        "params": dict(run.data.params),
        "metrics": {k: finite(v) for k, v in run.data.metrics.items()},
        "tags": tags,
    }


def version_json(version: ModelVersion) -> dict[str, Any]:
    return {
        "name": version.name,
        "version": version.version,
        "creation_timestamp": version.creation_timestamp,
        "last_updated_timestamp": version.last_updated_timestamp,
        "source": version.source,
        "run_id": version.run_id,
        "description": version.description,
        "user_id": version.user_id,
        "current_stage": version.current_stage,
        "status": version.status,
        "tags": dict(version.tags),
        "aliases": list(version.aliases),
    }


def model_json(model: RegisteredModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "description": model.description,
        "creation_timestamp": model.creation_timestamp,
        "last_updated_timestamp": model.last_updated_timestamp,
        "tags": dict(model.tags),
        "aliases": dict(model.aliases),
        "latest_versions": [version_json(v) for v in model.latest_versions],
    }
