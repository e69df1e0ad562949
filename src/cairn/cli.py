"""The ``cairn`` command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cairn.errors import CairnError
from cairn.housekeeping import gc
from cairn.projects.cli import run as run_command
from cairn.registry.cli import models
from cairn.server.auth.cli import users
from cairn.server.cli import server
from cairn.serving.cli import predict, serve
from cairn.sync.cli import import_mlflow_command, import_tensorboard_command, sync_command
from cairn.ui.cli import ui

console = Console()
err_console = Console(stderr=True)


def _client(ctx: click.Context) -> Any:
    from cairn.tracking.client import Client

    return Client(ctx.obj.get("store"), ctx.obj.get("artifact_root"))


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: int | None, end: int | None) -> str:
    if not start:
        return "-"
    seconds = ((end or int(time.time() * 1000)) - start) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


_STATUS_STYLE = {"RUNNING": "cyan", "FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "SCHEDULED": "dim"}


_STORE_HELP = "Tracking store: directory, sqlite:///file.db, postgresql://... or http(s)://server."
_ROOT_HELP = "Artifact root for new experiments (path or URL)."
# (ctx.obj key, option names): MLflow's names are aliases of cairn's.
_STORE_OPTIONS = (
    ("store", ("--store", "--backend-store-uri"), _STORE_HELP),
    ("artifact_root", ("--artifact-root", "--default-artifact-root"), _ROOT_HELP),
)


def _late_store_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``cairn SUBCOMMAND --store X``: overrides the group's value (environment included), unless the
    group was given another value on the command line too."""
    if value is None:
        return
    key = str(param.name).removeprefix("late_")
    obj = ctx.ensure_object(dict)
    given = obj.get("given_on_command_line", {}).get(key)
    if given is not None and given != value:
        names = " / ".join(param.opts)
        raise click.UsageError(
            f"{names} given twice with different values: {given!r} before the subcommand and {value!r} after it; "
            "give it once",
            ctx,
        )
    obj[key] = value


def _add_store_options(command: click.Command) -> None:
    """Give every (nested) subcommand the group's store options, so they may come after the subcommand."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_store_options(sub)
        return
    present = {name for param in command.params for name in param.opts}
    for key, names, help_text in _STORE_OPTIONS:
        if present.intersection(names):
            continue
        command.params.append(
            click.Option(
                list(names),
                f"late_{key}",
                expose_value=False,
                callback=_late_store_option,
                help=f"{help_text} Same as before the subcommand.",
            )
        )


class _CairnGroup(click.Group):
    """Turns cairn errors into one red line and exit code 1 instead of a traceback; every subcommand
    added to it (or to its subgroups) also takes ``--store`` / ``--artifact-root`` and their MLflow aliases."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _add_store_options(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CairnError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            sys.exit(1)


_CairnGroup.group_class = _CairnGroup


@click.group(cls=_CairnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "--backend-store-uri", "store", envvar="CAIRN_TRACKING_URI", help=_STORE_HELP)
@click.option(
    "--artifact-root", "--default-artifact-root", "artifact_root", envvar="CAIRN_ARTIFACT_ROOT", help=_ROOT_HELP
)
@click.version_option(package_name="cairn")
@click.pass_context
def main(ctx: click.Context, store: str | None, artifact_root: str | None) -> None:
    """cairn: track experiments and package models.

    --store and --artifact-root (or MLflow's --backend-store-uri and --default-artifact-root) may also
    come after the subcommand: `cairn ui --store ./runs`. -h is --help everywhere.
    """
    from click.core import ParameterSource

    ctx.ensure_object(dict)
    ctx.obj["store"] = store
    ctx.obj["artifact_root"] = artifact_root
    ctx.obj["given_on_command_line"] = {
        key: value
        for key, value in (("store", store), ("artifact_root", artifact_root))
        if ctx.get_parameter_source(key) is ParameterSource.COMMANDLINE
    }


