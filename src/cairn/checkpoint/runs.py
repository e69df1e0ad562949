"""Checkpoints of a run: log them into the run's artifacts, and resume training (and the run) from them.

:func:`log_checkpoint` captures the training state on the caller's thread (a memory copy into reused
buffers), then a background thread writes it atomically into a local staging directory, flushes the
run's queued metric points, and uploads it into the run's artifacts at ``checkpoints/step-<N>/`` with
``manifest.json`` uploaded last: a partial remote copy has no manifest and does not exist. Retention
(``keep_last``/``keep_best``) then deletes pruned checkpoints from the artifact store as well as from
the staging directory. Because the metric flush precedes the upload, every point logged before a
checkpoint is durable once that checkpoint is visible, so a resume never leaves a gap in a curve.

:func:`resume` downloads a checkpoint (the newest valid one by default; a local staging copy with the
same manifest is used instead when present), verifies it, loads it into the given objects and restores
the RNG. From the newest checkpoint it continues the *same* run: the run becomes the active run and the
points the dead process logged after the checkpoint's step are superseded (kept, hidden). From an older
checkpoint while newer ones exist it forks a new run (tagged ``cairn.forkedFrom``) carrying the history
up to that step and a copy of the checkpoint, so nothing of the original is overwritten.

Errors of the background work (disk full, upload failures) are raised by the next
:func:`log_checkpoint` (whose own state is queued nonetheless) or logging call (``log_metric``,
``log_metrics``, ``log_param``, ``log_batch``: after their data is queued), by :func:`flush_checkpoints`, and when
the run ends (``end_run``, leaving ``with start_run()``, interpreter exit); at run end a failed snapshot
still in memory is written once more before the error is raised.

Staging: ``$CAIRN_CHECKPOINT_STAGING/<run_id>/checkpoints``, else ``staging/`` beside a SQLite tracking
database, else a per-user directory in the system temp dir. It keeps the checkpoints not yet uploaded
and the newest uploaded one (which a resume on the same machine reads instead of downloading).

Every function takes ``client=``: a :class:`~cairn.tracking.client.Client` whose store (and artifact root)
holds the run, default the fluent API's. With an injected client the fluent API is left alone: ``run_id``
is required (or ``CAIRN_RUN_ID`` for the readers and :func:`resume`), no run is made the active run, and
the staging area is beside the client's SQLite database.

Under ``torch.distributed`` every rank calls :func:`log_checkpoint` at the same step: each rank's RNG
and data position are gathered to rank 0, which alone writes and uploads the checkpoint (one manifest
over every rank's files) and changes runs; other ranks' calls return ``None``. Every rank calls
:func:`resume`: each restores the objects and its own RNG and data position (see
:mod:`cairn.checkpoint.distributed`, also for a resume on another number of ranks).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cairn import background
from cairn.checkpoint import distributed, sharded
from cairn.checkpoint.capture import RestoredState, _unwrap, capture_training_state, restore_training_state
from cairn.checkpoint.formats import NATIVE, StoredCheckpoint
from cairn.checkpoint.local import TEMP_PREFIX, CheckpointInfo, scan_checkpoints, step_dirname
from cairn.checkpoint.manifest import MANIFEST_NAME, parse_manifest, read_manifest
from cairn.checkpoint.resume import (
    NoCheckpoint,
    ResumeWarning,
    claim_run,
    continue_run,
    fork_run,
    nothing_to_resume,
    plan_resume,
    require_run_id,
)
from cairn.checkpoint.retention import RetentionPolicy
from cairn.checkpoint.run_checkpoints import RunCheckpoints
from cairn.checkpoint.writer import AsyncCheckpointWriter
from cairn.errors import CheckpointCorrupt, CheckpointError, CheckpointWriteError, InvalidArgument
from cairn.tracking import config, fluent
from cairn.tracking.client import Client
from cairn.tracking.entities import RunStatus

__all__ = [
    "ARTIFACT_DIR",
    "LoggedCheckpoint",
    "ResumeState",
    "ResumeWarning",
    "checkpoint_path",
    "flush_checkpoints",
    "list_run_checkpoints",
    "log_checkpoint",
    "resume",
    "staging_dir",
]

ARTIFACT_DIR = "checkpoints"
"""Artifact directory of a run holding its checkpoints (``checkpoints/step-<N>/``)."""
STAGING_ENV = "CAIRN_CHECKPOINT_STAGING"


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedCheckpoint:
    """A checkpoint handed to :func:`log_checkpoint` (written in the background unless ``synchronous``)."""

    run_id: str
    step: int
    artifact_path: str
    """Where it lands in the run's artifacts, ``checkpoints/step-<N>``."""
    local_path: Path
    """Its directory in the staging area (present once written, possibly pruned later)."""


