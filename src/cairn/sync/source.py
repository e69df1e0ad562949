"""Where copied runs come from: a cairn store (``cairn sync``) or an MLflow store (``cairn import-mlflow``).

A :class:`Source` hands the copier cairn entities (experiments, runs, metric points, registered
models and versions) and :class:`ArtifactSet` objects: folders of files to place under a run's (or
an experiment's) artifact root at the destination. Both kinds of source speak this one protocol,
so the copier (idempotence, batching, artifacts, registry) exists once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cairn.artifacts import ArtifactStore, LocalArtifactStore, get_artifact_store, safe_relpath
from cairn.artifacts.base import is_inside
from cairn.errors import ArtifactNotFound, RunNotFound, UnsafePath
from cairn.registry.entities import ModelVersion, RegisteredModel
from cairn.store.base import StoredMetricPoint, TrackingStore
from cairn.store.registry_base import RegistryStore
from cairn.tracking.entities import Experiment, FileInfo, Run, ViewType

__all__ = ["ArtifactSet", "CairnSource", "Source", "VersionLocation", "list_files"]

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ArtifactSet:
    """Files to copy under one folder of a destination artifact root.

    Attributes:
        anchor: ``"run"``: below the run's artifact root; ``"experiment"``: below the experiment's
            artifact location (MLflow logged models that belong to no run).
        relpath: the folder below the anchor (``""``: the root itself).
        list_files: every file of the set (not directories), paths relative to the set's own root.
        fetch: download the given relative paths into a local directory, keeping the relative paths.
        label: what the set is, for notes.
        kind: ``"artifacts"`` or ``"logged_model"`` (an MLflow 3 logged model's files).
        local_file: for files already on this machine, the checked local path of a relative path
            (uploaded from there, without a temporary copy); ``None`` for remote sources.
    """

    anchor: Literal["run", "experiment"]
    relpath: str
    list_files: Callable[[], list[FileInfo]]
    fetch: Callable[[Sequence[str], Path], None]
    label: str = "artifacts"
    kind: str = "artifacts"
    local_file: Callable[[str], Path] | None = None


@dataclass(frozen=True, slots=True)
class VersionLocation:
    """Where a registered version's files lie, relative to something the copy carries over.

    Exactly one of ``run_id`` (below that run's artifact root) and ``experiment_name`` (below that
    experiment's artifact location) is set.
    """

    relpath: str
    run_id: str | None = None
    experiment_name: str | None = None


class Source(Protocol):
    """What the copier reads. Methods may append notes to ``report`` through the copier's callbacks."""

    description: str

    def experiments(self) -> list[Experiment]:
        """Every experiment, deleted ones included (the copier decides what to do with them)."""
        ...

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        """Every run of the experiment, deleted ones included, oldest first."""
        ...

    def metric_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]] | None:
        """Per run and key ``(points, superseded)``, or ``None`` when the source cannot count cheaply."""
        ...

    def metric_points(self, run: Run, keys: Sequence[str]) -> list[StoredMetricPoint]: ...

    def artifact_sets(self, run: Run) -> list[ArtifactSet]: ...

    def experiment_artifact_sets(self, experiment: Experiment) -> list[ArtifactSet]: ...

    def registered_models(self) -> Iterator[tuple[RegisteredModel, list[ModelVersion]]]:
        """Each registered model with all its versions (any order)."""
        ...

    def version_location(self, version: ModelVersion) -> VersionLocation | None:
        """Where the version's files lie, or ``None`` when they are not inside anything copied."""
        ...

    def close(self) -> None: ...


def list_files(store: ArtifactStore, path: str | None = None) -> list[FileInfo]:
    """Every file below ``path`` of ``store`` (recursively), sorted by path; ``[]`` when nothing is there."""
    try:
        entries = store.list(path)
    except ArtifactNotFound:
        return []
    found: list[FileInfo] = []
    for entry in entries:
        if entry.is_dir:
            found.extend(list_files(store, entry.path))
        else:
            found.append(entry)
    return sorted(found, key=lambda info: info.path)


