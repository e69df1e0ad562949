"""Resuming a run from autolog's newest checkpoint: find it now, restore it when training starts.

:func:`prepare_resume` resolves ``resume=`` (``CAIRN_RUN_ID``), reads the newest checkpoint and
continues the run (its later metric points superseded); the :class:`Restorer` then loads optimizers,
schedulers, scaler and RNG at ``track_state()``, else at the first ``iter()`` of the training loader
(recognised by dataset type, size and batch size; fast-forwarded inside the interrupted epoch), else at
the model's first training-mode forward (no DataLoader, or one that changed: a
:class:`~cairn.checkpoint.runs.ResumeWarning` says the epoch restarts from its beginning); the weights
right before the model's next forward. One INFO line on ``cairn.autolog`` says what was restored.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from cairn.autolog.torch.checkpoints import one_or_list, optimizer_signature
from cairn.autolog.torch.config import Report
from cairn.autolog.torch.discovery import Constructed, optimizers_built_before, param_ids, unwrap
from cairn.autolog.torch.loaders import DataTracking, LoaderTrack, fingerprint_changes, fits
from cairn.autolog.torch.losses import LossRecorder
from cairn.errors import CheckpointError, RunLeased
from cairn.tracking.client import Client

__all__ = ["ELASTIC_TAG", "IF_POSSIBLE", "PendingRestore", "Restorer", "elastic_run", "elastic_tags", "prepare_resume"]

ELASTIC_TAG = "cairn.torchelastic.runId"
"""The tag naming the torchelastic job (``TORCHELASTIC_RUN_ID``) whose workers log into a run: how workers
restarted by torchelastic without ``CAIRN_RUN_ID`` find the run their first attempt created."""

IF_POSSIBLE = "if_possible"
"""``autolog(resume="if_possible")``: resume if the run has a checkpoint, else warn and start a new run
(the same value as :data:`cairn.checkpoint.resume.IF_POSSIBLE`)."""
logger = logging.getLogger("cairn.autolog")


@dataclass
class PendingRestore:
    """A checkpoint of a resumed run waiting to be loaded when training starts."""

    path: Path
    step: int
    epoch: int | None
    batch_in_epoch: int | None
    dataloader_state: dict[str, Any] | None
    classes: dict[str, str]
    extra: Any
    rank0: bool
    run_id: str = ""
    #: FSDP2 shards (DCP): model and optimizer are loaded together, by every rank, at the model's next forward
    sharded: bool = False
    #: a DataLoader iterated while the restore was pending whose fingerprint differs from the checkpoint's
    unfit: LoaderTrack | None = field(default=None, repr=False)
    #: optimizers built before ``autolog()``, looked up once if the ones autolog saw do not match
    earlier_optimizers: list[Any] | None = field(default=None, repr=False)

    @property
    def saved(self) -> dict[str, Any]:
        """What autolog itself put in the checkpoint's ``extra`` (optimizer signatures, pending losses)."""
        return (self.extra or {}).get("autolog", {}) if isinstance(self.extra, dict) else {}

    @property
    def user_state(self) -> dict[str, Any] | None:
        user = self.extra.get("user") if isinstance(self.extra, dict) else None
        return dict(user) if isinstance(user, Mapping) else None


def elastic_tags() -> dict[str, str]:
    """``{ELASTIC_TAG: TORCHELASTIC_RUN_ID}`` for a run created by a worker of a torchelastic job, else ``{}``."""
    job = os.environ.get("TORCHELASTIC_RUN_ID", "").strip()
    return {ELASTIC_TAG: job} if job else {}


def elastic_run(client: Client, experiment_id: str) -> str | None:
    """The run this torchelastic job's first attempt created, for restarted workers
    (``TORCHELASTIC_RESTART_COUNT`` > 0) without ``CAIRN_RUN_ID``: the run of ``experiment_id`` tagged
    :data:`ELASTIC_TAG` with this ``TORCHELASTIC_RUN_ID`` (the newest, if several), else None.

    ``torchrun --standalone`` draws a new ``TORCHELASTIC_RUN_ID`` per launch, so a new ``torchrun`` never
    continues an older launch's run this way (name it with ``CAIRN_RUN_ID`` for that).
    """
    tags = elastic_tags()
    if not tags or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) <= 0:
        return None
    job = tags[ELASTIC_TAG].replace("'", "")
    found = client.search_runs(
        experiment_id, filter_string=f"tags.`{ELASTIC_TAG}` = '{job}'", order_by=["attributes.start_time DESC"]
    )
    return found[0].info.run_id if len(found) else None


