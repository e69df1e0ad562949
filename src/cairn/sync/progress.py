"""A progress bar for sync and import: runs done out of runs selected, with running counts."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cairn.sync.report import SyncReport

__all__ = ["SyncProgress", "stderr_is_terminal"]


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # closed stream
        return False


class SyncProgress:
    """A transient rich progress bar on stderr, or nothing when disabled.

    Args:
        enabled: draw it (``True`` draws it even when stderr is not a terminal); ``None`` draws it
            only when stderr is a terminal.
        description: label left of the bar.
    """

    def __init__(self, enabled: bool | None, description: str) -> None:
        self.enabled = stderr_is_terminal() if enabled is None else enabled
        self._forced = enabled is True
        self.description = description
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> SyncProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("runs  {task.fields[counts]}"),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr, force_terminal=self._forced or None),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=None, counts="")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def set_total(self, runs: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=runs)

    def advance(self, report: SyncReport, runs: int = 1) -> None:
        """One more run done; refresh the running counts from ``report``."""
        if self._progress is not None:
            counts = (
                f"{report.metric_points:,} points  {report.artifact_files:,} files "
                f"({report.artifact_bytes / 1e6:,.1f} MB)"
            )
            self._progress.update(self._task, advance=runs, counts=counts)
