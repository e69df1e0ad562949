"""``cairn sync`` and ``cairn import-mlflow`` (attached to the ``cairn`` group by :mod:`cairn.cli`)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from cairn.sync.report import ImportReport, SyncReport

__all__ = ["import_mlflow_command", "sync_command"]

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


def _print(report: SyncReport) -> None:
    _console.print(report.summary_table())
    skipped = report.skipped
    unrepresented = report.unrepresented if isinstance(report, ImportReport) else []
    if skipped:
        _console.print(f"[yellow]{len(skipped)} thing(s) not copied:[/yellow]")
        for note in skipped:
            _console.print(f"  - {note}", highlight=False, markup=False)
    if unrepresented:
        _console.print(f"[yellow]{len(unrepresented)} note(s) on MLflow data cairn does not represent:[/yellow]")
        for note in unrepresented:
            _console.print(f"  - {note}", highlight=False, markup=False)
    if report.dry_run:
        _console.print("[dim]dry run: nothing was written[/dim]")
    elif report.total == 0:
        _console.print("[green]destination already up to date[/green]")


@click.command("sync")
@click.option(
    "--from", "source", required=True, help="Source cairn store: directory, sqlite:///file.db, postgresql://..."
)
@_common_options
@click.pass_context
def sync_command(
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
    """Copy runs, metric histories, artifacts and the registry from one cairn store to another.

    Idempotent: running it again copies only what is new (runs still RUNNING at the source are
    completed by a later sync; an interrupted sync resumes without duplicates). Run ids and model
    version numbers are kept, so runs:/ and models:/ URIs resolve at the destination.
    """
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
