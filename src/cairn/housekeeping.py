"""``cairn gc``: purge soft-deleted runs for good and clean what interrupted writes left behind."""

from __future__ import annotations

import os
import time
from typing import Any

import click
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def _client(ctx: click.Context) -> Any:
    from cairn.tracking.client import Client

    return Client(ctx.obj.get("store"), ctx.obj.get("artifact_root"))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_age(text: str, option: str = "--older-than") -> int:
    """'30d', '12h', '0s' -> milliseconds."""
    from cairn.errors import InvalidArgument

    if len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit():
        raise InvalidArgument(f"{option} takes a number and a unit s, m, h or d (e.g. 30d), got {text!r}")
    return int(text[:-1]) * _UNITS[text[-1]] * 1000


def _local_artifact_dirs(client: Any) -> list[str]:
    """The local artifact directories of every experiment (deleted ones too), none inside another."""
    from cairn.artifacts import LocalArtifactStore, get_artifact_store
    from cairn.tracking.entities import ViewType

    roots = set()
    for experiment in client.search_experiments(ViewType.ALL, 50_000):
        store = get_artifact_store(experiment.artifact_location)
        if isinstance(store, LocalArtifactStore) and os.path.isdir(store.root):
            roots.add(os.path.realpath(store.root))
    return [root for root in sorted(roots) if not any(root.startswith(other + os.sep) for other in roots)]


def _sweep_leftovers(client: Any, stale_after: str, dry_run: bool) -> None:
    """Remove (or restore) what killed artifact writes left behind; see :mod:`cairn.artifacts.leftovers`."""
    from cairn.artifacts.leftovers import LeftoverAction, clean_leftover, find_leftovers

    older_than = _parse_age(stale_after, "--stale-after") / 1000
    count = freed = 0
    for root in _local_artifact_dirs(client):
        for leftover in find_leftovers(root, older_than=older_than):
            restore = leftover.action is LeftoverAction.RESTORE
            if dry_run:
                verb = f"would restore {leftover.original} from" if restore else "would remove"
            elif not clean_leftover(leftover):
                continue
            else:
                verb = f"restored {leftover.original} from" if restore else "removed"
            console.print(f"{verb} {leftover.path} ({leftover.size} bytes)", highlight=False, soft_wrap=True)
            count += 1
            freed += 0 if restore else leftover.size
    verb = "would free" if dry_run else "freed"
    summary = f"{count} leftover(s) of interrupted writes {'found' if dry_run else 'cleaned'}, {verb} {freed} bytes"
    console.print(summary, highlight=False, soft_wrap=True)


@click.command()
@click.option("--older-than", default="0s", show_default=True, help="Only runs deleted at least this long ago.")
@click.option("--run-id", "run_ids", multiple=True, help="Only these deleted runs (and no leftover sweep).")
@click.option(
    "--stale-after",
    default="1h",
    show_default=True,
    help="Also clean leftovers of killed writes (.cairn-tmp-*, .cairn-old-*) in local artifact "
    "directories that nothing modified for this long.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be purged or cleaned.")
@click.pass_context
def gc(ctx: click.Context, older_than: str, run_ids: tuple[str, ...], stale_after: str, dry_run: bool) -> None:
    """Purge soft-deleted runs and their artifacts for good; clean leftovers of killed artifact writes."""
    from cairn.artifacts import get_artifact_store

    client = _client(ctx)
    cutoff = int(time.time() * 1000) - _parse_age(older_than)
    candidates = client.store.deleted_run_ids(older_than=cutoff)
    if run_ids:
        wanted = set(run_ids)
        missing = wanted - set(candidates)
        for run_id in sorted(missing):
            err_console.print(f"[yellow]skipped[/yellow] {run_id}: not a soft-deleted run (or deleted too recently)")
        candidates = [r for r in candidates if r in wanted]
    for run_id in candidates:
        if dry_run:
            console.print(f"would purge run {run_id}")
            continue
        artifact_uri = client.store.get_run(run_id).info.artifact_uri
        get_artifact_store(artifact_uri).delete(None)
        client.store.purge_run(run_id)
        console.print(f"purged run {run_id}")
    console.print(f"{len(candidates)} run(s) {'to purge' if dry_run else 'purged'}")
    if not run_ids:
        _sweep_leftovers(client, stale_after, dry_run)
