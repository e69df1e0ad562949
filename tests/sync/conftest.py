"""A source store holding every kind of data a sync must carry, and a snapshot to compare stores with."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cairn.artifacts import get_artifact_store
from cairn.store._sql.registry import SqlRegistryStore
from cairn.store._sql.store import SqlTrackingStore
from cairn.sync.source import list_files, under_root
from cairn.tracking.entities import Metric, Param, RunStatus, RunTag, ViewType

T0 = 1_700_000_000_000


@dataclass
class SourceStore:
    """A populated cairn store under ``home`` (``home/cairn.db`` and ``home/artifacts``)."""

    home: Path
    parent: str
    child: str
    running: str
    deleted: str
    model_run: str
    features: Any  # inputs the registered model predicts on

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.home / 'cairn.db'}"


def open_store(uri: str, root: str) -> SqlTrackingStore:
    return SqlTrackingStore(uri, root)


def log_points(store: SqlTrackingStore, run_id: str, key: str, values: list[tuple[int, float]], t: int) -> None:
    store.log_batch(run_id, metrics=[Metric(key, value, t + step, step) for step, value in values])


def build_source(home: Path, *, with_model: bool = True) -> SourceStore:
    """Experiments, nested runs, params, tags, metric histories with NaN/inf, duplicates and
    superseded points, artifacts (text, binary, a logged sklearn model), a deleted and a running run,
    and a registry with a gap in version numbers, aliases, stages, tags and descriptions."""
    import cairn

    store = open_store(f"sqlite:///{home / 'cairn.db'}", str(home / "artifacts"))
    try:
        alpha = store.create_experiment("alpha", tags={"team": "vision", "note": "first"})
        beta = store.create_experiment("beta")
        parent = store.create_run(alpha, user_id="ada", start_time=T0, run_name="parent").info.run_id
        store.log_batch(
            parent,
            params=[Param("lr", "0.001"), Param("layers", "4")],
            tags=[RunTag("owner", "ada"), RunTag("long", "x" * 5000)],
        )
        log_points(store, parent, "loss", [(s, 1.0 / (s + 1)) for s in range(120)], T0)
        log_points(store, parent, "weird", [(0, math.nan), (1, math.inf), (2, -math.inf), (3, -0.0)], T0)
        # the very same point logged twice (same key, step, timestamp, value): both copies count
        store.log_batch(parent, metrics=[Metric("dup", 0.5, T0 + 7, 7), Metric("dup", 0.5, T0 + 7, 7)])
        # a resume: points after step 100 of the dead process are superseded, then logged again
        store.supersede_metrics_after(parent, 100)
        log_points(store, parent, "loss", [(s, 0.5 / (s + 1)) for s in range(101, 110)], T0 + 10_000)
        store.update_run_info(parent, status=RunStatus.FINISHED, end_time=T0 + 60_000)

        child = store.create_run(
            alpha,
            user_id="ada",
            start_time=T0 + 100,
            run_name="child",
            tags=[RunTag("mlflow.parentRunId", parent)],
        ).info.run_id
        log_points(store, child, "acc", [(s, s / 10) for s in range(10)], T0)
        store.update_run_info(child, status=RunStatus.FAILED, end_time=T0 + 20_000)

        running = store.create_run(beta, user_id="bob", start_time=T0 + 200, run_name="still-going").info.run_id
        log_points(store, running, "loss", [(s, 2.0 - s / 100) for s in range(50)], T0)
        deleted = store.create_run(beta, user_id="bob", start_time=T0 + 300, run_name="gone").info.run_id
        store.log_batch(deleted, params=[Param("p", "1")], metrics=[Metric("m", 1.0, T0, 0)])
        store.update_run_info(deleted, status=RunStatus.KILLED, end_time=T0 + 400)
        store.delete_run(deleted)

        artifacts = get_artifact_store(store.get_run(parent).info.artifact_uri)
        artifacts.put_bytes(b"hello\n", "notes/readme.txt")
        artifacts.put_bytes(b"deep", "a/b/c/deep.txt")
        artifacts.put_bytes(random.Random(0).randbytes(200_000), "blobs/weights.bin")
        get_artifact_store(store.get_run(child).info.artifact_uri).put_bytes(b"child", "child.txt")
    finally:
        store.close()

    model_run = ""
    features: Any = None
    if with_model:
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        import cairn.sklearn

        rng = np.random.RandomState(0)
        features = rng.rand(40, 3)
        labels = (features[:, 0] > 0.5).astype(int)
        cairn.set_tracking_uri(str(home))
        client = cairn.Client()
        model_run = client.create_run(alpha, run_name="model-run").info.run_id
        model = LogisticRegression().fit(features, labels)
        info = cairn.sklearn.log_model(  # cloudpickle: skops would import torch, seconds per test process
            model, "model", run_id=model_run, pip_requirements=["scikit-learn"], serialization_format="cloudpickle"
        )
        client.set_terminated(model_run, "FINISHED", end_time=T0 + 90_000)
        for _ in range(3):
            client.create_model_version("clf", info.model_uri, run_id=model_run)
        client.delete_model_version("clf", 2)  # numbers 1 and 3 remain: a sync must keep them
        client.update_registered_model("clf", "churn classifier")
        client.set_registered_model_tag("clf", "domain", "churn")
        client.set_model_version_tag("clf", 3, "validated", "yes")
        client.update_model_version("clf", 3, "the good one")
        client.transition_model_version_stage("clf", 3, "Production")
        client.set_registered_model_alias("clf", "champion", 3)
        client.set_registered_model_alias("clf", "old", 1)
        cairn.set_tracking_uri(None)
        from cairn.tracking import config

        config.reset()
    return SourceStore(home, parent, child, running, deleted, model_run, features)


@pytest.fixture
def source(tmp_path: Path) -> SourceStore:
    return build_source(tmp_path / "source")


def _value(value: float) -> str:
    return repr(float(value))  # 'nan', 'inf', '-0.0' compare as text


def snapshot(uri: str, root: str = "/unused") -> dict[str, Any]:
    """Everything a sync must preserve, in a form where two stores compare with ``==``.

    Artifact URIs and version sources are made relative to their run's artifact root (each store has
    its own root); artifact files are compared by sha256 of their bytes.
    """
    store = open_store(uri, root)
    registry = SqlRegistryStore.from_tracking_store(store)
    try:
        experiments = {e.experiment_id: e for e in store.search_experiments(ViewType.ALL)}
        result: dict[str, Any] = {
            "experiments": {e.name: (e.lifecycle_stage.value, e.tags) for e in experiments.values()},
            "runs": {},
            "registry": {},
        }
        uris: dict[str, str] = {}
        for run in store.search_runs(list(experiments), run_view_type=ViewType.ALL, max_results=50_000).items:
            info = run.info
            uris[info.run_id] = info.artifact_uri
            files = list_files(get_artifact_store(info.artifact_uri))
            digests = {}
            for item in files:
                with get_artifact_store(info.artifact_uri).open(item.path) as handle:
                    digests[item.path] = hashlib.sha256(handle.read()).hexdigest()
            points = [
                (p.key, _value(p.value), p.timestamp, p.step, p.superseded)
                for p in store.get_metric_points(info.run_id)
            ]
            result["runs"][info.run_id] = {
                "experiment": experiments[info.experiment_id].name,
                "name": info.run_name,
                "user": info.user_id,
                "status": info.status.value,
                "start": info.start_time,
                "end": info.end_time,
                "stage": info.lifecycle_stage.value,
                "params": run.data.params,
                "tags": run.data.tags,
                "latest": {k: _value(v) for k, v in run.data.metrics.items()},
                "points": points,
                "artifacts": digests,
            }
        for model in registry.search_registered_models(max_results=1000):
            versions = {}
            for version in registry.search_model_versions(name=model.name):
                root_of_run = uris.get(version.run_id or "", "")
                versions[version.version] = {
                    "run_id": version.run_id,
                    "source": under_root(version.source, root_of_run) if root_of_run else version.source,
                    "stage": version.current_stage,
                    "status": version.status,
                    "description": version.description,
                    "tags": version.tags,
                    "aliases": sorted(version.aliases),
                    "created": version.creation_timestamp,
                }
            result["registry"][model.name] = {
                "description": model.description,
                "tags": model.tags,
                "aliases": model.aliases,
                "versions": versions,
            }
        return result
    finally:
        registry.close()
        store.close()


def artifact_uris(uri: str) -> dict[str, str]:
    store = open_store(uri, "/unused")
    try:
        exps = [e.experiment_id for e in store.search_experiments(ViewType.ALL)]
        return {
            r.info.run_id: r.info.artifact_uri
            for r in store.search_runs(exps, run_view_type=ViewType.ALL, max_results=50_000).items
        }
    finally:
        store.close()
