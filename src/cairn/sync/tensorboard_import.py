"""``cairn.import_tensorboard(...)``: TensorBoard log directories into cairn, through the ``tensorboard`` reader.

The log directory is a :class:`~cairn.sync.source.Source` for the same copier as ``cairn sync`` and
``cairn import-mlflow``, so an import is idempotent in the same way: importing again adds only the
points appended since (the destination's content is the state, no cursor is kept).

How a log directory lands in cairn:

* One experiment (``experiment``, default: the log directory's base name), created if missing.
* One run per directory that directly holds event files, named by its path below the log directory
  (the log directory itself: by its base name); several event files in one directory are one run.
  The run id is derived from the experiment name and the directory's absolute path, so a re-import
  finds the same run; the tag ``cairn.import.source`` holds that path.
* Scalars (TF1 ``simple_value`` and TF2 0-d tensor summaries) become metric histories with their
  steps and wall times (ms). A tag that is not a valid cairn key is imported under a sanitized key,
  said in the report.
* ``hparams`` session start info becomes params. ``SummaryWriter.add_hparams`` writes into a
  sub-directory named by a timestamp: when a run directory has exactly one such sub-directory with
  hparams (and no hparams of its own), that sub-directory is merged into its run, as TensorBoard's
  HParams dashboard shows it; several such sub-directories stay runs of their own (one per trial).
* Histograms, images, audio, text, graphs and other plugins' data are counted in the report, not
  imported. A file cut short (or corrupt) is read up to the damaged record and named with the offset.

The log directory is only read: symbolic links that leave it are not followed, nothing is written in it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from cairn.artifacts.base import is_inside
from cairn.errors import CairnError, InvalidArgument, NotFound
from cairn.registry.entities import ModelVersion, RegisteredModel
from cairn.store.base import StoredMetricPoint
from cairn.sync.api import describe_uri, destination_root, open_destination
from cairn.sync.copier import Copier, CopyOptions
from cairn.sync.progress import SyncProgress
from cairn.sync.report import ImportReport, Note, SyncReport
from cairn.sync.source import ArtifactSet, VersionLocation
from cairn.sync.tensorboard_events import EventDir, read_event_dir
from cairn.tracking import config, validation
from cairn.tracking.entities import Experiment, LifecycleStage, Run, RunData, RunInfo

__all__ = ["SOURCE_TAG", "TensorBoardSource", "find_event_dirs", "import_tensorboard"]

#: Run tag holding the absolute path of the event directory a run was imported from.
SOURCE_TAG = "cairn.import.source"
_FORMAT_TAG = "cairn.import.format"
_HPARAMS_TAG = "cairn.import.hparams_dir"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "cairn:import-tensorboard")


def import_tensorboard(
    logdir: str | os.PathLike[str],
    destination: str | os.PathLike[str] | None = None,
    *,
    experiment: str | None = None,
    destination_artifact_root: str | None = None,
    dry_run: bool = False,
    progress: bool | None = None,
    batch_size: int = 50_000,
) -> ImportReport:
    """Import a TensorBoard log directory: one run per event-file directory, scalars, hparams.

    Args:
        logdir: the log directory (as given to ``SummaryWriter`` / ``tensorboard --logdir``).
        destination: the cairn store to write (default: the current tracking URI).
        experiment: the experiment to import into, created if missing (default: ``logdir``'s base name).
        destination_artifact_root: where a created experiment keeps artifacts (see :func:`cairn.sync`).
        dry_run: count what would be imported, write nothing.
        progress: draw a progress bar on stderr (default: when stderr is a terminal).
        batch_size: metric points per destination transaction.

    Returns:
        What was imported; files cut short, skipped plugin data and renamed tags in its notes.

    Raises:
        CairnError: the ``tensorboard`` package is not installed (``pip install 'cairn[tensorboard]'``).
        NotFound: ``logdir`` does not exist.
        InvalidArgument: ``logdir`` is not a directory or holds no event files.
    """
    started = time.perf_counter()
    given = os.fspath(logdir)
    root = Path(os.path.realpath(Path(given).expanduser()))
    if not root.exists():
        raise NotFound(f"no TensorBoard log directory at {given!r}: the path does not exist")
    if not root.is_dir():
        raise InvalidArgument(f"{given!r} is not a directory; give the log directory that holds the event files")
    _require_tensorboard()
    report = ImportReport(source=str(root), destination="", dry_run=dry_run)
    dirs = find_event_dirs(root, report)
    if not dirs:
        raise InvalidArgument(_no_events_message(given, root))
    name = validation.experiment_name(experiment if experiment is not None else (_text(root.name) or "tensorboard"))
    dest_uri = config.resolve_tracking_uri(os.fspath(destination)) if destination else config.get_tracking_uri()
    report.destination = describe_uri(dest_uri)
    options = CopyOptions(artifacts=False, registry=False, dry_run=dry_run, batch_size=batch_size)
    with open_destination(dest_uri, destination_root(dest_uri, destination_artifact_root), dry_run) as dest:
        source = TensorBoardSource(root, name, dirs, report)
        with SyncProgress(progress, "read") as bar:
            source.load(bar)
        with SyncProgress(progress, "import") as bar:
            Copier(source, dest, None, report, options, bar).copy()
    report.elapsed = time.perf_counter() - started
    return report


def _require_tensorboard() -> None:
    try:
        import tensorboard.backend.event_processing.event_file_loader  # noqa: F401
    except ImportError as exc:
        raise CairnError(
            f"reading TensorBoard event files needs the tensorboard package: pip install 'cairn[tensorboard]' ({exc})"
        ) from exc


def _no_events_message(given: str, root: Path) -> str:
    message = f"{given!r} holds no TensorBoard event files (events.out.tfevents.*) in it or below it"
    from cairn.sync.mlflow_import import check_mlflow_source

    try:
        check_mlflow_source(root.as_uri(), given)
    except (InvalidArgument, OSError):
        return message
    return f"{message}; it is an MLflow store: use `cairn import-mlflow --from {given}`"


def find_event_dirs(root: Path, report: ImportReport) -> dict[Path, list[Path]]:
    """Every directory at or below ``root`` that directly holds event files, with those files.

    Symbolic links are not followed out of ``root`` (each one is noted); directories that cannot be
    listed are noted.
    """
    from tensorboard.backend.event_processing.io_wrapper import IsSummaryEventsFile

    real_root = str(root)

    def unreadable(exc: OSError) -> None:
        report.skipped.append(Note(f"directory {exc.filename}", f"not read: {exc.strerror or exc}"))

    found: dict[Path, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):  # never follows directory links
        here = Path(dirpath)
        dirnames.sort()
        for name in dirnames:
            link = here / name
            if link.is_symlink() and not is_inside(os.path.realpath(link), real_root):
                report.skipped.append(
                    Note(f"link {link}", f"points to {os.path.realpath(link)}, outside {root}: not followed")
                )
        files: list[Path] = []
        for name in sorted(filenames):
            if not IsSummaryEventsFile(name):
                continue
            file = here / name
            real = os.path.realpath(file)
            if file.is_symlink() and not is_inside(real, real_root):
                report.skipped.append(Note(f"link {file}", f"points to {real}, outside {root}: not followed"))
            elif os.path.isfile(real):
                files.append(Path(real) if file.is_symlink() else file)
        if files:
            found[here] = files
    return found


def _text(name: str) -> str:
    """A file name as storable text: bytes that are not UTF-8 (kept by the file system decoding) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class TensorBoardSource:
    """A TensorBoard log directory as a copier :class:`~cairn.sync.source.Source` (one experiment).

    Args:
        root: the log directory (resolved).
        experiment: the experiment name the runs go to.
        dirs: event directories and their files (:func:`find_event_dirs`).
        report: notes on what was not imported (or not as it was) go here.
    """

    def __init__(self, root: Path, experiment: str, dirs: dict[Path, list[Path]], report: ImportReport) -> None:
        self.root = root
        self.experiment = experiment
        self.dirs = dirs
        self.report = report
        self.description = str(root)
        #: Parsed runs by run id, until the copier has taken their points.
        self._runs: dict[str, EventDir] = {}
        self._loaded: list[Run] | None = None

    def experiments(self) -> list[Experiment]:
        return [Experiment(experiment_id="tensorboard", name=self.experiment, artifact_location="")]

    def load(self, progress: SyncProgress | None = None) -> list[Run]:
        """Read every event directory (once), advancing ``progress`` per directory."""
        if self._loaded is not None:
            return self._loaded
        counts = SyncReport(source=self.description, destination="")
        if progress is not None:
            progress.set_total(len(self.dirs))
        parsed: dict[Path, EventDir] = {}
        for path, files in self.dirs.items():
            parsed[path] = read_event_dir(path, files, root=self.root)
            counts.metric_points += len(parsed[path].points)
            if progress is not None:
                progress.advance(counts)
        merged = self._merge_hparams_dirs(parsed)
        runs = [self._run(path, found, merged.get(path)) for path, found in parsed.items()]
        self._loaded = sorted(runs, key=lambda run: (run.info.start_time, run.info.run_name))
        return self._loaded

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        yield from self.load()

    def _merge_hparams_dirs(self, parsed: dict[Path, EventDir]) -> dict[Path, Path]:
        """Fold each lone ``add_hparams`` sub-directory into its parent's run; parent -> merged child."""
        children: dict[Path, list[Path]] = {}
        for path, found in parsed.items():
            if path != self.root and found.has_hparams and path.parent in parsed:
                children.setdefault(path.parent, []).append(path)
        merged: dict[Path, Path] = {}
        for parent, paths in sorted(children.items()):
            if len(paths) == 1 and not parsed[parent].has_hparams:
                parsed[parent].absorb(parsed.pop(paths[0]))
                merged[parent] = paths[0]
            else:
                self.report.unrepresented.append(
                    Note(
                        f"run {self._name(parent)!r}",
                        f"{len(paths)} hparams sub-directories ({', '.join(p.name for p in paths)}) are kept as "
                        "runs of their own (one per add_hparams call), not merged into this run",
                    )
                )
        return merged

    def _name(self, path: Path) -> str:
        name = path.relative_to(self.root).as_posix() if path != self.root else (self.root.name or "/")
        return _text(name)[: validation.MAX_RUN_NAME_LENGTH]

    def _run(self, path: Path, found: EventDir, hparams_dir: Path | None) -> Run:
        name = self._name(path)
        run_id = uuid.uuid5(_NAMESPACE, f"{self.experiment}\0{_text(str(path))}").hex
        subject = f"run {name!r}"
        for problem in found.problems:
            self.report.skipped.append(Note(subject, problem))
        if found.skipped:
            counts = ", ".join(f"{count:,} {kind}" for kind, count in sorted(found.skipped.items()))
            self.report.unrepresented.append(
                Note(subject, f"skipped {counts} event(s): cairn imports scalars and hparams only")
            )
        for tag, key in sorted(found.renamed.items()):
            self.report.unrepresented.append(
                Note(subject, f"TensorBoard name {tag!r} is not a valid cairn key; imported as {key!r}")
            )
        tags = {SOURCE_TAG: _text(str(path)), _FORMAT_TAG: "tensorboard"}
        if hparams_dir is not None:
            tags[_HPARAMS_TAG] = _text(str(hparams_dir))
        latest: dict[str, float] = {}
        for point in found.points:
            latest[point.key] = point.value
        self._runs[run_id] = found
        start = found.first_ms or 0
        return Run(
            info=RunInfo(
                run_id=run_id,
                experiment_id="tensorboard",
                run_name=name,
                user_id="",
                status=found.status,
                start_time=start,
                end_time=found.last_ms if found.last_ms is not None else start,
                artifact_uri="",
                lifecycle_stage=LifecycleStage.ACTIVE,
            ),
            data=RunData(metrics=latest, params=dict(found.params), tags=tags),
        )

    def metric_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]] | None:
        counts: dict[str, dict[str, tuple[int, int]]] = {}
        for run_id in run_ids:
            per_key: dict[str, tuple[int, int]] = {}
            for point in self._runs[run_id].points:
                per_key[point.key] = (per_key.get(point.key, (0, 0))[0] + 1, 0)
            counts[run_id] = per_key
        return counts

    def metric_points(self, run: Run, keys: Sequence[str]) -> list[StoredMetricPoint]:
        wanted = set(keys)
        found = self._runs.pop(run.info.run_id)  # the copier asks once per run: let the points go
        return [point for point in found.points if point.key in wanted]

    def artifact_sets(self, run: Run) -> list[ArtifactSet]:
        return []

    def experiment_artifact_sets(self, experiment: Experiment) -> list[ArtifactSet]:
        return []

    def registered_models(self) -> Iterator[tuple[RegisteredModel, list[ModelVersion]]]:
        return iter(())

    def version_location(self, version: ModelVersion) -> VersionLocation | None:
        return None

    def close(self) -> None:
        """Nothing to release: every file was closed after reading."""