# -- experiments -----------------------------------------------------------------------------------


@main.group()
def experiments() -> None:
    """List and create experiments."""


@experiments.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include deleted experiments.")
@click.pass_context
def experiments_list(ctx: click.Context, show_all: bool) -> None:
    from cairn.tracking.entities import ViewType

    client = _client(ctx)
    table = Table(title="Experiments", title_justify="left")
    for column in ("id", "name", "stage", "created", "artifact location"):
        table.add_column(column, overflow="fold")
    for exp in client.search_experiments(ViewType.ALL if show_all else ViewType.ACTIVE_ONLY, 50_000):
        table.add_row(
            exp.experiment_id, exp.name, exp.lifecycle_stage.value, _time(exp.creation_time), exp.artifact_location
        )
    console.print(table)


@experiments.command("create")
@click.argument("name")
@click.option("--artifact-location", help="Where this experiment's artifacts go.")
@click.pass_context
def experiments_create(ctx: click.Context, name: str, artifact_location: str | None) -> None:
    experiment_id = _client(ctx).create_experiment(name, artifact_location)
    console.print(f"created experiment [bold]{name}[/bold] with id {experiment_id}")


# -- runs ------------------------------------------------------------------------------------------


def _experiment_ids(client: Any, experiment: Sequence[str]) -> list[str]:
    from cairn.errors import ExperimentNotFound

    ids = []
    for ref in experiment or ("0",):
        found = client.get_experiment_by_name(ref)
        if found is not None:
            ids.append(found.experiment_id)
        elif ref.isdigit():
            ids.append(client.get_experiment(ref).experiment_id)
        else:
            raise ExperimentNotFound(f"no experiment named or numbered {ref!r}")
    return ids


@main.group()
def runs() -> None:
    """List, describe, delete and restore runs."""


@runs.command("list")
@click.option("--experiment", "-e", multiple=True, help="Experiment name or id (repeatable). Default: 0.")
@click.option("--filter", "filter_string", default="", help='MLflow filter, e.g. "metrics.acc > 0.9".')
@click.option("--order-by", multiple=True, help='e.g. "metrics.acc DESC" (repeatable).')
@click.option("--max-results", "-n", default=50, show_default=True)
@click.option("--deleted", is_flag=True, help="Show soft-deleted runs instead.")
@click.pass_context
def runs_list(
    ctx: click.Context,
    experiment: tuple[str, ...],
    filter_string: str,
    order_by: tuple[str, ...],
    max_results: int,
    deleted: bool,
) -> None:
    from cairn.tracking.entities import ViewType

    client = _client(ctx)
    page = client.search_runs(
        _experiment_ids(client, experiment),
        filter_string,
        ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY,
        max_results,
        list(order_by) or None,
    )
    metric_keys = sorted({k for run in page.items for k in run.data.metrics})[:6]
    table = Table(title=f"Runs ({len(page.items)}{'+' if page.next_page_token else ''})", title_justify="left")
    for column in ("run id", "name", "status", "started", "duration", *metric_keys):
        table.add_column(column, no_wrap=column == "run id")
    for run in page.items:
        info = run.info
        status = info.status.value
        table.add_row(
            info.run_id,
            info.run_name,
            f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]",
            _time(info.start_time),
            _duration(info.start_time, info.end_time),
            *(f"{run.data.metrics[k]:.6g}" if k in run.data.metrics else "" for k in metric_keys),
        )
    console.print(table)


@runs.command("describe")
@click.argument("run_id")
@click.pass_context
def runs_describe(ctx: click.Context, run_id: str) -> None:
    client = _client(ctx)
    run = client.get_run(run_id)
    info = run.info
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    for label, value in (
        ("run id", info.run_id),
        ("name", info.run_name),
        ("experiment", info.experiment_id),
        ("status", info.status.value),
        ("lifecycle", info.lifecycle_stage.value),
        ("user", info.user_id),
        ("started", _time(info.start_time)),
        ("ended", _time(info.end_time)),
        ("duration", _duration(info.start_time, info.end_time)),
        ("artifacts", info.artifact_uri),
    ):
        overview.add_row(label, str(value))
    console.print(overview)
    for title, values in (("Params", run.data.params), ("Metrics (latest)", run.data.metrics), ("Tags", run.data.tags)):
        if not values:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column("key")
        table.add_column("value", overflow="fold")
        for key in sorted(values):
            value = values[key]
            table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
        console.print(table)


