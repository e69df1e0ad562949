"""``cairn users``: the users of ``cairn server --auth`` and their grants, in the configured store.

Acts on the store every command uses (``--store`` / ``CAIRN_TRACKING_URI``), which must be a SQLite or
PostgreSQL store: run it on a machine that reaches the database (the server's host, say).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from cairn.server.auth.permissions import Permission, ResourceKind

if TYPE_CHECKING:
    from cairn.server.auth.users import UserStore
    from cairn.tracking.client import Client

__all__ = ["users"]

console = Console()
_PERMISSIONS = click.Choice(["READ", "EDIT", "MANAGE"], case_sensitive=False)


def _client(ctx: click.Context) -> Client:
    """The client of the configured store, opened once per command."""
    from cairn.tracking.client import Client

    obj = ctx.ensure_object(dict)
    if "users_client" not in obj:
        obj["users_client"] = client = Client(obj.get("store"), obj.get("artifact_root"))
        ctx.call_on_close(client.store.close)
    opened: Client = obj["users_client"]
    return opened


def _store(ctx: click.Context) -> UserStore:
    from cairn.server.auth.users import user_store_for

    return user_store_for(_client(ctx))


def _experiment_id(ctx: click.Context, experiment: str) -> str:
    """An experiment id, or the id of the experiment with that name (an id is taken first, if it exists)."""
    from cairn.errors import ExperimentNotFound, NotFound

    client = _client(ctx)
    if experiment.isdecimal():
        try:
            return client.get_experiment(experiment).experiment_id
        except NotFound:
            pass
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ExperimentNotFound(f"no experiment with id or name {experiment!r} (`cairn experiments list` shows them)")
    return found.experiment_id


def _resource(ctx: click.Context, experiment: str | None, model: str | None) -> tuple[ResourceKind, str]:
    if (experiment is None) == (model is None):
        raise click.UsageError("give exactly one of --experiment ID_OR_NAME and --model NAME")
    if experiment is not None:
        return ResourceKind.EXPERIMENT, _experiment_id(ctx, experiment)
    assert model is not None
    return ResourceKind.REGISTERED_MODEL, model


def _show_token(name: str, token: str) -> None:
    click.echo(f"token: {token}")
    click.echo(
        f"Shown once (only its hash is stored). {name} sets CAIRN_TRACKING_TOKEN (or MLFLOW_TRACKING_TOKEN) to it; "
        f"`cairn users token {name}` makes a new one.",
        err=True,
    )


@click.group()
def users() -> None:
    """Users, tokens and permissions of `cairn server --auth` (kept in the store's database)."""


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An admin may do everything, on every experiment and model.")
@click.option(
    "--password",
    "ask_password",
    is_flag=True,
    help="Also set a password (asked for, hidden) for the UI's login page and MLFLOW_TRACKING_PASSWORD.",
)
@click.pass_context
def add(ctx: click.Context, name: str, admin: bool, ask_password: bool) -> None:
    """Create a user and print its token (once)."""
    password = click.prompt("password", hide_input=True, confirmation_prompt=True) if ask_password else None
    token = _store(ctx).add(name, admin=admin, password=password)
    click.echo(f"created {'admin' if admin else 'user'} {name}", err=True)
    _show_token(name, token)


@users.command("grant")
@click.argument("name")
@click.option("--experiment", help="Experiment id or name.")
@click.option("--model", help="Registered model name.")
@click.option("--permission", required=True, type=_PERMISSIONS, help="READ, EDIT or MANAGE.")
@click.pass_context
def grant(ctx: click.Context, name: str, experiment: str | None, model: str | None, permission: str) -> None:
    """Give a user READ, EDIT or MANAGE on an experiment or a registered model (replacing an earlier grant)."""
    kind, resource = _resource(ctx, experiment, model)
    level = Permission.parse(permission)
    _store(ctx).grant(name, kind, resource, level)
    click.echo(f"{name} has {level.name} on {kind.value} {resource}")


@users.command("revoke")
@click.argument("name")
@click.option("--experiment", help="Experiment id or name.")
@click.option("--model", help="Registered model name.")
@click.pass_context
def revoke(ctx: click.Context, name: str, experiment: str | None, model: str | None) -> None:
    """Take a user's grant on an experiment or a registered model away."""
    kind, resource = _resource(ctx, experiment, model)
    _store(ctx).revoke(name, kind, resource)
    click.echo(f"{name} has no permission on {kind.value} {resource} any more")


@users.command("list")
@click.pass_context
def list_command(ctx: click.Context) -> None:
    """The users, whether they are admins, and their grants."""
    found = _store(ctx).list_users()
    table = Table(title=f"Users ({len(found)})", title_justify="left")
    for column in ("name", "admin", "password", "created", "grants"):
        table.add_column(column)
    for user in found:
        grants = "\n".join(
            f"{'experiment' if g.kind is ResourceKind.EXPERIMENT else 'model'} {g.resource}: {g.permission.name}"
            for g in user.grants
        )
        created = datetime.fromtimestamp(user.created_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        table.add_row(user.name, "yes" if user.is_admin else "", "yes" if user.has_password else "", created, grants)
    console.print(table)


@users.command("remove")
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Delete a user and its grants; its token stops working at once."""
    _store(ctx).remove(name)
    click.echo(f"removed user {name}")


@users.command("token")
@click.argument("name")
@click.pass_context
def token(ctx: click.Context, name: str) -> None:
    """Give a user a new token (printed once); the old one stops working at once."""
    _show_token(name, _store(ctx).rotate_token(name))


@users.command("password")
@click.argument("name")
@click.option("--remove", "remove_password", is_flag=True, help="Remove the password (the token keeps working).")
@click.pass_context
def password(ctx: click.Context, name: str, remove_password: bool) -> None:
    """Set (asked for, hidden) or remove a user's password."""
    secret = None if remove_password else click.prompt("password", hide_input=True, confirmation_prompt=True)
    _store(ctx).set_password(name, secret)
    click.echo(f"{'removed' if secret is None else 'set'} the password of {name}")
