"""``cairn models serve`` and ``cairn models predict`` (being built: issue 16 item 5)."""

from __future__ import annotations

import click


@click.command("serve")
def serve() -> None:
    """Serve a model over MLflow's scoring protocol (not built yet)."""
    raise click.ClickException("cairn models serve is not built yet")


@click.command("predict")
def predict() -> None:
    """Score a file with a model (not built yet)."""
    raise click.ClickException("cairn models predict is not built yet")
