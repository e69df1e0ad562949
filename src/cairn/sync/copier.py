"""The copy itself: experiments, runs, metric points, artifacts and the registry, idempotently.

Every step compares what the destination holds with what the source holds and writes only the
difference, so a second run writes nothing and a run killed at any point is completed by the next
one. No sync state is stored anywhere: the destination's content is the state.

Per run, in this order: the run is created (RUNNING) if missing; params, tags and metric points
are written in transactions of at most ``batch_size`` points (see :mod:`cairn.sync.points`);
missing artifact files are copied; then status, end time and name are set, and a run deleted at
the source is deleted at the destination. Artifact files count as present when a file with the
same path and size exists. What exists only at the destination is left alone: a sync adds, it
never removes.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from cairn.artifacts import get_artifact_store
from cairn.artifacts.base import PROGRESS_MIN_BYTES, PROGRESS_MIN_FILES, ArtifactStore
from cairn.artifacts.leftovers import temp_dir_prefix
from cairn.errors import (
    ExperimentNotFound,
    InvalidArgument,
    NotFound,
    ResourceAlreadyExists,
    RunNotFound,
    UnsafePath,
)
from cairn.registry.entities import ModelVersion, RegisteredModel
from cairn.store.base import StoredMetricPoint, TrackingStore
from cairn.store.registry_base import RegistryStore
from cairn.sync.points import PointPlan, plan_points
from cairn.sync.progress import SyncProgress
from cairn.sync.report import ImportReport, Note, SyncReport
from cairn.sync.source import ArtifactSet, Source, list_files
from cairn.tracking import validation
from cairn.tracking.entities import Experiment, FileInfo, LifecycleStage, Param, Run, RunStatus, RunTag

__all__ = ["Copier", "CopyOptions"]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
#: Source runs whose metric counts are fetched in one query.
_RUN_CHUNK = 500
T = TypeVar("T")
KV = TypeVar("KV", Param, RunTag)


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """What to copy.

    Attributes:
        experiments: experiment names (or source ids); empty: every active experiment.
        run_ids: only these runs; empty: every run of the selected experiments.
        since: only runs started, ended or still running at or after this time (ms since the epoch).
        artifacts: copy artifact files (and MLflow logged models).
        registry: copy registered models, versions, aliases and stages.
        dry_run: count what would be written, write nothing.
        batch_size: metric points per destination transaction.
    """

    experiments: tuple[str, ...] = ()
    run_ids: tuple[str, ...] = ()
    since: int | None = None
    artifacts: bool = True
    registry: bool = True
    dry_run: bool = False
    batch_size: int = 50_000

    @property
    def filtered(self) -> bool:
        return bool(self.experiments or self.run_ids or self.since is not None)


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)] or [items[:0]]


def _join(root: str, relpath: str) -> str:
    return f"{root.rstrip('/')}/{relpath}" if relpath else root.rstrip("/")


class Copier:
    """Copies from a :class:`Source` into a cairn tracking store (and its registry).

    Args:
        source: where runs come from.
        dest: the destination tracking store.
        dest_registry: the destination registry (``None``: the registry is not copied).
        report: counts and notes are added to it.
        options: filters and switches.
        progress: advanced once per run.
    """

    def __init__(
        self,
        source: Source,
        dest: TrackingStore,
        dest_registry: RegistryStore | None,
        report: SyncReport,
        options: CopyOptions,
        progress: SyncProgress,
    ) -> None:
        self.source = source
        self.dest = dest
        self.dest_registry = dest_registry if options.registry else None
        self.report = report
        self.options = options
        self.progress = progress
        self._selected_runs: set[str] = set()
        #: Destination artifact root of each run copied (``None``: would be created, dry run).
        self._dest_run_uris: dict[str, str | None] = {}
        self._dest_experiments: dict[str, Experiment | None] = {}

    def note(self, subject: str, message: str) -> None:
        self.report.skipped.append(Note(subject, message))

    # -- selection ---------------------------------------------------------------------------------

    def copy(self) -> None:
        """Copy everything the options select (see the module docstring for the order)."""
        selected = self._select()
        self.report.runs_seen = sum(len(runs) for _, runs in selected)
        self.progress.set_total(self.report.runs_seen)
        for experiment, runs in selected:
            dest_experiment = self._experiment(experiment, runs)
            if isinstance(dest_experiment, _Skip):
                self.progress.advance(self.report, len(runs))
                continue
            for chunk in _chunks(runs, _RUN_CHUNK):
                ids = [run.info.run_id for run in chunk]
                source_counts = self.source.metric_counts(ids)
                dest_counts = self.dest.metric_point_counts(ids)
                for run in chunk:
                    self._run(run, dest_experiment, source_counts, dest_counts)
                    self.progress.advance(self.report)
            if self.options.artifacts and not self.options.run_ids:
                for artifact_set in self.source.experiment_artifact_sets(experiment):
                    root = None if dest_experiment is None else dest_experiment.artifact_location
                    self._copy_set(artifact_set, None if root is None else _join(root, artifact_set.relpath))
        if self.dest_registry is not None:
            self._registry(self.dest_registry)

    def _select(self) -> list[tuple[Experiment, list[Run]]]:
        experiments = self.source.experiments()
        if self.options.experiments:
            by_ref: dict[str, Experiment] = {}
            for experiment in experiments:
                by_ref.setdefault(experiment.experiment_id, experiment)
            for experiment in experiments:
                by_ref[experiment.name] = experiment
            missing = [ref for ref in self.options.experiments if ref not in by_ref]
            if missing:
                raise ExperimentNotFound(
                    f"no experiment named (or numbered) {', '.join(map(repr, missing))} at the source"
                )
            experiments = list({id(by_ref[ref]): by_ref[ref] for ref in self.options.experiments}.values())
        wanted_ids = set(self.options.run_ids)
        found_ids: set[str] = set()
        selected: list[tuple[Experiment, list[Run]]] = []
        for experiment in experiments:
            matched = [run for run in self.source.runs(experiment) if not wanted_ids or run.info.run_id in wanted_ids]
            found_ids.update(run.info.run_id for run in matched)
            runs = [run for run in matched if self._since_ok(run)]
            if experiment.lifecycle_stage == LifecycleStage.DELETED:
                if runs:
                    self.note(
                        f"experiment {experiment.name!r}",
                        f"deleted at the source; its {len(runs)} run(s) were not copied (restore it to copy them)",
                    )
                continue
            if runs or not self.options.filtered:
                selected.append((experiment, runs))
            self._selected_runs.update(run.info.run_id for run in runs)
        if wanted_ids - found_ids:
            unknown = ", ".join(sorted(wanted_ids - found_ids))
            raise RunNotFound(f"no run with id {unknown} in the selected source experiments")
        return selected

    def _since_ok(self, run: Run) -> bool:
        info = run.info
        since = self.options.since
        if since is None:
            return True
        return info.start_time >= since or info.end_time is None or info.end_time >= since

    # -- experiments -------------------------------------------------------------------------------

    def _experiment(self, experiment: Experiment, runs: list[Run]) -> Experiment | _Skip | None:
        """The destination experiment of the same name (created if missing); ``None`` when it would be
        created (dry run); :data:`_SKIP` when runs cannot go there."""
        found = self.dest.get_experiment_by_name(experiment.name)
        tags = self._valid_items(
            [RunTag(k, v) for k, v in experiment.tags.items()], "tag", f"experiment {experiment.name!r}"
        )
        if found is None:
            self.report.experiments += 1
            self.report.tags += len(tags)
            if self.options.dry_run:
                self._dest_experiments[experiment.name] = None
                return None
            experiment_id = self.dest.create_experiment(experiment.name, tags={t.key: t.value for t in tags})
            found = self.dest.get_experiment(experiment_id)
        elif found.lifecycle_stage == LifecycleStage.DELETED:
            self.note(
                f"experiment {experiment.name!r}",
                f"deleted at the destination; its {len(runs)} run(s) were not copied (restore it there first)",
            )
            return _SKIP
        else:
            for tag in tags:
                if found.tags.get(tag.key) != tag.value:
                    self.report.tags += 1
                    if not self.options.dry_run:
                        self.dest.set_experiment_tag(found.experiment_id, tag.key, tag.value)
        self._dest_experiments[experiment.name] = found
        return found

    def _valid_items(self, items: Sequence[KV], kind: str, subject: str) -> list[KV]:
        """Items (params or tags) cairn accepts; the others are noted and left out."""
        valid: list[KV] = []
        for item in items:
            key, value = item.key, item.value
            try:
                validation.validate_key(key, kind)
                if kind == "param":
                    validation.param_value(value, key)
                else:
                    validation.tag_value(value, key)
            except InvalidArgument as exc:
                self.note(subject, f"{kind} {key!r} not copied: {exc}")
                continue
            valid.append(item)
        return valid

    # -- runs --------------------------------------------------------------------------------------

    def _run(
        self,
        run: Run,
        dest_experiment: Experiment | None,
        source_counts: dict[str, dict[str, tuple[int, int]]] | None,
        dest_counts: dict[str, dict[str, tuple[int, int]]],
    ) -> None:
        info = run.info
        run_id = info.run_id
        subject = f"run {run_id}"
        if not _RUN_ID.match(run_id):
            self.note(subject, "not copied: a cairn run id is 32 lowercase hex characters")
            return
        try:
            existing: Run | None = self.dest.get_run(run_id)
        except RunNotFound:
            existing = None
        if existing is not None and (
            dest_experiment is None or existing.info.experiment_id != dest_experiment.experiment_id
        ):
            self.note(
                subject,
                f"not copied: at the destination it belongs to experiment {existing.info.experiment_id}, "
                f"not to {info.experiment_id!r}",
            )
            return
        params = self._valid_items([Param(k, v) for k, v in run.data.params.items()], "param", subject)
        tags = self._valid_items([RunTag(k, v) for k, v in run.data.tags.items()], "tag", subject)
        changed = False
        if existing is None:
            self.report.runs_created += 1
            self.report.tags += len(tags)
            dest_uri: str | None = None
            if not self.options.dry_run:
                assert dest_experiment is not None
                created = self.dest.create_run(
                    dest_experiment.experiment_id,
                    user_id=info.user_id,
                    start_time=info.start_time,
                    run_name=info.run_name,
                    tags=tags,
                    run_id=run_id,
                )
                dest_uri = created.info.artifact_uri
            new_params, new_tags = params, []
        else:
            dest_uri = existing.info.artifact_uri
            new_params = []
            for param in params:
                stored = existing.data.params.get(param.key)
                if stored is None:
                    new_params.append(param)
                elif stored != param.value:
                    self.note(
                        subject, f"param {param.key!r} is {stored!r} at the destination, {param.value!r} at the source"
                    )
            new_tags = [tag for tag in tags if existing.data.tags.get(tag.key) != tag.value]
            if (existing.info.start_time, existing.info.user_id) != (info.start_time, info.user_id):
                self.note(subject, "start time or user differs at the destination; left as it is there")
        self._dest_run_uris[run_id] = dest_uri
        counts = None if source_counts is None else source_counts.get(run_id, {})
        plan = self._plan_points(run, counts, {} if existing is None else dest_counts.get(run_id, {}), existing)
        if new_params or new_tags or not plan.empty:
            changed = True
            self.report.params += len(new_params)
            self.report.tags += len(new_tags)
            self.report.metric_points += len(plan.inserts)
            self.report.superseded_flags += plan.flags
            if not self.options.dry_run:
                for index, batch in enumerate(_chunks(plan.inserts, max(1, self.options.batch_size))):
                    first = index == 0
                    self.dest.import_run_data(
                        run_id,
                        params=new_params if first else (),
                        tags=new_tags if first else (),
                        points=batch,
                        supersede=plan.supersede if first else (),
                    )
        if self.options.artifacts:
            for artifact_set in self.source.artifact_sets(run):
                root = None if dest_uri is None else _join(dest_uri, artifact_set.relpath)
                changed |= self._copy_set(artifact_set, root) > 0
        changed |= self._finish_run(run, existing)
        if existing is not None and changed:
            self.report.runs_updated += 1

    def _plan_points(
        self,
        run: Run,
        source_counts: dict[str, tuple[int, int]] | None,
        dest_counts: dict[str, tuple[int, int]],
        existing: Run | None,
    ) -> PointPlan:
        """The points the destination run lacks, reading full histories only of keys whose counts differ."""
        run_id = run.info.run_id
        if source_counts is not None:
            keys = sorted(key for key, count in source_counts.items() if dest_counts.get(key) != count)
            if not keys:
                return PointPlan()
            points = self.source.metric_points(run, keys)
        else:  # the source cannot count: read everything, then compare counts
            points = self.source.metric_points(run, sorted(run.data.metrics))
            counted: dict[str, list[int]] = {}
            for point in points:
                slot = counted.setdefault(point.key, [0, 0])
                slot[0] += 1
                slot[1] += bool(point.superseded)
            keys = sorted(key for key, (n, s) in counted.items() if dest_counts.get(key) != (n, s))
            wanted = set(keys)
            points = [point for point in points if point.key in wanted]
        points = self._valid_points(run_id, points)
        if not points:
            return PointPlan()
        stored: list[StoredMetricPoint] = [] if existing is None else self.dest.get_metric_points(run_id, keys)
        plan = plan_points(points, stored)
        if plan.extra:
            self.note(f"run {run_id}", f"{plan.extra} metric point(s) exist only at the destination; left there")
        return plan

    def _valid_points(self, run_id: str, points: list[StoredMetricPoint]) -> list[StoredMetricPoint]:
        bad: dict[str, str] = {}
        for key in {point.key for point in points}:
            try:
                validation.validate_key(key, "metric")
            except InvalidArgument as exc:
                bad[key] = str(exc)
        for key, why in sorted(bad.items()):
            self.note(f"run {run_id}", f"metric {key!r} not copied: {why}")
        return [point for point in points if point.key not in bad] if bad else points

    def _finish_run(self, run: Run, existing: Run | None) -> bool:
        """Status, end time, name and deletion; whether anything changed (beyond creating the run)."""
        info, run_id = run.info, run.info.run_id
        status, end_time, name = (
            (RunStatus.RUNNING, None, info.run_name)
            if existing is None
            else (existing.info.status, existing.info.end_time, existing.info.run_name)
        )
        changed = False
        if (status, end_time) != (info.status, info.end_time) and not (
            info.status is RunStatus.RUNNING and status is RunStatus.RUNNING
        ):
            changed = existing is not None
            if existing is not None:
                self.report.run_infos += 1
            if not self.options.dry_run:
                self.dest.update_run_info(run_id, status=info.status, end_time=info.end_time)
        if name != info.run_name:
            changed = True
            self.report.run_infos += 1
            if not self.options.dry_run:
                self.dest.update_run_info(run_id, run_name=info.run_name)
        dest_stage = LifecycleStage.ACTIVE if existing is None else existing.info.lifecycle_stage
        if info.lifecycle_stage == LifecycleStage.DELETED and dest_stage == LifecycleStage.ACTIVE:
            changed = existing is not None
            self.report.runs_deleted += 1
            if not self.options.dry_run:
                self.dest.delete_run(run_id)
        elif info.lifecycle_stage == LifecycleStage.ACTIVE and dest_stage == LifecycleStage.DELETED:
            self.note(f"run {run_id}", "deleted at the destination but not at the source; left deleted")
        return changed

    # -- artifacts ---------------------------------------------------------------------------------

    def _copy_set(self, artifact_set: ArtifactSet, dest_root: str | None) -> int:
        """Copy the files of ``artifact_set`` missing under ``dest_root``; return how many."""
        files = artifact_set.list_files()
        if not files:
            return 0
        store: ArtifactStore | None = None
        if dest_root is None:  # dry run: the destination run does not exist yet
            todo = files
        else:
            store = get_artifact_store(dest_root)
            have = {info.path: info.file_size for info in list_files(store)}
            todo = [info for info in files if info.path not in have or _size_differs(info, have[info.path])]
        if not todo:
            return 0
        if artifact_set.kind == "logged_model" and isinstance(self.report, ImportReport):
            self.report.logged_models += 1
        if self.options.dry_run or store is None:
            self.report.artifact_files += len(todo)
            self.report.artifact_bytes += sum(info.file_size or 0 for info in todo)
            return len(todo)
        if artifact_set.local_file is not None:
            self._upload_local(store, artifact_set, todo)
            return len(todo)
        for group in _transfer_groups(todo):
            with tempfile.TemporaryDirectory(prefix=temp_dir_prefix("sync")) as tmp:
                local = Path(tmp)
                artifact_set.fetch([info.path for info in group], local)
                sizes = [(local / info.path).stat().st_size for info in group]
                if len(group) == 1:  # a single file never draws the artifact store's own progress bar
                    parent = group[0].path.rpartition("/")[0]
                    store.put_file(local / group[0].path, parent or None)
                else:
                    store.put_dir(local)
            self.report.artifact_files += len(group)
            self.report.artifact_bytes += sum(sizes)
        return len(todo)

    def _upload_local(self, store: ArtifactStore, artifact_set: ArtifactSet, todo: list[FileInfo]) -> None:
        """Upload files that are on this machine straight from where they are (no temporary copy).

        An fsspec destination gets each group in one batched ``put`` (s3fs sends them concurrently).
        """
        assert artifact_set.local_file is not None
        sources: list[tuple[FileInfo, Path]] = []
        for info in todo:
            try:
                sources.append((info, artifact_set.local_file(info.path)))
            except UnsafePath as exc:
                self.note(artifact_set.label, f"artifact {info.path!r} not copied: {exc}")
        from cairn.artifacts.fsspec_store import FsspecArtifactStore

        paths = dict(sources)
        for group in _transfer_groups([info for info, _ in sources]):
            local = [paths[info] for info in group]
            if isinstance(store, FsspecArtifactStore):
                store.fs.put([str(p) for p in local], [store.uri_for(info.path) for info in group])
            else:
                for info, path in zip(group, local, strict=True):
                    store.put_file(path, info.path.rpartition("/")[0] or None)
            self.report.artifact_files += len(group)
            self.report.artifact_bytes += sum(path.stat().st_size for path in local)

    # -- registry ----------------------------------------------------------------------------------

    def _registry(self, registry: RegistryStore) -> None:
        for model, versions in self.source.registered_models():
            if self.options.filtered:
                versions = [v for v in versions if v.run_id in self._selected_runs]
                if not versions:
                    continue
            try:
                self._model(registry, model, versions)
            except InvalidArgument as exc:
                self.note(f"registered model {model.name!r}", f"not copied: {exc}")

    def _model(self, registry: RegistryStore, model: RegisteredModel, versions: list[ModelVersion]) -> None:
        dry = self.options.dry_run
        try:
            dest_model: RegisteredModel | None = registry.get_registered_model(model.name)
        except NotFound:
            dest_model = None
        tags = self._valid_items(
            [RunTag(k, v) for k, v in model.tags.items()], "tag", f"registered model {model.name!r}"
        )
        if dest_model is None:
            self.report.registered_models += 1
            if not dry:
                tag_map = {t.key: t.value for t in tags}
                dest_model = registry.create_registered_model(model.name, tag_map, model.description)
        else:
            if model.description and dest_model.description != model.description:
                self.report.registry_updates += 1
                if not dry:
                    registry.update_registered_model(model.name, model.description)
            for tag in tags:
                if dest_model.tags.get(tag.key) != tag.value:
                    self.report.registry_updates += 1
                    if not dry:
                        registry.set_registered_model_tag(model.name, tag.key, tag.value)
        present: set[str] = set()
        for version in sorted(versions, key=lambda v: int(v.version)):
            if self._version(registry, version):
                present.add(str(version.version))
        dest_aliases = {} if dest_model is None else dest_model.aliases
        for alias, number in sorted(model.aliases.items()):
            if str(number) not in present or dest_aliases.get(alias) == str(number):
                continue
            try:
                if not dry:
                    registry.set_registered_model_alias(model.name, alias, number)
            except InvalidArgument as exc:
                self.note(f"registered model {model.name!r}", f"alias {alias!r} not copied: {exc}")
                continue
            self.report.aliases += 1

    def _version(self, registry: RegistryStore, version: ModelVersion) -> bool:
        """Copy or update one version; whether it exists at the destination as the same version now."""
        subject = f"registered model {version.name!r} version {version.version}"
        dry = self.options.dry_run
        source = self._dest_source(version, subject)
        try:
            existing: ModelVersion | None = registry.get_model_version(version.name, version.version)
        except NotFound:
            existing = None
        if existing is None:
            self.report.model_versions += 1
            if not dry:
                tags = self._valid_items([RunTag(k, v) for k, v in version.tags.items()], "tag", subject)
                copy = replace(version, source=source, aliases=[], tags={t.key: t.value for t in tags})
                try:
                    registry.import_model_version(copy)
                except (ResourceAlreadyExists, InvalidArgument) as exc:
                    self.report.model_versions -= 1
                    self.note(subject, f"not copied: {exc}")
                    return False
            return True
        if existing.run_id != version.run_id or (existing.source != source and not dry):
            self.note(
                subject,
                f"not copied: the destination already has this version number for another model "
                f"(run {existing.run_id}, source {existing.source})",
            )
            return False
        updates: list[Callable[[], object]] = []
        if existing.current_stage != version.current_stage:
            updates.append(
                lambda: registry.transition_model_version_stage(version.name, version.version, version.current_stage)
            )
        if version.description and existing.description != version.description:
            description = version.description
            updates.append(lambda: registry.update_model_version(version.name, version.version, description))
        for key, value in version.tags.items():
            if existing.tags.get(key) != value:
                updates.append(
                    lambda key=key, value=value: registry.set_model_version_tag(  # type: ignore[misc]
                        version.name, version.version, key, value
                    )
                )
        self.report.registry_updates += len(updates)
        if not dry:
            for update in updates:
                try:
                    update()
                except InvalidArgument as exc:
                    self.note(subject, f"not updated: {exc}")
        return True

    def _dest_source(self, version: ModelVersion, subject: str) -> str:
        """The version's source at the destination: the same path below the copied run (or experiment)."""
        location = self.source.version_location(version)
        if location is None:
            self.note(subject, f"source {version.source!r} is not inside a copied run; kept as it is")
            return version.source
        if location.run_id is not None:
            if location.run_id in self._dest_run_uris:
                root = self._dest_run_uris[location.run_id]
            else:
                try:
                    root = self.dest.get_run(location.run_id).info.artifact_uri
                except RunNotFound:
                    self.note(subject, f"run {location.run_id} is not at the destination; source kept as it is")
                    return version.source
            if root is None:  # dry run: the run would be created
                return version.source
            return _join(root, location.relpath)
        experiment = self._dest_experiments.get(location.experiment_name or "")
        if experiment is None:
            found = self.dest.get_experiment_by_name(location.experiment_name or "")
            if found is None:
                if not self.options.dry_run:
                    self.note(subject, f"experiment {location.experiment_name!r} is not at the destination")
                return version.source
            experiment = found
        return _join(experiment.artifact_location, location.relpath)


class _Skip:
    """Marker: the runs of this experiment cannot be copied (noted)."""


_SKIP = _Skip()


def _size_differs(source: FileInfo, dest_size: int | None) -> bool:
    return source.file_size is not None and dest_size is not None and source.file_size != dest_size


def _transfer_groups(files: list[FileInfo]) -> list[list[FileInfo]]:
    """Groups small enough that the artifact stores draw no progress bar of their own (ours is on)."""
    groups: list[list[FileInfo]] = []
    current: list[FileInfo] = []
    size = 0
    for info in files:
        file_size = info.file_size or 0
        if current and (len(current) >= PROGRESS_MIN_FILES or size + file_size > PROGRESS_MIN_BYTES):
            groups.append(current)
            current, size = [], 0
        current.append(info)
        size += file_size
    if current:
        groups.append(current)
    return groups
