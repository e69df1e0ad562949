"""Plain-PyTorch autolog: checkpoints and resume for :mod:`cairn.autolog.pytorch`.

When a checkpoint is due and what goes into it (model, optimizers, LR schedulers, GradScaler, the training
loader's position), the positions :mod:`cairn.checkpoint.runs` asks for, and resuming a run from its newest
checkpoint. What lives there (``_state``, ``_report``, ...) is reached through
it at call time.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.data import DataLoader

from cairn.autolog._pytorch_loaders import _LoaderTrack, _PositionView

if TYPE_CHECKING:
    from cairn.autolog.pytorch import _Session

IF_POSSIBLE = "if_possible"
"""``autolog(resume="if_possible")``: resume if the run has a checkpoint, else warn and start a new run."""
logger = logging.getLogger("cairn.autolog")


# -- checkpoints --------------------------------------------------------------------------------------


def _schedule_checkpoint(session: _Session) -> None:
    """Checkpoint at the next batch boundary of the training loader, or (a loop without a DataLoader) now,
    right after the optimizer step that ended the step, or after the LR scheduler's next ``step()`` when the
    optimizers have one (see the docstring of :mod:`cairn.autolog.pytorch`)."""
    from cairn.autolog import pytorch as core

    session.ckpt_due = True
    if core._state.train_track is not None:
        return
    model = session.model() if session.model is not None else None
    if not _discover(session)[0] or model is None:
        _checkpoint_now(session, None, boundary=False)
    elif session.forward_ckpt_handle is None:  # a per-step scheduler.step() follows: wait for it

        def before_forward(module: nn.Module, args: Any) -> None:
            if session.ckpt_due:
                _checkpoint_now(session, None, boundary=False)

        session.forward_ckpt_handle = model.register_forward_pre_hook(before_forward)


def _wrap_scheduler_step(original: Callable[..., Any]) -> Callable[..., Any]:
    """``LRScheduler.step``: takes a checkpoint deferred by :func:`_schedule_checkpoint` once the scheduler stepped."""

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        from cairn.autolog import pytorch as core

        result = original(self, *args, **kwargs)
        session = core._state.session
        if session is not None and session.ckpt_due and session.forward_ckpt_handle is not None:
            _checkpoint_now(session, None, boundary=False)
        return result

    return step


# Objects built before autolog() patched their constructors are looked up through the garbage collector's
# referrers, only at the rare moments that need them (a session's first checkpoint, a resume), never per
# step, and only those of the exact kind wanted are kept (see the module docstring of cairn.autolog.pytorch).


def _schedulers_built_before(optimizer: Any) -> list[Any]:
    """The LR schedulers of ``optimizer`` among the objects that refer to it (directly or by their ``__dict__``)."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    kinds = (LRScheduler, ReduceLROnPlateau)
    referrers = gc.get_referrers(optimizer)
    owners = [r for r in referrers if issubclass(type(r), kinds)]
    for namespace in (r for r in referrers if type(r) is dict and r.get("optimizer") is optimizer):
        owners += [o for o in gc.get_referrers(namespace) if issubclass(type(o), kinds)]
    found: list[Any] = []
    for owner in owners:
        if getattr(owner, "optimizer", None) is optimizer and owner not in found:
            found.append(owner)
    return found


def _optimizers_built_before(class_names: list[str]) -> list[Any]:
    """Live optimizers of the classes named ``"module.Qualname"``, if those modules are imported already."""
    import sys

    found: list[Any] = []
    for name in dict.fromkeys(class_names):
        module_name, _, qualname = name.rpartition(".")
        cls = getattr(sys.modules.get(module_name), qualname, None)  # never imports what a checkpoint names
        if isinstance(cls, type):
            found += [o for o in gc.get_referrers(cls) if type(o) is cls]
    return found


