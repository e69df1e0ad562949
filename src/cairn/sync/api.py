"""``cairn.sync(...)``: copy runs from one cairn store into another."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import date, datetime, timezone
from pathlib import Path

from cairn.errors import InvalidArgument, NotFound
from cairn.store._sql.registry import SqlRegistryStore
from cairn.store._sql.store import SqlTrackingStore
from cairn.sync.copier import Copier, CopyOptions
from cairn.sync.progress import SyncProgress
from cairn.sync.report import SyncReport
from cairn.sync.source import CairnSource
from cairn.tracking import config

__all__ = ["describe_uri", "destination_root", "open_destination", "parse_since", "sync"]


def sync(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str] | None = None,
    *,
    destination_artifact_root: str | None = None,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    since: datetime | date | str | int | None = None,
    artifacts: bool = True,
    registry: bool = True,
    dry_run: bool = False,
    progress: bool | None = None,
    batch_size: int = 50_000,
) -> SyncReport:
    """Copy experiments, runs, metric histories, artifacts and the registry from one cairn store to another.

    Experiments are matched by name (created at the destination when missing, in its artifact root);
    runs keep their ids, so ``runs:/`` and ``models:/`` URIs resolve at the destination too, and
    registered versions keep their numbers, their sources moved to the destination's copy of the files.
    Running it again copies only what is new: a run still RUNNING at the source is completed by a
    later sync, and a sync that was killed resumes without duplicating a single metric point.

    Args:
        source: the store to read: a directory (``./cairn-runs``), ``sqlite:///...`` or ``postgresql://...``.
        destination: the store to write (default: the current tracking URI).
        destination_artifact_root: where experiments created at the destination keep artifacts
            (default: ``CAIRN_ARTIFACT_ROOT`` for the configured store, else ``artifacts/`` beside a
            SQLite file).
        experiments: only these experiments (names or source ids); default: every active one.
        run_ids: only these runs.
        since: only runs started, ended or still running at or after this time: a datetime, a date,
            an ISO date string (``2024-05-01``, ``2024-05-01T12:00``; local time unless it has an
            offset) or milliseconds since the epoch.
        artifacts: copy artifact files (logged models included).
        registry: copy registered models, versions, aliases, stages and tags.
        dry_run: count what would be copied, write nothing.
        progress: draw a progress bar on stderr (default: when stderr is a terminal).
        batch_size: metric points per destination transaction.

    Returns:
        What was copied; :attr:`SyncReport.total` is 0 when the destination was already up to date.

    Raises:
        NotFound: the source store does not exist.
        InvalidArgument: source and destination are the same store, or a bad ``since``.
        ExperimentNotFound / RunNotFound: a requested experiment or run is not at the source.
    """
    started = time.perf_counter()
    source_uri = existing_store_uri(source)
    dest_uri = config.resolve_tracking_uri(os.fspath(destination)) if destination else config.get_tracking_uri()
    if source_uri == dest_uri:
        raise InvalidArgument(f"source and destination are the same store ({describe_uri(source_uri)})")
    options = CopyOptions(
        experiments=tuple(experiments),
        run_ids=tuple(run_ids),
        since=parse_since(since),
        artifacts=artifacts,
        registry=registry,
        dry_run=dry_run,
        batch_size=batch_size,
    )
    report = SyncReport(source=describe_uri(source_uri), destination=describe_uri(dest_uri), dry_run=dry_run)
    with ExitStack() as stack:
        source_store = SqlTrackingStore(source_uri, config.get_artifact_root(source_uri))
        stack.callback(source_store.close)
        source_registry = SqlRegistryStore.from_tracking_store(source_store) if registry else None
        dest = stack.enter_context(
            open_destination(dest_uri, destination_root(dest_uri, destination_artifact_root), dry_run)
        )
        dest_registry = SqlRegistryStore.from_tracking_store(dest) if registry else None
        source_view = CairnSource(source_store, source_registry, report.source)
        with SyncProgress(progress, "sync") as bar:
            Copier(source_view, dest, dest_registry, report, options, bar).copy()
    report.elapsed = time.perf_counter() - started
    return report


def existing_store_uri(uri: str | os.PathLike[str]) -> str:
    """The database URL of an existing cairn store (a SQLite file must exist; nothing is created).

    Raises:
        NotFound: no SQLite file at that path.
    """
    resolved = config.resolve_tracking_uri(os.fspath(uri))
    if resolved.startswith("sqlite:///"):
        path = Path(resolved[len("sqlite:///") :])
        if not path.is_file():
            raise NotFound(
                f"no cairn store at {os.fspath(uri)!r} ({path} does not exist); "
                "for an MLflow store (./mlruns, mlflow.db) use `cairn import-mlflow`"
            )
    return resolved


def destination_root(dest_uri: str, explicit: str | None) -> str:
    """The artifact root for experiments created at the destination (see :func:`sync`)."""
    if explicit:
        return explicit
    if dest_uri.startswith("sqlite:///") and dest_uri != config.get_tracking_uri():
        return str(Path(dest_uri[len("sqlite:///") :]).parent / "artifacts")
    return config.get_artifact_root(dest_uri)


@contextmanager
def open_destination(dest_uri: str, artifact_root: str, dry_run: bool) -> Iterator[SqlTrackingStore]:
    """The destination store; for a dry run against a SQLite file that does not exist yet, an empty
    throwaway store stands in, so that a dry run creates nothing."""
    missing = dest_uri.startswith("sqlite:///") and not Path(dest_uri[len("sqlite:///") :]).exists()
    if dry_run and missing:
        with tempfile.TemporaryDirectory(prefix="cairn-dry-run-") as tmp:
            store = SqlTrackingStore(f"sqlite:///{Path(tmp) / 'cairn.db'}", artifact_root)
            try:
                yield store
            finally:
                store.close()
        return
    store = SqlTrackingStore(dest_uri, artifact_root)
    try:
        yield store
    finally:
        store.close()


def parse_since(value: datetime | date | str | int | None) -> int | None:
    """Milliseconds since the epoch of a ``since`` argument (naive times are local time)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"since must be a date, a datetime or milliseconds, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument(
                f"since {value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]"
            ) from None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.astimezone()  # local time
    return int(value.astimezone(timezone.utc).timestamp() * 1000)


def describe_uri(uri: str) -> str:
    """A store URI for reports: a SQLite file's path, or the URL with its password hidden."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///") :]
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except ArgumentError:
        return uri
