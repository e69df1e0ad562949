"""``cairn sync --spool``: send what processes left in the spool of a tracking server that was unreachable.

Each server directory of the spool (:mod:`cairn.store.rest.spool`) is replayed to the server it was written
for (or to ``to``): every run's records in order, with the idempotency keys they were spooled with (the cairn
server stores each request once, however often it is replayed), the run's terminal status last. A run whose
records were all delivered is deleted from the spool; a server that does not answer keeps its records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn.errors import CairnError, StoreLocked
from cairn.store.rest.spool import Spool, SpoolRecord, SpoolSummary, default_root, server_dirs

if TYPE_CHECKING:
    from cairn.store.rest import RestTrackingStore

__all__ = ["RunReplay", "SpoolReplayReport", "replay_spools"]


@dataclass
class RunReplay:
    """One run's replay: what was sent, and what went wrong (``None``: everything was delivered)."""

    server: str
    run_id: str
    sent: SpoolSummary
    problem: str | None = None
    torn: str | None = None


@dataclass
class SpoolReplayReport:
    """Every run replayed; :attr:`ok` is False when something is left in the spool or was refused."""

    root: Path
    runs: list[RunReplay] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(run.problem is None for run in self.runs)

    @property
    def points(self) -> int:
        return sum(run.sent.points for run in self.runs)


def replay_spools(
    directory: Path | None = None,
    *,
    to: str | None = None,
    progress: bool | None = None,
) -> SpoolReplayReport:
    """Replay every server directory under ``directory`` (default: the spool root), or ``directory`` itself.

    Args:
        directory: a spool root, or one server's directory in it.
        to: send everything to this ``http(s)://`` server instead of the one each directory was written for.
        progress: draw a progress bar on stderr (default: when stderr is a terminal).
    """
    from cairn.store.rest import RestTrackingStore
    from cairn.sync.progress import stderr_is_terminal

    root = directory if directory is not None else default_root()
    report = SpoolReplayReport(root)
    spools = [Spool.open_dir(path, to) for path in server_dirs(root)]
    work = [(spool, run_id, spool.summary(run_id)) for spool in spools for run_id in spool.run_ids()]
    total = sum(summary.points + summary.checkpoints + (1 if summary.status else 0) for _, _, summary in work)
    show = stderr_is_terminal() if progress is None else progress
    with _Bar(show, total) as bar:
        for spool, run_id, _ in work:
            store = RestTrackingStore(spool.server_url)
            try:
                report.runs.append(_replay_run(spool, store, run_id, bar))
            finally:
                store.close()
    return report


def _replay_run(spool: Spool, store: RestTrackingStore, run_id: str, bar: _Bar) -> RunReplay:
    result = RunReplay(spool.server_url, run_id, SpoolSummary())

    def send(record: SpoolRecord) -> None:
        store.send_spooled(record, spool=spool)

    def advance(record: SpoolRecord) -> None:
        bar.advance(len(record.data.get("points", [])) if record.kind == "points" else 1)

    try:
        result.sent = spool.replay(run_id, send, after_each=advance)
        result.torn = result.sent.torn
    except StoreLocked as exc:
        result.problem = f"the server does not answer: {exc}"
    except CairnError as exc:
        result.problem = (
            f"the server refused a record: {type(exc).__name__}: {exc} (the records from that one on stay in "
            f"{spool.run(run_id).path}; delete that directory to give them up)"
        )
    return result


class _Bar:
    """A transient rich progress bar of records sent (points count one each), or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._enabled = enabled
        self._total = total
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Bar:
        if self._enabled:
            import sys

            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(
                TextColumn("sending the spool"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            progress.__enter__()
            self._task = progress.add_task("spool", total=self._total)
            self._progress = progress
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def advance(self, amount: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=amount)
