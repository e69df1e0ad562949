"""Resume bookkeeping of the Lightning integration: the run a logger or callback logs into, and
:func:`checkpoint_path` (see :mod:`cairn.autolog.lightning`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cairn.autolog._lightning_frameworks import CHECKPOINTS_DIR, INDEX_FILE, logger
from cairn.autolog._lightning_uploads import _CheckpointIndex, _read_index
from cairn.checkpoint.formats import LIGHTNING, StoredCheckpoint
from cairn.checkpoint.resume import (
    NoCheckpoint,
    continue_run,
    fork_run,
    nothing_to_resume,
    plan_resume,
    resolve_run_id,
)
from cairn.errors import InvalidArgument
from cairn.tracking.entities import RunStatus

if TYPE_CHECKING:
    from cairn.tracking.client import Client


# ------------------------------------------------------------------------------------------------ resume bookkeeping


@dataclass(frozen=True)
class _PendingResume:
    """Set by :func:`checkpoint_path`: the next CairnLogger continues ``run_id`` (or forks it)."""

    run_id: str
    path: str
    global_step: int
    log_step: int | None
    fork: bool


_pending_resume: _PendingResume | None = None
_superseded: set[tuple[str, int]] = set()
_pending_lock = threading.Lock()


def _take_pending() -> _PendingResume | None:
    global _pending_resume
    with _pending_lock:
        pending, _pending_resume = _pending_resume, None
    return pending


def _supersede_once(client: Client, run_id: str, step: int) -> None:
    """Hide the points logged after ``step`` (by a process that died after its checkpoint), once per process."""
    if (run_id, step) in _superseded:
        return
    hidden = continue_run(client, run_id, step)
    _superseded.add((run_id, step))
    if hidden:
        logger.info("cairn: resumed run %s at step %d; %d later points superseded", run_id, step, hidden)


def _log_step(trainer: Any) -> int:
    """The step Lightning hands to loggers (batches that stepped an optimizer), else the global step."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return int(value) if isinstance(value, int) else int(trainer.global_step)


def _open_run(
    requested: str | None,
    *,
    client: Client | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> tuple[str, bool]:
    """The run to log into and whether the caller owns it (ends it).

    Without ``client`` (the fluent API's): ``requested``; else the run a :func:`checkpoint_path` call prepared
    (continued from its checkpoint, or a fork of it) when no run is active; else the active run (not owned);
    else a new run (or ``CAIRN_RUN_ID``'s). With an injected ``client``: ``requested`` (set RUNNING again), else a
    new run in ``experiment_id`` (the default experiment when None); the fluent run stack and the pending resume
    are fluent-API notions and are not consulted.
    """
    from cairn.tracking import fluent

    if client is not None:
        if requested is not None:
            client.update_run(requested, status=RunStatus.RUNNING)
            return requested, True
        run = client.create_run(experiment_id or "0", tags=dict(tags or {}) or None, run_name=run_name)
        return run.info.run_id, True
    client = fluent._get_client()
    active = fluent.active_run()
    run_id = requested
    pending = _take_pending() if run_id is None and active is None else None
    supersede_at: int | None = None
    if pending is not None:
        run_id = pending.run_id
        if pending.fork and pending.log_step is not None:
            run_id = fork_run(client, pending.run_id, pending.log_step)
        else:
            supersede_at = pending.log_step
    owned = True
    if run_id is not None:
        if active is not None and active.info.run_id == run_id:
            owned = False
        elif active is None:
            fluent.start_run(run_id=run_id, tags=dict(tags or {}) or None)
        else:
            client.store.update_run_info(run_id, status=RunStatus.RUNNING)
    elif active is not None:
        run_id, owned = active.info.run_id, False
    else:
        run_id = fluent.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}) or None
        ).info.run_id
    if supersede_at is not None:
        _supersede_once(client, run_id, supersede_at)
    return run_id, owned


def _experiment_id_for(client: Client, name: str) -> str:
    from cairn.errors import ResourceAlreadyExists

    found = client.get_experiment_by_name(name)
    if found is None:
        with contextlib.suppress(ResourceAlreadyExists):
            client.create_experiment(name)
        found = client.get_experiment_by_name(name)
        assert found is not None
    return found.experiment_id


# ------------------------------------------------------------------------------------------------ checkpoint_path