@dataclass
class ResumeState:
    """What :func:`resume` restored, and where training goes on.

    Attributes:
        step: the checkpoint's step (0 when nothing was restored).
        epoch: the checkpoint's epoch (``None`` when not recorded; 0 when nothing was restored).
        batch_in_epoch: batches of ``epoch`` consumed before the checkpoint.
        extra: the ``extra`` tree given to :func:`log_checkpoint`.
        run_id: the run training continues in: the same run, or the fork (``None`` when no run was
            named: ``autolog(resume=True)`` without ``CAIRN_RUN_ID``).
        forked_from: the original run when an older checkpoint was resumed into a fork.
        resumed: False when the run had no checkpoint yet (a fresh start; nothing was restored).
        path: the verified local checkpoint directory.
        metrics: the checkpoint's metrics (as given for ``keep_best``).
        user_state: with autolog, what the function given to ``cairn.pytorch.track_state`` returned at
            the checkpoint (``None`` otherwise).
    """

    step: int
    epoch: int | None
    batch_in_epoch: int | None
    extra: Any
    run_id: str | None
    forked_from: str | None = None
    resumed: bool = True
    path: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    user_state: dict[str, Any] | None = None
    _restored: RestoredState | None = field(default=None, repr=False)

    @property
    def dataloader_state(self) -> dict[str, Any] | None:
        """The data-loader position saved with the checkpoint, if any."""
        return None if self._restored is None else self._restored.dataloader_state

    def fast_forward(self, loader: Any) -> Iterator[Any]:
        """An iterator over the batches of ``loader`` the interrupted epoch had not consumed yet.

        Use it in place of ``iter(loader)`` for the resumed epoch only (a :class:`ResumableLoader` passed
        to :func:`resume` does this by itself). Without a restored checkpoint it is ``iter(loader)``.

        Raises:
            InvalidArgument: the checkpoint holds no data-loader position.
        """
        if self._restored is None:
            return iter(loader)
        return self._restored.fast_forward(loader)


# -- locations ---------------------------------------------------------------------------------------


