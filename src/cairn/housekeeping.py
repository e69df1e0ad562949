"""``cairn gc``: purge soft-deleted runs for good and clean what interrupted writes left behind."""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
import time
from pathlib import Path
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


def _report(leftover: Any, dry_run: bool) -> bool:
    """Print (and unless ``dry_run``, do) the removal or restore of one leftover; ``False`` if it changed meanwhile."""
    from cairn.artifacts.leftovers import LeftoverAction, clean_leftover

    restore = leftover.action is LeftoverAction.RESTORE
    if dry_run:
        verb = f"would restore {leftover.original} from" if restore else "would remove"
    elif not clean_leftover(leftover):
        return False
    else:
        verb = f"restored {leftover.original} from" if restore else "removed"
    console.print(f"{verb} {leftover.path} ({leftover.size} bytes)", highlight=False, soft_wrap=True)
    return True


def _summary(count: int, what: str, freed: int, dry_run: bool) -> None:
    verb = "would free" if dry_run else "freed"
    line = f"{count} {what} {'found' if dry_run else 'cleaned'}, {verb} {freed} bytes"
    console.print(line, highlight=False, soft_wrap=True)


def _sweep_leftovers(client: Any, older_than: float, dry_run: bool) -> None:
    """Remove (or restore) what killed artifact writes left behind; see :mod:`cairn.artifacts.leftovers`."""
    from cairn.artifacts.leftovers import LeftoverAction, find_leftovers

    count = freed = 0
    for root in _local_artifact_dirs(client):
        for leftover in find_leftovers(root, older_than=older_than):
            if _report(leftover, dry_run):
                count += 1
                freed += 0 if leftover.action is LeftoverAction.RESTORE else leftover.size
    _summary(count, "leftover(s) of interrupted writes", freed, dry_run)


def _run_exists(client: Any) -> Any:
    """``run_id -> bool``: whether the store holds that run (active or soft-deleted)."""
    from cairn.errors import RunNotFound

    def exists(run_id: str) -> bool:
        try:
            client.store.get_run(run_id)
        except RunNotFound:
            return False
        return True

    return exists


def _sweep_empty_run_dirs(client: Any, older_than: float, dry_run: bool) -> None:
    """Remove run directories holding nothing (left by purges, or by runs that never wrote) of runs that are gone."""
    from cairn.artifacts.leftovers import find_empty_run_dirs, remove_empty_tree

    count = 0
    exists = _run_exists(client)
    for root in _local_artifact_dirs(client):
        for path in find_empty_run_dirs(root, is_live=exists, older_than=older_than):
            if not dry_run and not remove_empty_tree(path):
                continue
            console.print(
                f"{'would remove' if dry_run else 'removed'} empty run directory {path}",
                highlight=False,
                soft_wrap=True,
            )
            count += 1
    console.print(f"{count} empty run director{'y' if count == 1 else 'ies'} {'found' if dry_run else 'removed'}")


STAGING_ENV = "CAIRN_CHECKPOINT_STAGING"


def _checkpoint_staging(client: Any) -> tuple[Path, bool]:
    """The client's checkpoint staging area, and whether it belongs to this store alone (beside its SQLite file).

    The same place as :func:`cairn.checkpoint.runs.staging_root`, found without importing that module
    (it imports torch, which ``cairn gc`` must not need); a test keeps the two equal.
    """
    explicit = os.environ.get(STAGING_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve(), False
    uri = str(getattr(client.store, "db_uri", ""))
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent / "staging", True
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"cairn-staging-{user}", False


def _sweep_checkpoint_staging(client: Any, older_than: float, dry_run: bool) -> None:
    """Partial checkpoint writes of killed processes, and the staging of runs the store no longer has."""
    from cairn.artifacts.leftovers import find_checkpoint_leftovers

    root, own = _checkpoint_staging(client)
    count = freed = 0
    live = _run_exists(client) if own else None
    for leftover in find_checkpoint_leftovers(root, is_live=live, older_than=older_than):
        if _report(leftover, dry_run):
            count += 1
            freed += leftover.size
    _summary(count, f"leftover(s) in the checkpoint staging area {root}", freed, dry_run)


def _sweep_temp_dirs(older_than: float, dry_run: bool) -> None:
    """``cairn-tmp-<pid>-*`` staging directories of dead processes in the system temp dir."""
    from cairn.artifacts.leftovers import find_dead_temp_dirs

    count = freed = 0
    for leftover in find_dead_temp_dirs(older_than=older_than):
        if _report(leftover, dry_run):
            count += 1
            freed += leftover.size
    _summary(count, f"staging director(ies) of dead processes in {tempfile.gettempdir()}", freed, dry_run)


def _purge(client: Any, run_id: str) -> None:
    """Delete the run's artifacts, its checkpoint staging and the run; then its emptied directories."""
    from cairn.artifacts import LocalArtifactStore, get_artifact_store
    from cairn.artifacts.leftovers import remove_empty_tree

    run = client.store.get_run(run_id)
    store = get_artifact_store(run.info.artifact_uri)
    store.delete(None)
    staging, own = _checkpoint_staging(client)
    if own:
        shutil.rmtree(staging / run_id, ignore_errors=True)
    client.store.purge_run(run_id)
    if isinstance(store, LocalArtifactStore):
        experiment = get_artifact_store(client.store.get_experiment(run.info.experiment_id).artifact_location)
        if isinstance(experiment, LocalArtifactStore):  # <experiment root>/<run_id>/ is left empty
            remove_empty_tree(os.path.dirname(store.root), up_to=experiment.root)


@click.command()
@click.option("--older-than", default="0s", show_default=True, help="Only runs deleted at least this long ago.")
@click.option("--run-id", "run_ids", multiple=True, help="Only these deleted runs (and no leftover sweep).")
@click.option(
    "--stale-after",
    default="1h",
    show_default=True,
    help="Also clean, once nothing modified them for this long: leftovers of killed writes (.cairn-tmp-*, "
    ".cairn-old-*) in local artifact directories, empty directories of runs that are gone, partial "
    "checkpoints and purged runs' checkpoint staging, and cairn-tmp-<pid>-* directories of dead processes "
    "in the system temp dir.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be purged or cleaned.")
@click.pass_context
def gc(ctx: click.Context, older_than: str, run_ids: tuple[str, ...], stale_after: str, dry_run: bool) -> None:
    """Purge soft-deleted runs and their artifacts for good; clean leftovers of killed artifact writes."""
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
        _purge(client, run_id)
        console.print(f"purged run {run_id}")
    console.print(f"{len(candidates)} run(s) {'to purge' if dry_run else 'purged'}")
    if not run_ids:
        older = _parse_age(stale_after, "--stale-after") / 1000
        _sweep_empty_run_dirs(client, older, dry_run)
        _sweep_leftovers(client, older, dry_run)
        _sweep_checkpoint_staging(client, older, dry_run)
        _sweep_temp_dirs(older, dry_run)