def prepare_resume(
    resume: bool | str,
    client: Client,
    *,
    rank0: bool,
    activate: Callable[[str], None] | None,
    experiment_id: str = "0",
) -> tuple[Any, PendingRestore | None]:
    """Resolve ``resume=``, continue the run now; returns the ResumeState and the checkpoint to load.

    Through the shared core (:mod:`cairn.checkpoint.resume`): the run from ``CAIRN_RUN_ID``
    (``resolve_run_id``; under torchelastic, a restarted worker without it finds its job's run by
    :func:`elastic_run` in ``experiment_id``), the newest intact checkpoint (``plan_resume``: damaged newer
    ones are named in a warning), the run continued with its later points superseded (``continue_run``), or
    a run without a checkpoint handled by ``nothing_to_resume``. ``activate`` makes a run the fluent API's active run
    (``None`` with an injected client).
    """
    from cairn.checkpoint import resume as planner
    from cairn.checkpoint import runs
    from cairn.checkpoint.capture import _read_state_file, load_component
    from cairn.checkpoint.formats import NATIVE
    from cairn.checkpoint.manifest import read_manifest

    if_possible = resume == IF_POSSIBLE
    named = resume is True or resume == "latest" or if_possible
    run_id = planner.resolve_run_id(None, use_active=False) if named else str(resume)
    if not run_id and named:
        run_id = elastic_run(client, experiment_id)
    if not run_id:
        return runs.ResumeState(step=0, epoch=0, batch_in_epoch=0, extra=None, run_id=None, resumed=False), None
    if rank0 and activate is not None:
        runs._check_active(run_id)
    plan = planner.plan_resume(client, run_id, fmt=NATIVE, destination=runs.staging_dir(run_id, client=client))
    if plan is None:
        fresh = runs.ResumeState(step=0, epoch=0, batch_in_epoch=0, extra=None, run_id=None, resumed=False)
        if rank0:
            what = f"{runs.ARTIFACT_DIR}/"
            fresh.run_id = planner.nothing_to_resume(client, run_id, if_possible=if_possible, what=what)
            if fresh.run_id == run_id:
                planner.claim_run(client, run_id)
            if activate is not None and fresh.run_id is not None:
                activate(fresh.run_id)
        return fresh, None
    manifest = read_manifest(plan.path, verify_hashes=True)
    shards = _shards_listed(plan.path, manifest)
    if rank0:
        planner.claim_run(client, run_id)  # before anything is restored: a refused resume changes nothing
    info = _read_state_file(plan.path)
    components = set(info["components"])
    extra = load_component(plan.path, "extra") if "extra" in components else None
    pending = PendingRestore(
        path=plan.path,
        step=info["step"],
        epoch=info.get("epoch"),
        batch_in_epoch=info.get("batch_in_epoch"),
        dataloader_state=_own_position(plan.path, components),
        classes=dict(info.get("classes") or {}),
        extra=extra,
        rank0=rank0,
        run_id=run_id,
        sharded=shards,
    )
    if rank0:
        if activate is not None:
            activate(run_id)
        planner.continue_run(client, run_id, info["step"])
    state = runs.ResumeState(
        step=info["step"],
        epoch=info.get("epoch"),
        batch_in_epoch=info.get("batch_in_epoch"),
        extra=extra,
        run_id=run_id,
        resumed=True,
        path=plan.path,
        metrics=dict(manifest.metrics),
        user_state=pending.user_state,
    )
    return state, pending


def _shards_listed(path: Path, manifest: Any) -> bool:
    """Whether the verified checkpoint holds FSDP2 shards (its manifest lists DCP's metadata).

    Raises:
        CheckpointCorrupt: it says it is sharded without listing the shards' metadata.
    """
    from cairn.checkpoint import sharded
    from cairn.errors import CheckpointCorrupt

    if manifest.metadata.get("sharded") is None:
        return False
    listed = f"{sharded.SHARDED_DIR}/{sharded.METADATA_FILE}"
    if manifest.metadata.get("sharded") != sharded.SHARDED_DIR or listed not in manifest.files:
        raise CheckpointCorrupt(f"checkpoint {path} is marked sharded but its manifest does not list {listed}")
    return True


def _own_position(path: Path, components: set[str]) -> dict[str, Any] | None:
    """This rank's data position in the checkpoint: rank 0's ``dataloader``, rank r's in ``rank-<r>`` (rank 0's
    when it has none: the same batch offset; the restore warns about what is not exact)."""
    from cairn.checkpoint import distributed
    from cairn.checkpoint.capture import load_component

    job = distributed.group()
    if job is not None and job.rank > 0 and distributed.rank_component(job.rank) in components:
        own = load_component(path, distributed.rank_component(job.rank))
        return own.get("dataloader") if isinstance(own, dict) else None
    return load_component(path, "dataloader") if "dataloader" in components else None