def _schedulers_of(optimizers: list[Any]) -> list[Any]:
    """The LR schedulers driving ``optimizers``, in the optimizers' order.

    Schedulers autolog saw being built are known; one built before ``autolog()`` is looked up among the
    live objects when an optimizer shows it is driven by one (torch marks its ``step``). Warns if it
    still cannot be found, since checkpoints then lack its state.
    """
    from cairn.autolog import pytorch as core

    ids = [id(o) for o in optimizers]
    schedulers = [s for s in core._made("scheduler") if id(getattr(s, "optimizer", None)) in ids]
    covered = {id(s.optimizer) for s in schedulers}
    for optimizer in optimizers:
        if hasattr(optimizer.step, "_wrapped_by_lr_sched") and id(optimizer) not in covered:
            found = _schedulers_built_before(optimizer)
            schedulers += found
            if not found:
                core._report(
                    "finding the LR scheduler",
                    RuntimeError(
                        f"{type(optimizer).__name__} is driven by an LR scheduler cairn cannot find; checkpoints "
                        "do not include its state"
                    ),
                )
    schedulers.sort(key=lambda s: ids.index(id(s.optimizer)))
    return schedulers


def _scaler() -> Any:
    """The one enabled GradScaler built while autolog was on, if exactly one exists."""
    from cairn.autolog import pytorch as core

    enabled = [s for s in core._made("scaler") if getattr(s, "_enabled", True)]
    return enabled[0] if len(enabled) == 1 else None


def _discover(session: _Session) -> tuple[list[Any], Any]:
    """The LR schedulers of the session's optimizers and the live GradScaler (cached per session)."""
    if session.discovered is None:
        session.discovered = (_schedulers_of(session.optimizers), _scaler())
    return session.discovered


def _checkpoint_now(session: _Session, track: _LoaderTrack | None, *, boundary: bool) -> None:
    """Take the due checkpoint (warnings on failure; the training step is never disturbed)."""
    from cairn.autolog import pytorch as core

    session.ckpt_due = False
    if session.forward_ckpt_handle is not None:
        session.forward_ckpt_handle.remove()
        session.forward_ckpt_handle = None
    if session.run_id is None or session.step == session.last_ckpt_step:
        return
    try:
        _take_checkpoint(session, track, boundary=boundary)
    except Exception as exc:
        core._report(f"checkpointing at step {session.step}", exc)


def _take_checkpoint(session: _Session, track: _LoaderTrack | None, *, boundary: bool) -> None:
    from cairn.autolog import pytorch as core
    from cairn.checkpoint import runs

    config = core._state.config
    assert config is not None and session.run_id is not None
    model = session.model() if session.model is not None else None
    schedulers, scaler = _discover(session)
    optimizers = session.optimizers
    if track is not None:
        epoch = track.epoch + 1 if boundary else track.epoch
        batch = 0 if boundary else track.batch
        loader: Any = _PositionView(track.position(boundary=boundary))
    else:
        epoch, batch, loader = None, None, None
    extra: dict[str, Any] = {
        "autolog": {
            "optimizers": [_optimizer_signature(o) for o in optimizers],
            "pending_losses": [float(loss) for loss in core._state.losses],  # a sync only if kept on a device
        }
    }
    getter = core._state.user_state
    if getter is not None:
        extra["user"] = dict(getter())
    session.last_ckpt_step = session.step
    runs.log_checkpoint(
        model=model,
        optimizer=_one_or_list(optimizers),
        scheduler=_one_or_list(schedulers),
        scaler=scaler,
        step=session.step,
        epoch=epoch,
        batch_in_epoch=batch,
        extra=extra,
        run_id=session.run_id,
        keep_last=config.keep_last,
        loader=loader,
    )


def _one_or_list(items: list[Any]) -> Any:
    return None if not items else items[0] if len(items) == 1 else list(items)