def store_artifact_set(root: str, *, anchor: Literal["run", "experiment"] = "run", relpath: str = "") -> ArtifactSet:
    """An :class:`ArtifactSet` of everything under a cairn artifact root (local path or fsspec URL)."""
    store = get_artifact_store(root)

    def fetch(paths: Sequence[str], local_dir: Path) -> None:
        for path in paths:
            store.download(path, local_dir)

    local_file = None
    if isinstance(store, LocalArtifactStore):
        real_root = os.path.realpath(store.root)

        def local_file(path: str) -> Path:
            real = os.path.realpath(os.path.join(store.root, *safe_relpath(path).split("/")))
            if not is_inside(real, real_root):
                raise UnsafePath(f"artifact {path!r} under {store.root} resolves to {real}, outside its root")
            return Path(real)

    return ArtifactSet(anchor, relpath, lambda: list_files(store), fetch, label=root, local_file=local_file)


def under_root(location: str, root: str) -> str | None:
    """The path of ``location`` below ``root`` (``""`` for the root itself), or ``None`` if it is not below."""
    location, root = _plain(location).rstrip("/"), _plain(root).rstrip("/")
    if location == root:
        return ""
    if location.startswith(root + "/"):
        return location[len(root) + 1 :]
    return None


def _plain(uri: str) -> str:
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    if uri.startswith("file:"):
        return uri[len("file:") :]
    return uri


class CairnSource:
    """A cairn tracking store (and its registry) as the source of a sync.

    Args:
        store: the source tracking store.
        registry: its registry store (``None``: no registry is copied).
        description: how to name the source in reports.
    """

    def __init__(self, store: TrackingStore, registry: RegistryStore | None, description: str) -> None:
        self.store = store
        self.registry = registry
        self.description = description
        self._artifact_uris: dict[str, str] = {}

    def experiments(self) -> list[Experiment]:
        return self.store.search_experiments(ViewType.ALL, max_results=50_000)

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        token: str | None = None
        while True:
            page = self.store.search_runs(
                [experiment.experiment_id],
                run_view_type=ViewType.ALL,
                max_results=_PAGE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            for run in page.items:
                self._artifact_uris[run.info.run_id] = run.info.artifact_uri
                yield run
            token = page.next_page_token
            if not token:
                return

    def metric_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]] | None:
        return self.store.metric_point_counts(run_ids)

    def metric_points(self, run: Run, keys: Sequence[str]) -> list[StoredMetricPoint]:
        return self.store.get_metric_points(run.info.run_id, keys)

    def artifact_sets(self, run: Run) -> list[ArtifactSet]:
        return [store_artifact_set(run.info.artifact_uri)]

    def experiment_artifact_sets(self, experiment: Experiment) -> list[ArtifactSet]:
        return []

    def registered_models(self) -> Iterator[tuple[RegisteredModel, list[ModelVersion]]]:
        if self.registry is None:
            return
        for model in self.registry.search_registered_models(max_results=50_000):
            yield model, self.registry.search_model_versions(name=model.name, max_results=50_000)

    def version_location(self, version: ModelVersion) -> VersionLocation | None:
        source = version.source
        if source.startswith("runs:/"):
            from cairn.registry.uris import parse_runs_uri

            run_id, path = parse_runs_uri(source)
            return VersionLocation(path, run_id=run_id)
        if not version.run_id:
            return None
        root = self._artifact_uris.get(version.run_id)
        if root is None:
            try:
                root = self.store.get_run(version.run_id).info.artifact_uri
            except RunNotFound:
                return None
            self._artifact_uris[version.run_id] = root
        relpath = under_root(os.fspath(source), root)
        return None if relpath is None else VersionLocation(relpath, run_id=version.run_id)

    def close(self) -> None:
        self.store.close()
        if self.registry is not None:
            self.registry.close()