class Restorer:
    """Loads a :class:`PendingRestore` into the live training objects at the first moment they all exist."""

    def __init__(
        self,
        *,
        constructed: Constructed,
        data: DataTracking,
        losses: LossRecorder,
        report: Report,
        watch_forwards: Callable[[], None],
        quiet: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.constructed = constructed
        self.data = data
        self.losses = losses
        self.report = report
        self.watch_forwards = watch_forwards  # (re-)arms the global forward hooks for the weights' load
        self.quiet = quiet  # autolog counts no optimizer step inside (DCP steps a fresh optimizer to build its state)
        self.pending: PendingRestore | None = None
        self.pending_model: tuple[Path, set[int]] | None = None  # weights for the module owning these params
        self.pending_shards: list[Any] | None = None  # with pending_model: FSDP2 shards, with these optimizers

    def clear(self) -> None:
        self.pending = None
        self.pending_model = None
        self.pending_shards = None

    # -- the moments ------------------------------------------------------------------------------------

    def at_track_state(self) -> dict[str, Any] | None:
        """``track_state()`` with a pending resume: restore now; returns the loop's saved state."""
        pending = self.pending
        if pending is None:
            return None
        if not self.apply(None, where="track_state()"):
            raise CheckpointError(
                f"cannot resume from {pending.path.name}: the optimizers it holds are not built yet; call "
                "track_state() after building the model and optimizer"
            )
        return pending.user_state

    def at_iter(self, loader: DataLoader[Any], track: LoaderTrack) -> None:
        """``iter(loader)``: a loader fitting the checkpoint's restores it; another is noted as unfit."""
        pending = self.pending
        if pending is None:
            self.data.take_waiting_position(loader, track)
        elif fits(pending.dataloader_state, loader):
            self.apply(track)
        elif pending.unfit is None:
            pending.unfit = track  # restored at the model's first training forward, epoch from its start

    def at_forward(self, module: nn.Module) -> None:
        """A top-level module's forward: the training state (first training forward of the optimizers'
        module, when nothing before restored it), then the weights (before its next forward)."""
        pending = self.pending
        if pending is not None and module.training and any(True for _ in module.parameters()):
            optimizers = self._optimizers(pending, self.constructed.made("optimizer"))
            if optimizers is not None:
                ids = set().union(*(param_ids(o) for o in optimizers))
                if any(id(p) in ids for p in module.parameters()):
                    self.apply(None, where="the model's first training forward")
        if self.pending_model is not None:
            self._load_model(module)

    # -- restoring --------------------------------------------------------------------------------------

    def apply(self, track: LoaderTrack | None, *, where: str = "the training DataLoader's first iter()") -> bool:
        """Load the pending checkpoint into the live optimizers/schedulers/scaler (the model at its next
        forward) and arm ``track``'s loader (``None``: no loader fits; its position waits for a later one
        that does). False: the optimizers are not built yet."""
        from cairn.checkpoint.capture import restore_training_state

        pending = self.pending
        assert pending is not None
        optimizers = self._find_optimizers(pending)
        if optimizers is None:
            return False  # not built yet: try again at the next moment
        self.pending = None
        try:
            schedulers = self.constructed.schedulers_of(optimizers)
            restore_training_state(
                pending.path,
                optimizer=None if pending.sharded else one_or_list(optimizers),
                scheduler=one_or_list(schedulers) if "scheduler" in pending.classes else None,
                scaler=self.constructed.scaler() if "scaler" in pending.classes else None,
            )
            if "model" in pending.classes:  # loaded before the first forward of the module these optimizers train
                self.pending_model = (pending.path, set().union(*(param_ids(o) for o in optimizers)))
                self.pending_shards = optimizers if pending.sharded else None
                self.watch_forwards()
            self.losses.replace([float(loss) for loss in pending.saved.get("pending_losses") or []])
            position = "no data position"
            if track is not None:
                track.armed = (pending.dataloader_state, pending.epoch)
                self.data.mark_training(track)
                position = f"epoch {pending.epoch}, batch {pending.batch_in_epoch}"
            elif pending.unfit is not None:
                self._restart_epoch(pending, pending.unfit)
                position = f"epoch {pending.epoch} from its beginning"
            elif pending.dataloader_state is not None:
                self.data.waiting_position = (pending.dataloader_state, pending.epoch)
                position = f"epoch {pending.epoch}, batch {pending.batch_in_epoch} (when the DataLoader is iterated)"
            logger.info(
                "cairn: resumed run %s from checkpoint %s at %s: step %s, %s; model, optimizer, scheduler, "
                "scaler and RNG restored",
                pending.run_id,
                pending.path.name,
                where,
                pending.step,
                position,
            )
        except RunLeased:  # another process is resuming the run: training on would write into it twice
            raise
        except Exception as exc:
            self.report(f"restoring the checkpoint {pending.path}", exc)
        return True

    def _find_optimizers(self, pending: PendingRestore) -> list[Any] | None:
        made = self.constructed.made("optimizer")
        optimizers = self._optimizers(pending, made)
        if optimizers is not None or pending.earlier_optimizers is not None:
            return optimizers
        saved = pending.saved
        names = [str(s[0]) for s in saved.get("optimizers") or []]
        names += pending.classes.get("optimizer", "").split(",") if not names else []
        pending.earlier_optimizers = [o for o in optimizers_built_before([n for n in names if n]) if o not in made]
        optimizers = self._optimizers(pending, [*made, *pending.earlier_optimizers], unique=True)
        if optimizers is None and len(pending.earlier_optimizers) > 1:
            self.report(
                "matching the checkpoint's optimizer",
                RuntimeError(
                    f"several live optimizers built before autolog() match the checkpoint {pending.path.name}; "
                    "nothing was restored (build the optimizer after autolog() so it is known)"
                ),
            )
        return optimizers

    @staticmethod
    def _optimizers(pending: PendingRestore, live: list[Any], *, unique: bool = False) -> list[Any] | None:
        """The live optimizers matching the checkpoint's, in its order, or ``None`` if some are not among ``live``.

        ``unique``: a match must be the only candidate (for optimizers autolog did not see being built, where
        a leftover optimizer of the same class and shapes could be taken for the training one).
        """
        optimizers: list[Any] = []
        signatures = pending.saved.get("optimizers") or []
        if signatures:  # an autolog checkpoint: match class and parameter shapes
            for signature in signatures:
                match = [o for o in live if optimizer_signature(o) == list(signature) and o not in optimizers]
                if not match or (unique and len(match) > 1):
                    return None
                optimizers.append(match[0])
        elif "optimizer" in pending.classes:  # from log_checkpoint: match the class, which must be unambiguous
            for name in pending.classes["optimizer"].split(","):
                match = [o for o in live if optimizer_signature(o)[0] == name and o not in optimizers]
                if len(match) != 1:
                    return None
                optimizers.append(match[0])
        return optimizers or None

    def _restart_epoch(self, pending: PendingRestore, track: LoaderTrack) -> None:
        """The training loader differs from the checkpoint's: its interrupted epoch restarts from its beginning."""
        from cairn.checkpoint import runs

        loader = track.loader()
        changed = ", ".join(fingerprint_changes((pending.dataloader_state or {}).get("fingerprint"), loader))
        track.epoch = pending.epoch if pending.epoch is not None else track.epoch
        self.data.mark_training(track)
        warnings.warn(
            f"cairn: resuming run {pending.run_id} from {pending.path.name} (step {pending.step}): the DataLoader "
            f"differs from the checkpoint's ({changed or 'sampler'}); model, optimizer, scheduler, scaler and RNG "
            f"are restored, but the data position cannot be: epoch {pending.epoch} restarts from its beginning",
            runs.ResumeWarning,
            stacklevel=2,
        )

    def _load_model(self, module: nn.Module) -> None:
        """The checkpoint's weights into the first top-level module that owns the optimizers' parameters,
        right before its forward (errors are reported; training then starts untrained)."""
        assert self.pending_model is not None
        path, ids = self.pending_model
        if not any(id(p) in ids for p in module.parameters()):
            return
        self.pending_model = None
        shards, self.pending_shards = self.pending_shards, None
        try:
            from cairn.checkpoint.capture import _load_model
            from cairn.checkpoint.state_tree import read_flat_tree

            if shards is not None:  # FSDP2: every rank loads its shards of model and optimizer (a collective)
                from cairn.checkpoint import sharded

                with self.quiet():
                    sharded.load_sharded(path, unwrap(module), one_or_list(shards))
                return
            _load_model(unwrap(module), read_flat_tree(path, "model"), strict=True, where=str(path))
        except RunLeased:  # another process is resuming the run: training on would write into it twice
            raise
        except Exception as exc:
            self.report(f"restoring the model from {path}", exc)
