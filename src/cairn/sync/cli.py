"""``cairn sync``, ``cairn import-mlflow`` and ``cairn import-tensorboard``.

Attached to the ``cairn`` group by :mod:`cairn.cli`.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from cairn.sync.report import ImportReport, SyncReport

__all__ = ["import_mlflow_command", "import_tensorboard_command", "sync_command"]

_console = Console()
_err_console = Console(stderr=True)


def _common_options(function: Any) -> Any:
    options = [
        click.option("--to", "destination", help="Destination store (default: --store / CAIRN_TRACKING_URI)."),
        click.option(
            "--to-artifact-root",
            "artifact_root",
            help="Artifact root for experiments created at the destination (default: --artifact-root / "
            "CAIRN_ARTIFACT_ROOT, else artifacts/ beside a SQLite file).",
        ),
        click.option("--experiment", "-e", "experiments", multiple=True, help="Only this experiment (repeatable)."),
        click.option("--run-id", "run_ids", multiple=True, help="Only this run (repeatable)."),
        click.option("--since", help="Only runs started, ended or still running since DATE (YYYY-MM-DD[THH:MM])."),
        click.option("--artifacts/--no-artifacts", default=True, show_default=True, help="Copy artifact files."),
        click.option("--registry/--no-registry", default=True, show_default=True, help="Copy the model registry."),
        click.option("--dry-run", is_flag=True, help="Show what would be copied; write nothing."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _destination(ctx: click.Context, destination: str | None) -> str | None:
    return destination or (ctx.obj or {}).get("store")


def _artifact_root(ctx: click.Context, artifact_root: str | None) -> str | None:
    return artifact_root or (ctx.obj or {}).get("artifact_root")


def _print(report: SyncReport, *, kind: str = "MLflow") -> None:
    _console.print(report.summary_table())
    skipped = report.skipped
    unrepresented = report.unrepresented if isinstance(report, ImportReport) else []
    if skipped:
        _console.print(f"[yellow]{len(skipped)} thing(s) not copied:[/yellow]")
        for note in skipped:
            _console.print(f"  - {note}", highlight=False, markup=False)
    if unrepresented:
        _console.print(f"[yellow]{len(unrepresented)} note(s) on {kind} data cairn does not represent:[/yellow]")
        for note in unrepresented:
            _console.print(f"  - {note}", highlight=False, markup=False)
    if report.dry_run:
        _console.print("[dim]dry run: nothing was written[/dim]")
    elif report.total == 0:
        _console.print("[green]destination already up to date[/green]")


@click.command("sync")
@click.option("--from", "source", help="Source cairn store: directory, sqlite:///file.db, postgresql://...")
@click.option(
    "--spool",
    "spool",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[DIR]",
    help="Send what was spooled while a tracking server was unreachable (default: every spool under "
    "CAIRN_SPOOL_DIR / ~/.cache/cairn/spool) to the server it was written for, or to --to.",
)
@_common_options
@click.pass_context
def sync_command(
    ctx: click.Context,
    source: str | None,
    spool: str | None,
    destination: str | None,
    artifact_root: str | None,
    experiments: tuple[str, ...],
    run_ids: tuple[str, ...],
    since: str | None,
    artifacts: bool,
    registry: bool,
    dry_run: bool,
) -> None:
    """Copy runs, metric histories, artifacts and the registry from one cairn store to another.

    Idempotent: running it again copies only what is new (runs still RUNNING at the source are
    completed by a later sync; an interrupted sync resumes without duplicates). Run ids and model
    version numbers are kept, so runs:/ and models:/ URIs resolve at the destination.

    With --spool, send instead what training processes spooled while their tracking server was unreachable
    (metric points, checkpoints, the runs' final status), each exactly once.
    """
    if spool is not None:
        _sync_spool(spool, destination)
        return
    if source is None:
        raise click.UsageError("give --from STORE (copy runs) or --spool [DIR] (send spooled records)")
    from cairn.sync.api import sync

    report = sync(
        source,
        _destination(ctx, destination),
        destination_artifact_root=_artifact_root(ctx, artifact_root),
        experiments=experiments,
        run_ids=run_ids,
        since=since,
        artifacts=artifacts,
        registry=registry,
        dry_run=dry_run,
    )
    _print(report)
    sys.stdout.flush()


def _sync_spool(directory: str, destination: str | None) -> None:
    from pathlib import Path

    from rich.markup import escape

    from cairn.sync.spool_replay import replay_spools

    report = replay_spools(Path(directory).expanduser() if directory else None, to=destination)
    if not report.runs:
        _console.print(f"nothing spooled under {report.root}", highlight=False)
        return
    for run in report.runs:
        sent = run.sent.describe()
        if run.problem:
            line = f"[red]run {run.run_id} ({run.server}): {escape(run.problem)}; sent so far: {sent}[/red]"
        else:
            line = f"[green]run {run.run_id} ({run.server}): sent {sent}; removed from the spool[/green]"
        _console.print(line, highlight=False, soft_wrap=True)
    for run in report.runs:
        if run.torn:
            _err_console.print(f"[yellow]cairn: {escape(run.torn)}[/yellow]", highlight=False, soft_wrap=True)
    if not report.ok:
        left = [run for run in report.runs if run.problem]
        _err_console.print(
            f"[red]cairn: {len(left)} run(s) are still spooled under {report.root}; run `cairn sync --spool` again "
            "once the server answers (or send them elsewhere with --to URI).[/red]",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()
        raise SystemExit(1)
    _console.print(f"[green]sent {report.points:,} spooled points of {len(report.runs)} run(s)[/green]")
    sys.stdout.flush()


@click.command("import-mlflow")
@click.option(
    "--from",
    "source",
    required=True,
    help="MLflow store: ./mlruns directory, sqlite:///mlflow.db, postgresql://... or http(s):// tracking server.",
)
@_common_options
@click.pass_context
def import_mlflow_command(
    ctx: click.Context,
    source: str,
    destination: str | None,
    artifact_root: str | None,
    experiments: tuple[str, ...],
    run_ids: tuple[str, ...],
    since: str | None,
    artifacts: bool,
    registry: bool,
    dry_run: bool,
) -> None:
    """Import an MLflow store (through the mlflow package): experiments, runs, full metric histories,
    artifacts and logged models, registered models with versions, aliases and stages.

    Idempotent like `cairn sync`; what cairn cannot represent is listed at the end.
    """
    from cairn.sync.mlflow_import import import_mlflow

    report = import_mlflow(
        source,
        _destination(ctx, destination),
        destination_artifact_root=_artifact_root(ctx, artifact_root),
        experiments=experiments,
        run_ids=run_ids,
        since=since,
        artifacts=artifacts,
        registry=registry,
        dry_run=dry_run,
    )
    _print(report)
    sys.stdout.flush()


@click.command("import-tensorboard")
@click.argument("logdir", type=click.Path(path_type=str))
@click.option(
    "--experiment",
    "-e",
    help="Experiment to import into, created if missing (default: LOGDIR's base name).",
)
@click.option("--to", "destination", help="Destination store (default: --store / CAIRN_TRACKING_URI).")
@click.option(
    "--to-artifact-root",
    "artifact_root",
    help="Artifact root if the experiment is created (default: --artifact-root / CAIRN_ARTIFACT_ROOT).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be imported; write nothing.")
@click.pass_context
def import_tensorboard_command(
    ctx: click.Context,
    logdir: str,
    experiment: str | None,
    destination: str | None,
    artifact_root: str | None,
    dry_run: bool,
) -> None:
    """Import a TensorBoard log directory: one run per directory holding event files (named by its
    path below LOGDIR), scalars as metric histories with steps and wall times, hparams as params
    (an add_hparams sub-directory is merged into its run when it is the only one).

    Idempotent: importing again adds only points appended since. Histograms, images, text, graphs
    and other plugin data are counted in the report, not imported; a truncated event file is read
    up to the damaged record and named. LOGDIR is only read. Needs pip install 'cairn[tensorboard]'.
    """
    from rich.markup import escape

    from cairn.errors import CairnError
    from cairn.sync.tensorboard_import import import_tensorboard

    try:
        report = import_tensorboard(
            logdir,
            _destination(ctx, destination),
            experiment=experiment,
            destination_artifact_root=_artifact_root(ctx, artifact_root),
            dry_run=dry_run,
        )
    except CairnError as exc:  # as the cairn group prints it, with the message's [brackets] kept
        _err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    _print(report, kind="TensorBoard")
    sys.stdout.flush()