def _optimizer_signature(optimizer: Any) -> list[Any]:
    shapes = [list(p.shape) for group in optimizer.param_groups for p in group["params"]]
    return [f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", shapes]


def loader_position(loader: Any) -> _PositionView | None:
    """The position of a plain DataLoader autolog tracks (for ``log_checkpoint(loader=...)``), else None."""
    from cairn.autolog import pytorch as core

    if core._state.config is None or not isinstance(loader, DataLoader):
        return None
    track = core._state.loaders.get(loader)
    if track is None:
        track = _LoaderTrack(loader)
        core._state.loaders[loader] = track
    return _PositionView(track.position(boundary=False))


def note_resumed(step: int, loader: Any = None, epoch: int | None = None) -> None:
    """Called by :func:`cairn.checkpoint.runs.resume`: autolog's step count continues at ``step`` (and the
    epoch count of ``loader``, a DataLoader or a ResumableLoader, at ``epoch``)."""
    from cairn.autolog import pytorch as core

    state = core._state
    if state.config is None:
        return
    session = state.session
    if session is not None:
        session.step = step
    else:
        state.resume_step = step
    inner = getattr(loader, "loader", loader)
    if epoch is not None and isinstance(inner, DataLoader):
        track = state.loaders.get(inner)
        if track is None:
            track = _LoaderTrack(inner)
            state.loaders[inner] = track
        track.epoch = epoch - 1  # the next iter() starts epoch `epoch` (or continues it, for a ResumableLoader)
        if track.armed is not None:
            track.armed = (track.armed[0], epoch)


def arm_loader(loader: DataLoader[Any], tree: dict[str, Any] | None, epoch: int | None = None) -> None:
    """Make the next ``iter(loader)`` resume the epoch recorded in ``tree`` (from a checkpoint)."""
    from cairn.autolog import pytorch as core

    track = core._state.loaders.get(loader)
    if track is None:
        track = _LoaderTrack(loader)
        core._state.loaders[loader] = track
    track.armed = (tree, epoch)


# -- resume --------------------------------------------------------------------------------------------


@dataclass
class _Pending:
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
    #: a DataLoader iterated while the restore was pending whose fingerprint differs from the checkpoint's
    unfit: _LoaderTrack | None = field(default=None, repr=False)
    #: optimizers built before ``autolog()``, looked up once if the ones autolog saw do not match
    earlier_optimizers: list[Any] | None = field(default=None, repr=False)


def _prepare_resume(resume: bool | str) -> Any:
    """Resolve ``resume=``, continue the run now, and keep the checkpoint to load when training starts."""
    from cairn.autolog import pytorch as core
    from cairn.checkpoint import runs
    from cairn.checkpoint.capture import _read_state_file, load_component
    from cairn.checkpoint.manifest import read_manifest
    from cairn.tracking import fluent

    if_possible = resume == IF_POSSIBLE
    named = resume is True or resume == "latest" or if_possible
    run_id = os.environ.get("CAIRN_RUN_ID") if named else str(resume)
    if not run_id:
        return runs.ResumeState(step=0, epoch=0, batch_in_epoch=0, extra=None, run_id=None, resumed=False)
    dist = core._dist()
    rank0 = dist is None or dist.get_rank() == 0
    client = fluent._get_client()
    if rank0:
        runs._check_active(run_id)
    found = runs._find(run_id, "latest", client)
    if found is None:
        return _nothing_to_resume(run_id, client, rank0=rank0, if_possible=if_possible)
    manifest = read_manifest(found.path, verify_hashes=True)
    info = _read_state_file(found.path)
    components = set(info["components"])
    extra = load_component(found.path, "extra") if "extra" in components else None
    loader_state = load_component(found.path, "dataloader") if "dataloader" in components else None
    core._state.restore = _Pending(
        path=found.path,
        step=info["step"],
        epoch=info.get("epoch"),
        batch_in_epoch=info.get("batch_in_epoch"),
        dataloader_state=loader_state,
        classes=dict(info.get("classes") or {}),
        extra=extra,
        rank0=rank0,
        run_id=run_id,
    )
    core._state.resume_step = info["step"]
    if rank0:
        runs._activate(run_id)
        client.flush()
        client.store.supersede_metrics_after(run_id, info["step"])
    return runs.ResumeState(
        step=info["step"],
        epoch=info.get("epoch"),
        batch_in_epoch=info.get("batch_in_epoch"),
        extra=extra,
        run_id=run_id,
        resumed=True,
        path=found.path,
        metrics=dict(manifest.metrics),
        user_state=extra.get("user") if isinstance(extra, dict) else None,
    )


def _nothing_to_resume(run_id: str, client: Any, *, rank0: bool, if_possible: bool) -> Any:
    """``resume=`` named a run without a checkpoint. A run that logged nothing yet (made by a launcher) is
    started in; one with history is never restarted inside it: an error, or with ``"if_possible"`` a warning
    and a new run."""
    from cairn.checkpoint import runs
    from cairn.errors import CheckpointError
    from cairn.tracking import fluent

    fresh = runs.ResumeState(step=0, epoch=0, batch_in_epoch=0, extra=None, run_id=run_id, resumed=False)
    if not client.get_run(run_id).data.metrics:
        if rank0:
            runs._activate(run_id)
        return fresh
    message = (
        f"run {run_id} has logged metrics but no checkpoint to resume from (none was taken, or its "
        f"{runs.ARTIFACT_DIR}/ were deleted); restarting inside it would log its steps twice"
    )
    if not if_possible:
        raise CheckpointError(
            f"{message}. Pass resume={IF_POSSIBLE!r} to start a new run instead, or unset CAIRN_RUN_ID."
        )
    new_id = None
    if rank0:  # not start_run(): it would take CAIRN_RUN_ID, the old run, again
        experiment = client.get_run(run_id).info.experiment_id
        new_id = client.create_run(experiment).info.run_id
        fluent.start_run(run_id=new_id)
    warnings.warn(f"cairn: {message}; training starts from scratch in a new run {new_id}", runs.ResumeWarning, 2)
    fresh.run_id = new_id
    return fresh


def _saved_optimizers(
    pending: _Pending, saved: dict[str, Any], live: list[Any], *, unique: bool = False
) -> list[Any] | None:
    """The live optimizers matching the checkpoint's, in its order, or ``None`` if some are not (yet) among ``live``.

    ``unique``: a match must be the only candidate (for optimizers autolog did not see being built, where
    a leftover optimizer of the same class and shapes could be taken for the training one).
    """
    optimizers: list[Any] = []
    signatures = saved.get("optimizers") or []
    if signatures:  # an autolog checkpoint: match class and parameter shapes
        for signature in signatures:
            match = [o for o in live if _optimizer_signature(o) == list(signature) and o not in optimizers]
            if not match or (unique and len(match) > 1):
                return None
            optimizers.append(match[0])
    elif "optimizer" in pending.classes:  # from log_checkpoint: match the class, which must be unambiguous
        for name in pending.classes["optimizer"].split(","):
            match = [o for o in live if _optimizer_signature(o)[0] == name and o not in optimizers]
            if len(match) != 1:
                return None
            optimizers.append(match[0])
    return optimizers or None


def _apply_restore(track: _LoaderTrack | None, *, where: str = "the training DataLoader's first iter()") -> bool:
    """Load the pending checkpoint into the live model/optimizers/schedulers/scaler, arm ``track``'s loader
    (``None``: no loader fits; its position is armed for a later one that does). False: the optimizers are
    not built yet."""
    from cairn.autolog import pytorch as core
    from cairn.checkpoint.capture import restore_training_state

    state = core._state
    pending = state.restore
    assert pending is not None
    saved = (pending.extra or {}).get("autolog", {}) if isinstance(pending.extra, dict) else {}
    made = core._made("optimizer")
    optimizers = _saved_optimizers(pending, saved, made)
    if optimizers is None and pending.earlier_optimizers is None:
        names = [str(s[0]) for s in saved.get("optimizers") or []]
        names += pending.classes.get("optimizer", "").split(",") if not names else []
        pending.earlier_optimizers = [o for o in _optimizers_built_before([n for n in names if n]) if o not in made]
        optimizers = _saved_optimizers(pending, saved, [*made, *pending.earlier_optimizers], unique=True)
        if optimizers is None and len(pending.earlier_optimizers) > 1:
            core._report(
                "matching the checkpoint's optimizer",
                RuntimeError(
                    f"several live optimizers built before autolog() match the checkpoint {pending.path.name}; "
                    "nothing was restored (build the optimizer after autolog() so it is known)"
                ),
            )
    if optimizers is None:
        return False  # not built yet: try again at the next iter()
    state.restore = None
    try:
        schedulers = _schedulers_of(optimizers)
        restore_training_state(
            pending.path,
            optimizer=_one_or_list(optimizers),
            scheduler=_one_or_list(schedulers) if "scheduler" in pending.classes else None,
            scaler=_scaler() if "scaler" in pending.classes else None,
            restore_rng=pending.rank0,
        )
        if "model" in pending.classes:  # loaded before the first forward of the module these optimizers train
            state.pending_model = (pending.path, set().union(*(core._param_ids(o) for o in optimizers)))
            if not state.forward_handles:
                from torch.nn.modules import module as module_module

                core._arm_forward_hooks(module_module)
        state.losses = [float(loss) for loss in saved.get("pending_losses") or []]
        position = "no data position"
        if track is not None:
            track.armed = (pending.dataloader_state, pending.epoch)
            track.train = True
            state.train_track = track
            position = f"epoch {pending.epoch}, batch {pending.batch_in_epoch}"
        elif pending.unfit is not None:
            _restart_epoch(pending, pending.unfit)
            position = f"epoch {pending.epoch} from its beginning"
        elif pending.dataloader_state is not None:
            state.restore_position = (pending.dataloader_state, pending.epoch)
            position = f"epoch {pending.epoch}, batch {pending.batch_in_epoch} (when the DataLoader is iterated)"
        logger.info(
            "cairn: resumed run %s from checkpoint %s at %s: step %s, %s; model, optimizer, scheduler, scaler "
            "and RNG restored",
            pending.run_id,
            pending.path.name,
            where,
            pending.step,
            position,
        )
    except Exception as exc:
        core._report(f"restoring the checkpoint {pending.path}", exc)
    return True


def _restart_epoch(pending: _Pending, track: _LoaderTrack) -> None:
    """The training loader differs from the checkpoint's: its interrupted epoch restarts from its beginning."""
    from cairn.autolog import pytorch as core
    from cairn.autolog._pytorch_loaders import _fingerprint
    from cairn.checkpoint import runs

    loader = track.loader()
    recorded = (pending.dataloader_state or {}).get("fingerprint")
    now = _fingerprint(loader) if loader is not None else None
    changed = ", ".join(
        f"{k} {recorded.get(k)!r} -> {now.get(k)!r}"
        for k in ("dataset", "size", "batch_size")
        if isinstance(recorded, dict) and now is not None and recorded.get(k) != now.get(k)
    )
    track.epoch = pending.epoch if pending.epoch is not None else track.epoch
    track.train = True
    core._state.train_track = track
    warnings.warn(
        f"cairn: resuming run {pending.run_id} from {pending.path.name} (step {pending.step}): the DataLoader "
        f"differs from the checkpoint's ({changed or 'sampler'}); model, optimizer, scheduler, scaler and RNG "
        f"are restored, but the data position cannot be: epoch {pending.epoch} restarts from its beginning",
        runs.ResumeWarning,
        stacklevel=2,
    )


def restore_at_forward(module: nn.Module) -> None:
    """Restore the pending checkpoint at the first training-mode forward of the module the optimizers train,
    when neither :func:`track_state` nor a matching DataLoader did it before (a loop without a DataLoader,
    or one whose DataLoader changed)."""
    from cairn.autolog import pytorch as core

    pending = core._state.restore
    if pending is None or not any(True for _ in module.parameters()):
        return
    saved = (pending.extra or {}).get("autolog", {}) if isinstance(pending.extra, dict) else {}
    optimizers = _saved_optimizers(pending, saved, core._made("optimizer"))
    if optimizers is None:
        return
    ids = set().union(*(core._param_ids(o) for o in optimizers))
    if any(id(p) in ids for p in module.parameters()):
        _apply_restore(None, where="the model's first training forward")


def track_state(getter: Callable[[], Mapping[str, Any]]) -> dict[str, Any] | None:
    """Register the loop's own state for autolog's checkpoints, and (resuming) restore the training state now.

    ``getter`` returns a mapping (tensors, numbers, strings, containers: what ``log_checkpoint(extra=)``
    takes); it is called at every checkpoint, right after the optimizer step that ends a step. Call this
    where the loop is about to start (model and optimizer built): with a pending resume, model (before its
    next forward), optimizers, schedulers, scaler and RNG are restored here, so the loop goes on exactly.

    Returns:
        The mapping saved in the checkpoint resumed from (also ``ResumeState.user_state``), else ``None``.

    Raises:
        CheckpointError: a resume is pending but its optimizers are not built yet.
    """
    from cairn.autolog import pytorch as core
    from cairn.errors import CheckpointError, InvalidArgument

    state = core._state
    if state.config is None:
        raise InvalidArgument("track_state() needs cairn.pytorch.autolog() to be on")
    if not callable(getter):
        raise InvalidArgument("track_state() takes a function returning a dict, e.g. lambda: {'iter_num': it}")
    state.user_state = getter
    pending = state.restore
    if pending is None:
        return None
    user = (pending.extra or {}).get("user") if isinstance(pending.extra, dict) else None
    if not _apply_restore(None, where="track_state()"):
        raise CheckpointError(
            f"cannot resume from {pending.path.name}: the optimizers it holds are not built yet; call "
            "track_state() after building the model and optimizer"
        )
    return dict(user) if isinstance(user, Mapping) else None
