"""Lineage: from a registered model version to the run, code and data that made it, in one call."""

from __future__ import annotations

from dataclasses import dataclass, field

from cairn.errors import RunNotFound
from cairn.registry.entities import ModelVersion
from cairn.store.base import TrackingStore
from cairn.tracking import system_tags
from cairn.tracking.entities import Run


@dataclass(frozen=True, slots=True)
class ModelVersionLineage:
    """What a model version came from.

    Attributes:
        model_version: the version itself.
        source: where its files are (the version's recorded source).
        run_id: the run recorded at registration, if any.
        run: that run, or ``None`` when there is no run id or the run was purged (or lives in
            another store): ``run_id is not None and run is None`` means the run is gone.
        params, metrics, tags: the run's params, latest metric values and tags (empty without a run).
        git_commit, git_branch, git_repo_url: the code version the run recorded, when it ran in git.
        git_dirty: whether that working tree had uncommitted changes (``None`` when unknown).
        code_source: the script or notebook that started the run.
    """

    model_version: ModelVersion
    source: str
    run_id: str | None = None
    run: Run | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    git_branch: str | None = None
    git_repo_url: str | None = None
    git_dirty: bool | None = None
    code_source: str | None = None

    @property
    def experiment_id(self) -> str | None:
        return self.run.info.experiment_id if self.run is not None else None


def version_lineage(version: ModelVersion, store: TrackingStore) -> ModelVersionLineage:
    """Collect the lineage of ``version`` from the tracking ``store`` (one run lookup)."""
    run: Run | None = None
    if version.run_id:
        try:
            run = store.get_run(version.run_id)
        except RunNotFound:
            run = None
    if run is None:
        return ModelVersionLineage(model_version=version, source=version.source, run_id=version.run_id)
    tags = dict(run.data.tags)
    dirty = tags.get(system_tags.GIT_DIRTY)
    return ModelVersionLineage(
        model_version=version,
        source=version.source,
        run_id=version.run_id,
        run=run,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=tags,
        git_commit=tags.get(system_tags.GIT_COMMIT),
        git_branch=tags.get(system_tags.GIT_BRANCH),
        git_repo_url=tags.get(system_tags.GIT_REPO_URL),
        git_dirty=None if dirty is None else dirty == "true",
        code_source=tags.get(system_tags.SOURCE_NAME),
    )