def checkpoint_path(
    run_id: str | None = None,
    step: Literal["latest", "last", "best"] | int = "latest",
    *,
    dst_path: str | os.PathLike[str] | None = None,
    which: Literal["last", "best"] | int | None = None,
) -> str:
    """Download a Lightning checkpoint of a run and return its local path, for ``trainer.fit(ckpt_path=...)``.

    The file's sha256 is checked against the one recorded at upload. The next :class:`CairnLogger`
    of this process (with no ``run_id`` of its own and no active run) then continues ``run_id``: the
    points logged after the checkpoint are superseded, so metrics continue without duplicates.
    Choosing a checkpoint older than the newest one forks a new run instead (tags
    ``cairn.forkedFrom``/``cairn.forkedAtStep``), carrying the history up to it: nothing is hidden.

    The same shape as ``cairn.pytorch.checkpoint_path`` and ``cairn.transformers.checkpoint_path``.
    Lightning loads the file with ``torch.load`` (see the module docstring about ``weights_only``).

    Args:
        run_id: the run; default ``CAIRN_RUN_ID``, else the active run.
        step: ``"latest"`` (or ``"last"``: the newest upload that verifies; a damaged newer one is skipped with
            a :class:`~cairn.checkpoint.resume.ResumeWarning` naming it and the one used), ``"best"``
            (``ModelCheckpoint.best_model_path`` of the first ``ModelCheckpoint``), or a global step.
        dst_path: directory to download into (default: a new temporary directory).
        which: the former name of ``step`` (deprecated).

    Raises:
        InvalidArgument: no run id, or a bad ``step``.
        CheckpointError: the run has no Lightning checkpoint, or none matching ``step`` (the message
            lists the steps available).
        CheckpointCorrupt: the downloaded file does not match its recorded sha256 (for ``"latest"``, older
            intact checkpoints are tried first).
    """
    global _pending_resume
    from cairn.tracking import fluent

    if which is not None:
        warnings.warn("checkpoint_path(which=) is deprecated: use step=", DeprecationWarning, stacklevel=2)
        step = which
    run_id = resolve_run_id(run_id)
    if not run_id:
        raise InvalidArgument("checkpoint_path needs a run_id (or CAIRN_RUN_ID in the environment, or an active run)")
    client = fluent._get_client()
    store = client.artifact_store(run_id)
    index = _read_index(store)
    if index is None or not index.entries:
        raise NoCheckpoint(f"run {run_id} has no Lightning checkpoints ({CHECKPOINTS_DIR}/{INDEX_FILE} is missing)")
    chosen: Any = "latest" if step in ("latest", "last") else (lambda newest: _select(index, newest, step, run_id))
    destination = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="cairn-lightning-"))
    plan = plan_resume(client, run_id, fmt=LIGHTNING, destination=destination, which=chosen)
    assert plan is not None  # the index has entries
    log_step = plan.step if plan.step >= 0 else None
    with _pending_lock:
        _pending_resume = _PendingResume(
            run_id, str(plan.path), max(plan.checkpoint.global_step, 0), log_step, plan.fork and log_step is not None
        )
    return str(plan.path)


def _select(
    index: _CheckpointIndex, newest_first: list[StoredCheckpoint], which: Any, run_id: str
) -> list[StoredCheckpoint]:
    if which == "best":
        best = index.best.get("0")
        found = [e for e in newest_first if e.path == best]
        if not found:
            raise NoCheckpoint(f"run {run_id} records no best Lightning checkpoint")
        return found
    if isinstance(which, bool) or not isinstance(which, int):
        raise InvalidArgument(f"which must be 'latest', 'last', 'best' or a global step, got {which!r}")
    found = [e for e in newest_first if e.global_step == which]
    if not found:
        steps = sorted({e.global_step for e in newest_first if e.global_step >= 0})
        raise NoCheckpoint(f"run {run_id} has no Lightning checkpoint at global step {which}; available: {steps}")
    return found


def _resume_path(run_id: str, *, if_possible: bool = False) -> str | None:
    """The run's last checkpoint for ``fit(ckpt_path=...)``, or None when it has none: training then starts
    fresh in that run only if it logged nothing yet; a run with history is never restarted inside it
    (:class:`~cairn.checkpoint.resume.NoCheckpoint`, or with ``if_possible`` a ResumeWarning and a new run).
    """
    global _pending_resume
    from cairn.tracking import fluent

    try:
        return checkpoint_path(run_id, "latest")
    except NoCheckpoint:
        target = nothing_to_resume(
            fluent._get_client(), run_id, if_possible=if_possible, what=f"{CHECKPOINTS_DIR}/{INDEX_FILE}"
        )
        with _pending_lock:
            _pending_resume = _PendingResume(target or run_id, "", 0, None, False)
        return None
