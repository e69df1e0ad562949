"""What a sync or an import did: counts of what was copied, and notes on what was not."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["ImportReport", "Note", "SyncReport"]


@dataclass(frozen=True, slots=True)
class Note:
    """One thing that was not copied, or not copied as it is.

    Attributes:
        subject: what it is about (``run 3f2a...``, ``experiment 'demo'``, ``model 'churn' v3``).
        message: what happened and why.
    """

    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


_COUNT_LABELS = {
    "experiments": "experiments created",
    "runs_created": "runs created",
    "runs_updated": "runs updated",
    "params": "params",
    "tags": "tags",
    "metric_points": "metric points",
    "superseded_flags": "points marked superseded",
    "run_infos": "run status/end time/name changes",
    "runs_deleted": "runs marked deleted",
    "artifact_files": "artifact files",
    "artifact_bytes": "artifact bytes",
    "registered_models": "registered models created",
    "model_versions": "model versions",
    "aliases": "aliases set",
    "registry_updates": "registry updates (stages, tags, descriptions)",
    "logged_models": "logged models (MLflow 3)",
}


@dataclass(slots=True)
class SyncReport:
    """Counts of what a sync wrote (or, with ``dry_run``, would write) at the destination.

    A second sync of unchanged stores reports :attr:`total` ``== 0``. Runs already complete at the
    destination are counted in :attr:`runs_seen` only.

    Attributes:
        source: the source store, as given.
        destination: the destination store (password hidden).
        dry_run: nothing was written.
        runs_seen: source runs selected by the filters.
        skipped: things not copied (conflicts, deleted experiments, invalid keys, ...), each with why.
        elapsed: seconds the whole operation took.
    """

    source: str
    destination: str
    dry_run: bool = False
    runs_seen: int = 0
    experiments: int = 0
    runs_created: int = 0
    runs_updated: int = 0
    params: int = 0
    tags: int = 0
    metric_points: int = 0
    superseded_flags: int = 0
    run_infos: int = 0
    runs_deleted: int = 0
    artifact_files: int = 0
    artifact_bytes: int = 0
    registered_models: int = 0
    model_versions: int = 0
    aliases: int = 0
    registry_updates: int = 0
    skipped: list[Note] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """Every count by field name (``runs_seen`` aside: it counts what was looked at)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in _COUNT_LABELS}

    @property
    def total(self) -> int:
        """How many things were (or would be) written; 0 when the destination was already up to date."""
        return sum(value for name, value in self.counts.items() if name != "artifact_bytes")

    @property
    def notes(self) -> list[Note]:
        return list(self.skipped)

    def summary_table(self) -> Table:
        """A rich table of the counts, for the command line."""
        from rich.table import Table

        table = Table(title="Would copy (dry run)" if self.dry_run else "Copied", title_justify="left")
        table.add_column("what")
        table.add_column("count", justify="right", overflow="fold")
        table.add_row("from", self.source)
        table.add_row("to", self.destination)
        table.add_row("source runs looked at", f"{self.runs_seen:,}")
        for name, value in self.counts.items():
            text = _size(value) if name == "artifact_bytes" else f"{value:,}"
            table.add_row(_COUNT_LABELS[name], text, style=None if value else "dim")
        table.add_row("notes", f"{len(self.notes):,}", style="yellow" if self.notes else "dim")
        table.add_row("seconds", f"{self.elapsed:.1f}")
        return table


@dataclass(slots=True)
class ImportReport(SyncReport):
    """A :class:`SyncReport` for ``cairn import-mlflow``.

    Attributes:
        logged_models: MLflow 3 logged models whose files were placed in a run's artifacts (or in the
            experiment's ``models/`` folder when they belong to no run).
        unrepresented: MLflow data cairn has no place for (dataset inputs, trace records, logged
            model params/metrics/tags, ...), each named; nothing is dropped without a note here.
    """

    logged_models: int = 0
    unrepresented: list[Note] = field(default_factory=list)

    @property
    def notes(self) -> list[Note]:
        return [*self.skipped, *self.unrepresented]


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    return f"{value:,.1f} TB"  # pragma: no cover - loop always returns
