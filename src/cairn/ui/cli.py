"""``cairn ui``: serve the web UI over the configured store (starlette + uvicorn, loaded on use)."""

from __future__ import annotations

import click

from cairn.server.binding import host_option, port_option

__all__ = ["ui"]


@click.command()
@host_option()
@port_option()
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    help="Extra host name the browser may use to reach the server (repeatable), e.g. behind an SSH tunnel alias.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the UI in the default browser.")
@click.option(
    "--auth",
    is_flag=True,
    help="Require a login (users of `cairn users ...`, kept in the store's database) and show each user only "
    "what it may read.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Allow a non-loopback --host without --auth (anyone who reaches the port can read, change and delete "
    "every run).",
)
@click.pass_context
def ui(
    ctx: click.Context,
    host: str,
    port: int,
    allow_hosts: tuple[str, ...],
    open_browser: bool,
    auth: bool,
    insecure_no_auth: bool,
) -> None:
    """Browse, chart and compare runs and models in a local web app.

    Uses the same store as every other command (--store / CAIRN_TRACKING_URI, default ./cairn-runs).
    The same app as `cairn server` (MLflow's REST API at /api/2.0/mlflow/... and the artifact proxy
    answer here too), bound to 127.0.0.1 by default. Without --auth it has no login: anyone who can
    reach the port can read and delete runs, so any other address is refused unless --auth or
    --insecure-no-auth is given, and only requests addressed to the allowed host names are answered.
    """
    from cairn.server.binding import is_loopback

    if not is_loopback(host) and not auth and not insecure_no_auth:
        raise click.UsageError(
            f"refusing to bind to {host} with no authentication (no --auth): anyone who can reach that address "
            "could read, change and delete every run and model. Pass --auth (create users with "
            "`cairn users add NAME --admin --password`), "
            "bind to 127.0.0.1 (reach it through an SSH tunnel), or pass --insecure-no-auth to accept the risk."
        )
    try:
        import uvicorn

        from cairn.server.app import create_server_app
        from cairn.ui.security import allowed_hosts_for
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise click.ClickException(f"cairn ui needs starlette and uvicorn: pip install 'cairn[ui]' ({exc})") from exc
    from cairn.tracking.client import Client

    obj = ctx.obj or {}
    client = Client(obj.get("store"), obj.get("artifact_root"))
    if port == 0:
        import socket

        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
    # The same app as `cairn server`: MLflow's REST API and the artifact proxy answer here too.
    app = create_server_app(
        client, host=host, port=port, allowed_hosts=allowed_hosts_for(host, port, allow_hosts), auth=auth
    )
    users = app.state.ctx.users
    if users is not None and users.count() == 0:
        click.secho("no users yet: create one with `cairn users add NAME --admin --password`", fg="yellow", err=True)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}/"
    click.echo(f"cairn ui: serving {app.state.store_label} at {url} (Ctrl-C to stop)")
    if not is_loopback(host) and not auth:
        click.secho(
            f"warning: bound to {host} with no authentication (--insecure-no-auth): anyone reaching this port can "
            "delete runs",
            fg="yellow",
            err=True,
        )
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