def staging_root(client: Client | None = None) -> Path:
    """The directory holding every run's checkpoint staging area (see the module docstring)."""
    explicit = os.environ.get(STAGING_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    uri = config.get_tracking_uri() if client is None else str(getattr(client.store, "db_uri", ""))
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent / "staging"
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"cairn-staging-{user}"


def staging_dir(run_id: str, *, client: Client | None = None) -> Path:
    """The local directory where the checkpoints of ``run_id`` (in ``client``'s store) are written before upload."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
        raise InvalidArgument(f"invalid run id {run_id!r}")
    return staging_root(client) / run_id / ARTIFACT_DIR


def _artifact_path(name: str) -> str:
    return f"{ARTIFACT_DIR}/{name}"


# -- distributed -----------------------------------------------------------------------------------


def _rank() -> int:
    """This process's rank under an initialised ``torch.distributed`` group, else 0 (no torch import)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return 0
    return int(dist.get_rank())


# -- the per-run writer ------------------------------------------------------------------------------


@dataclass
class _Uploaded:
    """What this process knows of the run's remote checkpoints (listed once, then kept up to date)."""

    entries: dict[str, StoredCheckpoint] = field(default_factory=dict)


class _RunCheckpointer:
    """The background writer of one run's checkpoints in this process; uploads and pruning go through the
    run's :class:`~cairn.checkpoint.run_checkpoints.RunCheckpoints` on the writer thread, after the commit."""

    def __init__(self, run_id: str, client: Client) -> None:
        self.run_id = run_id
        self.client = client
        self.staging = staging_dir(run_id, client=client)
        self.policy = RetentionPolicy()
        self.checkpoints = RunCheckpoints(client, run_id, NATIVE)
        self._lock = threading.Lock()
        self._uploaded: _Uploaded | None = None
        self.writer = AsyncCheckpointWriter(self.staging, on_commit=self._on_commit)

    def _on_commit(self, info: CheckpointInfo) -> None:
        """On the writer thread: make the metrics durable, upload (manifest last), prune (remote and local)."""
        _flush_metrics(self.client)
        self.checkpoints.upload_dir(info.path, info.name)
        if self.checkpoints.spooled:  # the tracking server is unreachable: pruning waits for the uploads
            return
        with self._lock:
            policy = self.policy
            if self._uploaded is None:  # interrupted uploads of an earlier process are among these
                self._uploaded = _Uploaded({e.name: e for e in self.checkpoints.scan()})
            self._uploaded.entries[info.name] = _stored(info, (info.path / MANIFEST_NAME).read_bytes())
            known = list(self._uploaded.entries.values())
        doomed = self.checkpoints.prune(policy, entries=known)
        with self._lock:
            for name in doomed:
                self._uploaded.entries.pop(name, None)
        for name in doomed:
            shutil.rmtree(self.staging / name, ignore_errors=True)
        # Locally keep only this newest uploaded one (older ones were uploaded before it, in order).
        for local in scan_checkpoints(self.staging, verify_hashes=False):
            if local.step < info.step:
                shutil.rmtree(local.path, ignore_errors=True)

    def finish(self) -> None:
        """Wait for every write and upload and stop the writer. A snapshot whose write failed is written once
        more; if that works the earlier failure becomes a warning, else both are raised.

        Raises:
            CheckpointWriteError: a write or upload failed and could not be made good.
        """
        try:
            self._wait_for_writes()
            if self.writer.failed is not None:  # its error was already raised by a logging call
                raise CheckpointWriteError(
                    f"the checkpoint of step {self.writer.failed.state.step} could not be written earlier"
                ) from self.writer.failed.error
        except CheckpointWriteError as first:
            if self.writer.failed is None:  # an upload or pruning failure: nothing left to retry here
                raise
            try:
                self.writer.retry_failed()
                self._wait_for_writes()
            except CheckpointWriteError as second:
                raise CheckpointWriteError(f"{first}; writing it again at run end failed too: {second}") from first
            warnings.warn(
                f"cairn: {first} -- it was written on a second attempt when run {self.run_id} ended",
                RuntimeWarning,
                stacklevel=2,
            )
        finally:
            if not self.writer.pending:  # else closing would wait again for what outlived the exit bound
                with contextlib.suppress(CheckpointError):
                    self.writer.close()

    def _wait_for_writes(self) -> None:
        """Wait for the writer (and its uploads), within the exit drain's bound when the process is exiting."""
        left = background.exit_time_left()
        if left is None:
            self.writer.wait()
            return
        if not self.writer.drain(left):
            raise CheckpointWriteError(
                f"run {self.run_id}: {self.writer.pending} checkpoint(s) still being written or uploaded when the "
                f"exit drain's bound ran out ({background.EXIT_DRAIN_TIMEOUT_ENV}); what was written is in "
                f"{staging_dir(self.run_id)}"
            )
        self.writer.raise_errors()


_checkpointers: dict[str, _RunCheckpointer] = {}
_registry_lock = threading.Lock()


def _checkpointer(run_id: str, client: Client) -> _RunCheckpointer:
    with _registry_lock:
        found = _checkpointers.get(run_id)
        if found is not None and found.client.store is not client.store:
            raise InvalidArgument(
                f"run {run_id} is checkpointed into another store in this process; pass the same client="
            )
        if found is None or getattr(found.writer, "_closed", False):  # closed at interpreter exit
            fluent.add_end_run_hook(_on_run_end)  # idempotent
            found = _RunCheckpointer(run_id, client)
            _checkpointers[run_id] = found
        return found


def _client(client: Client | None) -> Client:
    return client if client is not None else fluent._get_client()


def _run_id(run_id: str | None, client: Client | None) -> str:
    """The run to read: ``run_id``, else ``CAIRN_RUN_ID``, else (fluent client only) the active run."""
    return require_run_id(run_id, use_active=client is None)


def _flush_metrics(client: Client) -> None:
    """Write this process's queued metric points (autolog's buffered ones included); errors stay queued."""
    autolog = sys.modules.get("cairn.autolog.pytorch")
    drain = getattr(autolog, "drain_metrics", None)
    if drain is not None:
        drain()
    batcher = config.existing_batcher(client.store)
    if batcher is not None:
        batcher.flush(raise_errors=False)


def _on_run_end(run_id: str, status: RunStatus) -> None:
    """End-run hook: finish this run's checkpoint writes and uploads, raising their failures."""
    with _registry_lock:
        found = _checkpointers.pop(run_id, None)
    if found is not None:
        found.finish()


# -- logging -----------------------------------------------------------------------------------------


def _loader_position(loader: Any) -> Any:
    """Something with ``state_dict()`` giving the loader's position (a ResumableLoader, or autolog's view)."""
    if callable(getattr(loader, "state_dict", None)):
        return loader
    autolog = sys.modules.get("cairn.autolog.pytorch")
    position = getattr(autolog, "loader_position", None)
    tracked = position(loader) if position is not None else None
    if tracked is None:
        raise InvalidArgument(
            f"loader= needs the loader's position: wrap the DataLoader in cairn.checkpoint.ResumableLoader "
            f"(or turn on cairn.pytorch.autolog(), which tracks plain DataLoaders); got {type(loader).__name__}"
        )
    return tracked


def log_checkpoint(
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    step: int,
    epoch: int | None = None,
    batch_in_epoch: int | None = None,
    extra: Any = None,
    metrics: Mapping[str, float] | None = None,
    run_id: str | None = None,
    keep_last: int | None = 3,
    keep_best: int | None = None,
    monitor: str | None = None,
    mode: Literal["min", "max"] = "min",
    loader: Any = None,
    synchronous: bool = False,
    client: Client | None = None,
    per_rank: bool = True,
) -> LoggedCheckpoint | None:
    """Checkpoint the training state into the run's artifacts at ``checkpoints/step-<step>/``.

    Captures weights, optimizer, scheduler and grad-scaler state, the RNG states, step, epoch, position
    in the epoch and run id on this thread (a memory copy), and returns; writing, uploading and pruning
    happen in the background (see the module docstring).

    Args:
        model: the ``nn.Module`` (DDP/compiled wrappers are unwrapped). ``optimizer``/``scheduler`` may be lists.
        step: optimizer steps done; the resumed run continues after it.
        epoch: the epoch in progress; batch_in_epoch: its batches consumed (taken from ``loader`` if omitted).
        extra: any further state tree (tensors, arrays, scalars, containers).
        metrics: values recorded with the checkpoint, ranked by ``monitor`` for ``keep_best``.
        run_id: the run (default: the active run, started if there is none).
        keep_last: how many newest checkpoints to keep (``None``: all).
        keep_best: how many best by ``monitor`` to keep besides (default 1 when ``monitor`` is set).
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        loader: a :class:`~cairn.checkpoint.ResumableLoader` (or, with autolog on, a plain ``DataLoader``)
            whose position is saved so a resume sees the same remaining batches.
        synchronous: wait until the checkpoint is written and uploaded (and raise its errors).
        client: the client of the run's store (default: the fluent API's); with one, ``run_id`` is required.
        per_rank: under ``torch.distributed`` (more than one rank), every rank calls ``log_checkpoint`` at the
            same step (a collective): each rank's RNG and ``loader`` position go into the checkpoint (see
            :mod:`cairn.checkpoint.distributed`); on ranks other than 0 the other arguments are not used.
            ``False``: only rank 0 calls it, and the checkpoint holds no state of the other ranks.

    Returns:
        The checkpoint's coordinates, or ``None`` on a ``torch.distributed`` rank other than 0.

    Raises:
        CheckpointWriteError: an earlier background write or upload failed. This call's state was queued
            nonetheless (it supersedes the failed one), so catching the error loses nothing.
        InvalidArgument: a value cannot be stored, or an argument is invalid.
    """
    job = distributed.group()
    collective = job is not None and per_rank
    if job is not None and job.rank != 0:
        if per_rank:
            shards = distributed.broadcast_text(None, job)  # rank 0 names the shards' directory (FSDP2)
            written = sharded.save_sharded(_unwrap(model), optimizer, Path(shards)) if shards else None
            _take_part(job, loader)
            if synchronous and written is not None:
                sharded.raise_failed_writes(wait=True)
        return None
    shards_dir: Path | None = None
    try:
        policy = RetentionPolicy(
            keep_last=keep_last,
            keep_best=keep_best if keep_best is not None else (1 if monitor else 0),
            monitor=monitor,
            mode=mode,
        )
        if client is not None and not run_id:
            raise InvalidArgument(
                "log_checkpoint(client=...) needs run_id= (the fluent active run is not that store's)"
            )
        rid = run_id or fluent._active_run_id()
        checkpointer = _checkpointer(rid, _client(client))
        if model is not None and sharded.is_sharded(_unwrap(model)):
            if not collective and not sharded.single_rank():  # (a 1-rank job shards too, on a 1-rank mesh)
                raise InvalidArgument(
                    "a model with DTensor parameters (FSDP2) is checkpointed in shards by every rank: call "
                    "log_checkpoint on every rank of the torch.distributed job (per_rank=True)"
                )
            shards_dir = checkpointer.staging / f"{TEMP_PREFIX}shards-{step_dirname(int(step))}-{uuid.uuid4().hex}"
    except BaseException:
        if job is not None and collective:
            distributed.broadcast_text("", job)
            distributed.exchange(b"", job)  # the other ranks wait in the gather: let them go on
        raise
    written = None
    if job is not None and collective:
        distributed.broadcast_text(str(shards_dir or ""), job)
        if shards_dir is not None:  # every rank stages its shards; written in the background
            written = sharded.save_sharded(_unwrap(model), optimizer, shards_dir)
    elif shards_dir is not None:  # a job of one rank
        written = sharded.save_sharded(_unwrap(model), optimizer, shards_dir)
    try:
        state = capture_training_state(
            model=None if shards_dir is not None else model,
            optimizer=None if shards_dir is not None else optimizer,
            scheduler=scheduler,
            scaler=scaler,
            step=step,
            epoch=epoch,  # type: ignore[arg-type]  # None is stored as "not recorded"
            batch_in_epoch=batch_in_epoch,
            extra=extra,
            run_id=rid,
            metrics=metrics,
            dataloader=_loader_position(loader) if loader is not None else None,
            buffers=checkpointer.writer.buffers,
        )
    except BaseException:
        if job is not None and collective:
            distributed.exchange(b"", job)  # the other ranks wait in the gather: let them go on
        if shards_dir is not None:
            shutil.rmtree(shards_dir, ignore_errors=True)
        raise
    if job is not None:
        state.metadata["world_size"] = job.world_size
        if collective:
            payloads = distributed.exchange(b"", job)
            assert payloads is not None
            try:
                state.components.update(distributed.peer_components(payloads))  # raises naming a rank that failed
            except BaseException:
                if shards_dir is not None:
                    shutil.rmtree(shards_dir, ignore_errors=True)
                raise
    if shards_dir is not None:
        state.attach(sharded.SHARDED_DIR, shards_dir, written)
        state.classes.update(sharded.classes(model, optimizer))
        state.metadata["sharded"] = sharded.SHARDED_DIR
    with checkpointer._lock:
        checkpointer.policy = policy
    name = step_dirname(state.step)
    try:
        checkpointer.writer.submit(state, name)
    except CheckpointWriteError as exc:
        checkpointer.writer.submit(state, name)  # the error is reported; this newer state still gets written
        raise CheckpointWriteError(f"{exc}. (The checkpoint of step {state.step} was queued nonetheless.)") from exc
    if synchronous:
        checkpointer.writer.wait()
    return LoggedCheckpoint(rid, state.step, _artifact_path(name), checkpointer.staging / name)


def _take_part(job: distributed.Group, loader: Any) -> None:
    """A rank > 0's share of a checkpoint: its RNG and loader position, gathered to rank 0."""
    error: BaseException | None = None
    payload = b""
    try:
        position = _loader_position(loader).state_dict() if loader is not None else None
        payload = distributed.peer_payload(distributed.rank_tree(position))
    except Exception as exc:
        error = exc
        payload = distributed.peer_payload(None, exc)
    distributed.exchange(payload, job)
    if error is not None:
        raise error


def flush_checkpoints(run_id: str | None = None, *, client: Client | None = None) -> None:
    """Block until the checkpoints logged so far (of ``run_id``, default all runs; with ``client``, only
    runs of that client's store) are written and uploaded.

    Raises:
        CheckpointWriteError: a background write or upload failed.
    """
    with _registry_lock:
        targets = [
            c
            for rid, c in _checkpointers.items()
            if (run_id is None or rid == run_id) and (client is None or c.client.store is client.store)
        ]
    for checkpointer in targets:
        checkpointer.writer.wait()
    sharded.raise_failed_writes(wait=True)  # this rank's shard writes (FSDP2), on every rank


# -- finding and materialising ------------------------------------------------------------------------


def _stored(info: CheckpointInfo, manifest: bytes) -> StoredCheckpoint:
    return StoredCheckpoint(
        info.name,
        _artifact_path(info.name),
        info.step,
        info.step,
        info.step,
        fingerprint=manifest,
        metrics=dict(info.metrics),
        meta={"epoch": info.epoch, "created_at": info.created_at, "metadata": dict(info.metadata)},
    )


def list_run_checkpoints(run_id: str | None = None, *, client: Client | None = None) -> list[CheckpointInfo]:
    """The checkpoints in a run's artifacts (in ``client``'s store) whose manifest was uploaded, oldest step first.

    Their ``path`` is where :func:`checkpoint_path` would put them locally (they may not be there yet).
    """
    rid = _run_id(run_id, client)
    staging = staging_dir(rid, client=client)
    infos = []
    for entry in RunCheckpoints(_client(client), rid, NATIVE).list():
        assert isinstance(entry.fingerprint, bytes)
        manifest = parse_manifest(entry.fingerprint, Path(entry.path) / MANIFEST_NAME)
        infos.append(CheckpointInfo.from_manifest(staging / entry.name, manifest))
    return sorted(infos, key=lambda info: (info.step, info.created_at, info.name))


@dataclass
class _Found:
    path: Path
    step: int
    name: str
    newest_step: int


def _find(run_id: str, step: int | str, client: Client, staging: Path) -> _Found | None:
    """Materialise the requested checkpoint of ``run_id`` (``None``: "latest" and the run has none)."""
    if step != "latest" and (isinstance(step, bool) or not isinstance(step, int)):
        raise InvalidArgument(f"step must be 'latest' or an integer, got {step!r}")
    plan = plan_resume(client, run_id, fmt=NATIVE, destination=staging, which=step)
    if plan is None:
        return None
    return _Found(plan.path, plan.step, plan.checkpoint.name, plan.newest_step)


def checkpoint_path(run_id: str | None = None, step: int | str = "latest", *, client: Client | None = None) -> Path:
    """Materialise one checkpoint of a run locally (verified) and return its directory.

    The same shape as ``cairn.lightning.checkpoint_path`` and ``cairn.transformers.checkpoint_path``.

    Args:
        run_id: the run (default: ``CAIRN_RUN_ID``, else the active run).
        step: ``"latest"`` (the newest valid one) or a step number.
        client: the client of the run's store (default: the fluent API's).

    Raises:
        CheckpointError: the run has no (such) checkpoint. CheckpointCorrupt: it is damaged.
    """
    rid = _run_id(run_id, client)
    found = _find(rid, step, _client(client), staging_dir(rid, client=client))
    if found is None:
        raise NoCheckpoint(f"run {rid} has no checkpoint yet")
    return found.path


# -- resuming ------------------------------------------------------------------------------------


def _check_active(allowed: str) -> None:
    active = fluent.active_run()
    if active is not None and active.info.run_id != allowed:
        raise InvalidArgument(
            f"run {active.info.run_id} ({active.info.run_name}) is active; end it before resuming run {allowed}"
        )


def _activate(run_id: str) -> None:
    active = fluent.active_run()
    if active is None or active.info.run_id != run_id:
        fluent.start_run(run_id=run_id)


def _loader_for_restore(loader: Any) -> tuple[Any, Any]:
    """Split ``loader`` into (object restore_training_state loads into, plain DataLoader autolog arms)."""
    if loader is None:
        return None, None
    if callable(getattr(loader, "load_state_dict", None)):
        return loader, None
    position = getattr(sys.modules.get("cairn.autolog.pytorch"), "loader_position", None)
    if position is not None and position(loader) is not None:
        return None, loader
    raise InvalidArgument(
        "loader= must be a cairn.checkpoint.ResumableLoader (or a DataLoader with autolog on); for a plain "
        "DataLoader use `for batch in state.fast_forward(loader)` for the resumed epoch instead"
    )


def resume(
    run_id: str | None = None,
    step: int | str = "latest",
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    loader: Any = None,
    strict: bool = True,
    map_location: str = "cpu",
    if_possible: bool = False,
    client: Client | None = None,
) -> ResumeState:
    """Restore training from a run's checkpoint, and continue the run (or fork it) at that step.

    Under ``torch.distributed`` call it on every rank with the same arguments: each rank restores the
    objects and its own RNG and data position; rank 0 alone continues (or forks) the run.

    Args:
        run_id: the run (default: ``CAIRN_RUN_ID``, else the active run; under ``torch.distributed``, the run
            rank 0 names this way, broadcast to the other ranks).
        step: ``"latest"`` continues the same run from its newest valid checkpoint; a step number whose
            checkpoint is older than the newest forks a new run (``forked_from`` says which).
        model, optimizer, scheduler, scaler: objects to load into (built the same way as when saved).
        loader: a :class:`~cairn.checkpoint.ResumableLoader`: its next iteration yields exactly the
            batches the interrupted epoch had left. With autolog on, a plain DataLoader works too.
        strict: fail on missing/unexpected model keys and on class changes.
        map_location: where tensors are read to before being copied into the objects.
        if_possible: when the run has history but no checkpoint, start a new run (with a
            :class:`ResumeWarning`) instead of raising.
        client: the client of the run's store (default: the fluent API's). With one, the run (or its fork)
            is continued in that store and not made the fluent API's active run: log into
            ``state.run_id`` through the client, and pass it to :func:`log_checkpoint`.

    Returns:
        The restored position. When the run has no checkpoint yet (``step="latest"``) and logged no metric
        (or is this process's active run) nothing is restored, the run is made active and ``resumed`` is
        False: a script can call ``resume`` on every start. A run with history is never restarted inside it
        (see ``if_possible``).

    Raises:
        InvalidArgument: no run can be determined, or another run is active.
        CheckpointError: no checkpoint at ``step``, or none at all in a run with history (without
            ``if_possible``). CheckpointCorrupt: the checkpoint is damaged.
        StateMismatch: saved state does not fit an object (lists the mismatched keys and shapes);
            nothing of the run was changed then.
    """
    job = distributed.group()
    if job is not None and not run_id:  # every rank resumes the run rank 0 names
        rid = distributed.run_id_from_rank0(lambda: _run_id(None, client), job)
    else:
        rid = _run_id(run_id, client)
    fluent_run = client is None  # the run is the fluent API's active run (else only the client's)
    rank0 = _rank() == 0
    with _registry_lock:
        own = _checkpointers.get(rid)
    if own is not None:
        own.writer.wait()
    tracking = _client(client)
    staging = staging_dir(rid, client=client)
    if rank0 and fluent_run:
        _check_active(rid)
    found = _find(rid, step, tracking, staging)
    if found is None:
        target = rid
        if rank0:
            active = fluent.active_run() if fluent_run else None
            if active is None:  # this process's own active run is not a history to protect
                target = nothing_to_resume(tracking, rid, if_possible=if_possible, what=f"{ARTIFACT_DIR}/") or rid
                if target == rid:
                    claim_run(tracking, rid)
            if fluent_run:
                _activate(target)
        return ResumeState(step=0, epoch=0, batch_in_epoch=0, extra=None, run_id=target, resumed=False)
    fork = found.step < found.newest_step
    if rank0 and fork and fluent_run and fluent.active_run() is not None:
        raise InvalidArgument(
            f"resuming run {rid} from step {found.step} (older than its newest checkpoint, step "
            f"{found.newest_step}) forks a new run; end the active run {rid} first"
        )
    if rank0 and not fork:
        claim_run(tracking, rid)  # before anything is restored: a refused resume changes nothing
    target, armed = _loader_for_restore(loader)
    if _sharded_checkpoint(found.path) and (model is not None or optimizer is not None):
        if model is None:
            raise InvalidArgument(f"{found.path.name} is a sharded (FSDP2) checkpoint: resume needs model= too")
        enabled = autolog_module.active() if (autolog_module := sys.modules.get("cairn.autolog.pytorch")) else None
        with enabled.steps_ignored() if enabled is not None else contextlib.nullcontext():  # DCP steps the optimizer
            sharded.load_sharded(found.path, _unwrap(model), optimizer)  # every rank (a collective)
        model = optimizer = None  # restored; the rest of the checkpoint is read as usual
    restored = restore_training_state(
        found.path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        dataloader=target,
        strict=strict,
        map_location=map_location,
    )
    autolog = sys.modules.get("cairn.autolog.pytorch")
    if armed is not None and restored.dataloader_state is not None and autolog is not None:
        autolog.arm_loader(armed, restored.dataloader_state, restored.epoch)
    if autolog is not None:
        autolog.note_resumed(restored.step, loader, restored.epoch)
    active_id, forked_from = rid, None
    if rank0:
        if fork:
            active_id, forked_from = _fork(tracking, rid, found, activate=fluent_run), rid
        else:
            if fluent_run:
                _activate(rid)
            continue_run(tracking, rid, found.step)
            _clean_staging(staging, RunCheckpoints(tracking, rid, NATIVE))
    return ResumeState(
        step=restored.step,
        epoch=restored.epoch,
        batch_in_epoch=restored.batch_in_epoch,
        extra=restored.extra,
        run_id=active_id,
        forked_from=forked_from,
        resumed=True,
        path=found.path,
        metrics=dict(restored.metrics),
        _restored=restored,
    )


def _sharded_checkpoint(path: Path) -> bool:
    """Whether the verified checkpoint at ``path`` holds FSDP2 shards (its manifest lists DCP's metadata).

    Raises:
        CheckpointCorrupt: the checkpoint is damaged, or says it is sharded without listing the shards' metadata.
    """
    manifest = read_manifest(path, verify_hashes=True)
    if manifest.metadata.get("sharded") is None:
        return False
    listed = f"{sharded.SHARDED_DIR}/{sharded.METADATA_FILE}"
    if manifest.metadata.get("sharded") != sharded.SHARDED_DIR or listed not in manifest.files:
        raise CheckpointCorrupt(f"checkpoint {path} is marked sharded but its manifest does not list {listed}")
    return True


def _fork(client: Client, run_id: str, found: _Found, *, activate: bool) -> str:
    """Fork ``run_id`` at the checkpoint's step, copy the checkpoint into the fork (``activate``: make the
    fork the fluent API's active run)."""
    fork_id = fork_run(client, run_id, found.step)
    RunCheckpoints(client, fork_id, NATIVE).upload_dir(found.path, found.name)
    if activate:
        fluent.start_run(run_id=fork_id)
    return fork_id


def _clean_staging(staging: Path, checkpoints: RunCheckpoints) -> None:
    """After resuming a run's newest checkpoint: drop local leftovers of the dead process (partial writes,
    checkpoints it never uploaded)."""
    known = {entry.name for entry in checkpoints.list()}
    try:
        entries = list(os.scandir(staging))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and (entry.name.startswith(TEMP_PREFIX) or entry.name not in known):
            shutil.rmtree(entry.path, ignore_errors=True)
