"""``cairn server``: serve MLflow's REST API, the artifact proxy and the UI over the configured store."""

from __future__ import annotations

import click

from cairn.server.binding import host_option, is_loopback, port_option

__all__ = ["server"]


@click.command()
@host_option("Address to bind.")
@port_option(lowest=1)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Server processes.")
@click.option(
    "--serve-artifacts/--no-serve-artifacts",
    default=True,
    show_default=True,
    help="Proxy artifacts through the server (clients see mlflow-artifacts:/ locations and need no storage "
    "credentials); without it clients read and write the artifact root themselves.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    help="A Host header the UI accepts besides the bound address (repeatable), exactly as browsers send it: "
    "the public name behind a reverse proxy (cairn.example.com), or name:port.",
)
@click.option(
    "--auth",
    is_flag=True,
    help="Require a token or password on every request and check each user's permissions (users and grants: "
    "`cairn users ...`, kept in the store's database).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Allow a non-loopback --host without --auth (anyone who reaches the port can read, change and delete "
    "every run).",
)
@click.pass_context
def server(
    ctx: click.Context,
    host: str,
    port: int,
    workers: int,
    serve_artifacts: bool,
    allow_hosts: tuple[str, ...],
    auth: bool,
    insecure_no_auth: bool,
) -> None:
    """Serve MLflow's REST API (/api/2.0/mlflow/...), the artifact proxy and the cairn UI.

    Uses the same store as every other command (--store / CAIRN_TRACKING_URI, --artifact-root /
    CAIRN_ARTIFACT_ROOT). Point MLflow clients and training machines at http://HOST:PORT. Several
    workers (or several servers) can share one PostgreSQL store: the server keeps no state of its own.
    With --auth every request needs a user's token or password and each user sees and changes only what
    it was granted (`cairn users --help`); serve it over TLS through a reverse proxy (SECURITY.md).
    """
    if not is_loopback(host) and not auth and not insecure_no_auth:
        raise click.UsageError(
            f"refusing to bind to {host} with no authentication (no --auth): anyone who can reach that address "
            "could read, change and delete every run and model. Pass --auth (create users with "
            "`cairn users add NAME --admin`), "
            "bind to 127.0.0.1, or pass --insecure-no-auth to accept the risk."
        )
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise click.ClickException(
            f"cairn server needs starlette and uvicorn: pip install 'cairn[ui]' ({exc})"
        ) from exc
    from cairn.server.app import ENV_ALLOW_HOSTS, ENV_AUTH, ENV_SERVE_ARTIFACTS, create_server_app, server_hosts
    from cairn.tracking.client import Client

    obj = ctx.obj or {}
    client = Client(obj.get("store"), obj.get("artifact_root"))
    hosts = server_hosts(host, port, allow_hosts)
    app = create_server_app(
        client, serve_artifacts=serve_artifacts, host=host, port=port, allowed_hosts=hosts, auth=auth
    )
    if auth and app.state.ctx.users.count() == 0:
        click.secho(
            "no users yet: every request will be refused until you create one, e.g. "
            "`cairn users add admin --admin` (it prints the admin's token), with the same --store",
            fg="yellow",
            err=True,
        )
    artifact_root = app.state.ctx.artifact_root
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}"
    proxy = "proxied at /api/2.0/mlflow-artifacts" if serve_artifacts else "not proxied (clients use it directly)"
    click.echo(
        f"cairn server: MLflow REST API and UI at {url} | store: {app.state.store_label} | "
        f"artifact root: {artifact_root} ({proxy}) | workers: {workers} (Ctrl-C to stop)"
    )
    if not is_loopback(host) and not auth:
        click.secho(f"warning: bound to {host} without authentication (--insecure-no-auth)", fg="yellow", err=True)
    if auth:
        click.echo(
            "authentication on: clients send CAIRN_TRACKING_TOKEN / MLFLOW_TRACKING_TOKEN or "
            "MLFLOW_TRACKING_USERNAME+PASSWORD; put TLS in front (see SECURITY.md) so tokens never cross a network "
            "in clear text"
        )
    options = {"host": host, "port": port, "log_level": "warning", "access_log": False, "server_header": False}
    if workers == 1:
        uvicorn.run(app, **options)  # type: ignore[arg-type]
        return
    # Worker processes build their own app from the environment (uvicorn's app factory).
    import os

    client.store.close()
    if obj.get("store"):  # otherwise workers resolve the same default (same environment and directory)
        os.environ["CAIRN_TRACKING_URI"] = obj["store"]
    os.environ["CAIRN_ARTIFACT_ROOT"] = artifact_root
    os.environ[ENV_SERVE_ARTIFACTS] = "1" if serve_artifacts else "0"
    os.environ["CAIRN_SERVER_HOST"] = host
    os.environ["CAIRN_SERVER_PORT"] = str(port)
    os.environ[ENV_AUTH] = "1" if auth else "0"
    os.environ[ENV_ALLOW_HOSTS] = ",".join(allow_hosts)
    uvicorn.run("cairn.server.app:app_from_environment", factory=True, workers=workers, **options)  # type: ignore[arg-type]
