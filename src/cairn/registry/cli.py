"""``cairn models ...``: list registered models and versions, move aliases and stages.

Attached to the main command group (``main.add_command(models)``); the group's ``ctx.obj`` carries
``store`` and ``artifact_root``, and the main group turns cairn errors into one red line.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Console
from rich.table import Table

console = Console()

_STAGE_STYLE = {"Production": "green", "Staging": "cyan", "Archived": "dim", "None": "white"}


def _client(ctx: click.Context) -> Any:
    from cairn.registry.client import RegistryClient

    obj = ctx.obj or {}
    return RegistryClient(obj.get("store"), obj.get("artifact_root"))


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _stage(stage: str) -> str:
    return f"[{_STAGE_STYLE.get(stage, 'white')}]{stage}[/]"


@click.group()
def models() -> None:
    """Registered models: list them, their versions, aliases and stages."""


@models.command("list")
@click.option("--filter", "filter_string", default=None, help="e.g. \"name LIKE 'churn%'\".")
@click.option("--max-results", "-n", default=100, show_default=True)
@click.pass_context
def models_list(ctx: click.Context, filter_string: str | None, max_results: int) -> None:
    """Registered models with their newest version and aliases."""
    found = _client(ctx).search_registered_models(filter_string, max_results)
    table = Table(title=f"Registered models ({len(found)})", title_justify="left")
    for column in ("name", "latest", "stages", "aliases", "updated"):
        table.add_column(column, overflow="fold", no_wrap=column in ("latest", "updated"))
    table.add_column("description", overflow="fold")
    for model in found:
        versions = sorted(model.latest_versions, key=lambda v: int(v.version))
        stages = ", ".join(f"{v.current_stage}: v{v.version}" for v in versions if v.current_stage != "None")
        table.add_row(
            model.name,
            versions[-1].version if versions else "-",
            stages or "-",
            ", ".join(f"@{alias} -> v{version}" for alias, version in sorted(model.aliases.items())) or "-",
            _time(model.last_updated_timestamp),
            model.description or "",
        )
    console.print(table)


@models.command("versions")
@click.argument("name")
@click.option("--max-results", "-n", default=100, show_default=True)
@click.pass_context
def models_versions(ctx: click.Context, name: str, max_results: int) -> None:
    """Versions of NAME, newest first."""
    client = _client(ctx)
    client.get_registered_model(name)  # an unknown name is an error, not an empty table
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    found = client.search_model_versions(f"name = '{escaped}'", max_results)
    table = Table(title=f"Versions of {name} ({len(found)})", title_justify="left")
    table.add_column("version", no_wrap=True, min_width=7)
    table.add_column("stage", no_wrap=True, min_width=10)
    for column in ("aliases", "run id", "created", "source"):
        table.add_column(column, overflow="fold")
    for version in found:
        table.add_row(
            version.version,
            _stage(version.current_stage),
            ", ".join(f"@{alias}" for alias in version.aliases) or "-",
            version.run_id or "-",
            _time(version.creation_timestamp),
            version.source,
        )
    console.print(table)


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", required=False)
@click.option("--delete", is_flag=True, help="Remove the alias instead of setting it.")
@click.pass_context
def models_alias(ctx: click.Context, name: str, alias: str, version: str | None, delete: bool) -> None:
    """Point ALIAS of NAME at VERSION (models:/NAME@ALIAS), or remove it with --delete."""
    client = _client(ctx)
    if delete:
        if version is not None:
            raise click.UsageError("--delete takes no VERSION")
        previous = client.get_registered_model(name).aliases.get(alias)
        if previous is None:
            console.print(f"model {name} has no alias @{alias}; nothing to delete")
            return
        client.delete_registered_model_alias(name, alias)
        console.print(f"deleted alias @{alias} of {name} (was version {previous})")
        return
    if version is None:
        raise click.UsageError("missing VERSION (or pass --delete to remove the alias)")
    previous = client.get_registered_model(name).aliases.get(alias)
    client.set_registered_model_alias(name, alias, version)
    moved = f" (moved from version {previous})" if previous and previous != str(int(version)) else ""
    console.print(f"models:/{name}@{alias} -> version {int(version)}{moved}")


@models.command("stage")
@click.argument("name")
@click.argument("version")
@click.argument("stage")
@click.option("--archive-existing", is_flag=True, help="Archive the other versions in that stage.")
@click.pass_context
def models_stage(ctx: click.Context, name: str, version: str, stage: str, archive_existing: bool) -> None:
    """Move VERSION of NAME to STAGE (None, Staging, Production, Archived)."""
    moved = _client(ctx).transition_model_version_stage(name, version, stage, archive_existing)
    console.print(f"{name} version {moved.version} is now in {_stage(moved.current_stage)}")
