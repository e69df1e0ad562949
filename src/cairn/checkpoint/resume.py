"""The resume planner: which run, which checkpoint, verified, and whether the run continues or forks.

One place for every integration (plain PyTorch, Lightning, Transformers):

- :func:`resolve_run_id`: the run to resume: the one named, else ``CAIRN_RUN_ID`` (else ``MLFLOW_RUN_ID``),
  else the active run;
- :func:`plan_resume`: find the checkpoint asked for (``"latest"``, a step, or a name), materialise and verify
  it; a damaged newest checkpoint is skipped with a :class:`ResumeWarning` naming it and the one used;
  the plan says whether training continues the same run (the checkpoint is the newest intact one) or forks
  it (an older one was chosen);
- :func:`continue_run` / :func:`fork_run`: carry the plan out in the tracking store (points after the
  checkpoint's step superseded, or a fork carrying the history up to it);
- :func:`nothing_to_resume`: a run asked to resume has no checkpoint: a run that logged nothing is started
  in; one with history is never restarted inside it (a :class:`~cairn.errors.CheckpointError`, or with
  ``"if_possible"`` a :class:`ResumeWarning` and a new run).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cairn.checkpoint.formats import CheckpointFormat, StoredCheckpoint
from cairn.checkpoint.run_checkpoints import RunCheckpoints
from cairn.errors import ArtifactNotFound, CheckpointCorrupt, CheckpointError, InvalidArgument
from cairn.tracking import env
from cairn.tracking.client import Client, now_ms

__all__ = [
    "IF_POSSIBLE",
    "RUN_ID_ENV",
    "NoCheckpoint",
    "ResumePlan",
    "ResumeWarning",
    "continue_run",
    "fork_run",
    "nothing_to_resume",
    "plan_resume",
    "resolve_run_id",
]

RUN_ID_ENV = "CAIRN_RUN_ID"
IF_POSSIBLE = "if_possible"


class ResumeWarning(UserWarning):
    """A resume that restores less than asked: a damaged newest checkpoint skipped, a data position that
    cannot be restored, no checkpoint (``resume="if_possible"``: a new run)."""


class NoCheckpoint(CheckpointError, ArtifactNotFound):
    """The run has no (such) checkpoint. Also an :class:`~cairn.errors.ArtifactNotFound`."""


# -- which run ---------------------------------------------------------------------------------------


def resolve_run_id(run_id: str | None = None, *, use_active: bool = True) -> str | None:
    """The run to resume: ``run_id``, else ``$CAIRN_RUN_ID``, else ``$MLFLOW_RUN_ID``, else (``use_active``) the
    active run, else None."""
    if run_id:
        return run_id
    from_env = env.get(env.RUN_ID)
    if from_env:
        return from_env
    if use_active:
        from cairn.tracking import fluent

        active = fluent.active_run()
        if active is not None:
            return active.info.run_id
    return None


def require_run_id(run_id: str | None = None, *, use_active: bool = True) -> str:
    """:func:`resolve_run_id`, or an error saying how to name the run.

    Raises:
        InvalidArgument: no run can be determined.
    """
    found = resolve_run_id(run_id, use_active=use_active)
    if not found:
        where = ", or start the run first (cairn.start_run())" if use_active else ""
        raise InvalidArgument(f"no run to resume: pass run_id= or set {RUN_ID_ENV} (or MLFLOW_RUN_ID){where}")
    return found


# -- which checkpoint ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePlan:
    """A verified checkpoint to resume from, and where training goes on.

    Attributes:
        run_id: the run the checkpoint belongs to.
        checkpoint: the stored checkpoint chosen.
        path: its verified local copy.
        newest_step: the step of the run's newest intact checkpoint.
        skipped: damaged newer checkpoints passed over (their problems).
    """

    run_id: str
    checkpoint: StoredCheckpoint
    path: Path
    newest_step: int
    skipped: tuple[str, ...] = field(default=())

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def fork(self) -> bool:
        """True when an older checkpoint than the newest intact one was chosen: the run forks at it."""
        return self.checkpoint.step < self.newest_step


Which = str | int | Callable[[list[StoredCheckpoint]], list[StoredCheckpoint]]


def plan_resume(
    client: Client,
    run_id: str,
    *,
    fmt: CheckpointFormat,
    destination: Path,
    which: Which = "latest",
    checkpoints: RunCheckpoints | None = None,
) -> ResumePlan | None:
    """Find, materialise and verify the checkpoint of ``run_id`` to resume from.

    Args:
        fmt: the checkpoint format.
        destination: the directory the verified copy is put in.
        which: ``"latest"`` (the newest that verifies; damaged newer ones are skipped with a
            :class:`ResumeWarning`), a step (``global_step`` for Lightning), a checkpoint name, or a function
            picking the candidates (newest first) from the complete checkpoints (newest first).
        checkpoints: the run's :class:`RunCheckpoints` if the caller has one.

    Returns:
        The plan, or ``None`` when ``which`` is ``"latest"`` and the run has no complete checkpoint.

    Raises:
        NoCheckpoint: no checkpoint matches ``which`` (the message lists those available).
        CheckpointCorrupt: the requested one (or, for ``"latest"``, every one) is damaged.
        InvalidArgument: ``which`` has another type.
    """
    run = checkpoints or RunCheckpoints(client, run_id, fmt)
    newest_first = sorted(run.list(), key=lambda e: (e.order, e.step), reverse=True)
    candidates = _candidates(newest_first, which, run_id, fmt)
    if candidates is None:
        return None
    problems: list[str] = []
    damaged: set[str] = set()
    for entry in candidates:
        try:
            path = run.materialize(entry, destination)
        except CheckpointCorrupt as exc:
            if which != "latest":
                raise
            problems.append(f"{entry.name}: {exc}")
            damaged.add(entry.name)
            continue
        if problems:
            warnings.warn(
                f"cairn: run {run_id}: the newest checkpoint(s) are damaged ({'; '.join(problems)}); "
                f"resuming from {entry.name} (step {entry.step}) instead",
                ResumeWarning,
                stacklevel=3,
            )
        newest = max((e.step for e in newest_first if e.name not in damaged), default=entry.step)
        return ResumePlan(run_id, entry, path, newest, tuple(problems))
    raise CheckpointCorrupt(f"no valid {fmt.label} checkpoint in run {run_id}: " + "; ".join(problems))


def _candidates(
    newest_first: list[StoredCheckpoint], which: Which, run_id: str, fmt: CheckpointFormat
) -> list[StoredCheckpoint] | None:
    if which == "latest":
        return newest_first or None
    if callable(which):
        return which(newest_first)
    if isinstance(which, int) and not isinstance(which, bool):
        found = [e for e in newest_first if e.global_step == which]
        if not found:
            available = sorted({e.global_step for e in newest_first if e.global_step >= 0})
            raise NoCheckpoint(
                f"run {run_id} has no checkpoint at step {which} ({fmt.label} format; available steps: "
                f"{', '.join(map(str, available)) or 'none'})"
            )
        return found
    if isinstance(which, str):
        found = [e for e in newest_first if e.name == which]
        if not found:
            raise NoCheckpoint(f"run {run_id} has no {fmt.label} checkpoint named {which!r}")
        return found
    raise InvalidArgument(f"which must be 'latest', a step or a checkpoint name, got {which!r}")


# -- carrying the plan out ------------------------------------------------------------------------------


def claim_run(client: Client, run_id: str) -> None:
    """The one place a process takes over ``run_id`` to continue it: take the run's resume lease (kept
    until the run ends in this process; taking it again is a no-op). Call it before restoring anything.

    A store without leases (an MLflow tracking server) cannot guard the run: a run that has logged metrics
    is refused (resuming it needs a cairn server); one that logged nothing is trained in with a
    :class:`ResumeWarning`.

    Raises:
        RunLeased: another live process is resuming the run (see :mod:`cairn.checkpoint.lease`).
        NotImplementedError: the store has no leases and the run has logged metrics
            (:class:`~cairn.store.rest.errors.UnsupportedByServer` for a tracking server).
    """
    from cairn.checkpoint.lease import hold_resume_lease

    try:
        hold_resume_lease(client, run_id)
    except NotImplementedError as unsupported:  # a store without leases: an MLflow tracking server
        _without_leases(client, run_id, unsupported)


def _without_leases(client: Client, run_id: str, unsupported: NotImplementedError) -> None:
    """The store cannot lease ``run_id`` (nor hide points): a run with history is refused; a run that logged
    nothing may be trained in (nothing to restore or hide), with a warning that nothing guards it."""
    if client.get_run(run_id).data.metrics:
        raise unsupported
    warnings.warn(
        f"cairn: the tracking store cannot lease run {run_id} to this process ({unsupported}); it has logged "
        "nothing, so training starts in it, but nothing stops another process from training it at the same "
        "time, and if this process dies the run can only be resumed through a cairn server",
        ResumeWarning,
        stacklevel=4,
    )


def continue_run(client: Client, run_id: str, step: int) -> int:
    """Continue ``run_id`` after ``step`` in this process: claim it, then supersede (keep, hide) the points a
    dead process logged after ``step``. Returns how many points were superseded.

    Raises:
        RunLeased: another live process is resuming the run.
        NotImplementedError: the store cannot lease the run or hide its points (an MLflow tracking server:
            :class:`~cairn.store.rest.errors.UnsupportedByServer`, whose message says what to do instead)
            and the run has logged metrics.
    """
    claim_run(client, run_id)
    client.flush()
    try:
        return int(client.store.supersede_metrics_after(run_id, step) or 0)
    except NotImplementedError:
        if client.get_run(run_id).data.metrics:
            raise
        return 0  # nothing logged: nothing to hide (claim_run warned that the run is not leased)


def fork_run(client: Client, run_id: str, step: int) -> str:
    """A new run (tagged ``cairn.forkedFrom``) carrying ``run_id``'s history up to ``step``; returns its id."""
    client.flush()
    return client.store.fork_run(run_id, step, start_time=now_ms()).info.run_id


def nothing_to_resume(client: Client, run_id: str, *, if_possible: bool, what: str = "checkpoints/") -> str | None:
    """``run_id`` was asked to resume and has no checkpoint. Returns the run to train in from scratch.

    A run that logged no metric yet (made by a launcher) is that run. A run with history is never restarted
    inside it: a :class:`NoCheckpoint` error, or with ``if_possible`` a :class:`ResumeWarning` and a new
    run in the same experiment (its id is returned; the caller makes it active).

    Args:
        what: where the checkpoints would be, for the message.

    Raises:
        NoCheckpoint: the run has history and ``if_possible`` is False.
    """
    run = client.get_run(run_id)
    if not run.data.metrics:
        return run_id
    message = (
        f"run {run_id} has logged metrics but no checkpoint to resume from (none was taken, or its "
        f"{what} were deleted); restarting inside it would log its steps twice"
    )
    if not if_possible:
        raise NoCheckpoint(f"{message}. Pass resume={IF_POSSIBLE!r} to start a new run instead, or unset {RUN_ID_ENV}.")
    new_id = client.create_run(run.info.experiment_id).info.run_id
    warnings.warn(f"cairn: {message}; training starts from scratch in a new run {new_id}", ResumeWarning, 3)
    return new_id