@runs.command("delete")
@click.argument("run_ids", nargs=-1, required=True)
@click.pass_context
def runs_delete(ctx: click.Context, run_ids: tuple[str, ...]) -> None:
    """Soft-delete runs (restore them with `cairn runs restore`, purge with `cairn gc`)."""
    client = _client(ctx)
    for run_id in run_ids:
        client.delete_run(run_id)
        console.print(f"deleted run {run_id}")


@runs.command("restore")
@click.argument("run_ids", nargs=-1, required=True)
@click.pass_context
def runs_restore(ctx: click.Context, run_ids: tuple[str, ...]) -> None:
    client = _client(ctx)
    for run_id in run_ids:
        client.restore_run(run_id)
        console.print(f"restored run {run_id}")


# -- db --------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Bring the store's schema to this version of cairn."""
    from cairn.store._sql import upgrade_schema
    from cairn.tracking import config

    uri = config.resolve_tracking_uri(ctx.obj["store"]) if ctx.obj.get("store") else config.get_tracking_uri()
    before, after = upgrade_schema(uri)
    if before == after:
        console.print(f"schema already at revision {after}")
    else:
        console.print(f"upgraded schema from {before or 'empty'} to {after}")


# -- doctor ----------------------------------------------------------------------------------------


@main.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Show the resolved store, artifact root and versions, and check they work; exit 1 if a check failed."""
    import importlib.metadata as md
    import platform

    from cairn.tracking import config

    failed: list[str] = []

    uri = config.resolve_tracking_uri(ctx.obj["store"]) if ctx.obj.get("store") else config.get_tracking_uri()
    root = ctx.obj.get("artifact_root") or config.get_artifact_root(uri)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("tracking store", _redact(uri))
    table.add_row("artifact root", root)
    table.add_row("python", platform.python_version())
    for package in (
        "cairn",
        "sqlalchemy",
        "alembic",
        "fsspec",
        "torch",
        "lightning",
        "transformers",
        "scikit-learn",
        "onnx",
    ):
        try:
            table.add_row(package, md.version(package))
        except md.PackageNotFoundError:
            table.add_row(package, "[dim]not installed[/dim]")
    try:
        from cairn.store._sql import current_revision

        started = time.perf_counter()
        store = config.get_store(uri, root)
        experiments = store.search_experiments(max_results=50_000)
        table.add_row(
            "store check",
            f"[green]ok[/green] ({len(experiments)} experiments, {(time.perf_counter() - started) * 1000:.0f} ms)",
        )
        table.add_row("schema revision", str(current_revision(uri)))
    except Exception as exc:  # a diagnosis reports every failure instead of dying with a traceback
        detail = str(exc) if isinstance(exc, CairnError) else f"{type(exc).__name__}: {exc}"
        table.add_row("store check", f"[red]failed[/red]: {escape(detail)}")
        failed.append("store check")
    console.print(table)
    if failed:
        err_console.print(f"[red]doctor: {len(failed)} check(s) failed:[/red] {', '.join(failed)}", highlight=False)
        ctx.exit(1)


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return uri


main.add_command(gc)
main.add_command(run_command)
models.add_command(serve)
models.add_command(predict)
main.add_command(models)
main.add_command(ui)
main.add_command(server)
main.add_command(users)
main.add_command(sync_command)
main.add_command(import_mlflow_command)
main.add_command(import_tensorboard_command)

if __name__ == "__main__":
    main()
