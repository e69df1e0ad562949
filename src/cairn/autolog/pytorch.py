"""Plain-PyTorch autologging: ``cairn.pytorch.autolog()`` makes an ordinary training loop log itself.

What is hooked, all process-wide and undone by ``autolog(disable=True)``:

- torch's *global* optimizer step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``):
  counts steps (the first optimizer that steps is the primary one; its steps are the run's steps,
  starting at 1), logs each optimizer's class and constructor hyperparameters (``defaults``, and the
  param groups' values as built, not as a hand-set warm-up left them at the first step) once as params,
  and the learning rate of every param group at each logged step (read after the step, so it is the
  rate the step used; a scheduler's change shows from the next step);
- ``torch.Tensor.backward``: the scalar ``backward()`` is called on is recorded: read at once when it
  is on the CPU (no sync there, and cheaper than keeping a detached tensor), kept *detached, on its
  device* otherwise (``GradScaler.scale`` is wrapped too, so the unscaled loss is kept under AMP).
  A step's loss is the *sum* of the scalars recorded since the previous step (under gradient
  accumulation, ``(loss / k).backward()`` k times, the objective whose gradients were accumulated;
  for a closure optimizer such as LBFGS, whose ``step(closure)`` evaluates it several times, the first
  evaluation, which is the loss ``step`` returns); ``loss`` is its mean over each logging interval.
  ``torch.autograd.backward(loss)`` is not seen; call ``loss.backward()``;
- ``DataLoader.__iter__`` and ``_BaseDataLoaderIter.__next__``: count epochs and batches (``epoch`` is
  logged when it changes). The *training* loader is the one whose batches are followed by optimizer
  steps;
- the constructors of ``Optimizer``, ``LRScheduler``/``ReduceLROnPlateau`` and ``GradScaler``: they
  note the instances (weakly), so checkpoints find the schedulers and scaler of the optimizers, and an
  optimizer's param-group hyperparameters as built. (Not by scanning ``gc.get_objects()``: that hands
  one thread references to objects other threads are still building, which breaks them.) An optimizer
  or LR scheduler built before ``autolog()`` is looked up once through the garbage collector's
  *referrers* of its class or of its optimizer (only objects of that exact kind are kept): at a
  session's first checkpoint for a scheduler torch marked on the optimizer, at a resume for optimizers
  the checkpoint names; a GradScaler built before is not found, so build it after ``autolog()``;
- global module forward hooks, only until the first optimizer step (they put every module call on
  torch's slow path): they note the top-level modules called and a 5-row slice of their first input.
  The model of the primary optimizer is the noted module whose parameters it holds most of. Its
  summary (parameter counts, ``repr``) becomes the ``model_summary.txt`` artifact at the first step;
  when the run ends (``end_run``, leaving ``with start_run()``, interpreter exit) the model is logged
  with :func:`cairn.flavors.pytorch.log_model`, the input slice as its input example.

Cost on the training thread: a few µs per step (one Python call per hook, a tuple queued per logged
step); no I/O and no ``.item()`` of a device tensor. A background thread turns the queue into metric
points every 0.2 s, reading device losses in bulk (one ``torch.stack(...).tolist()``: one sync per
batch of steps, off the training thread), and hands them to the store's metric writer. Values reach
the store within about half a second, and are flushed before each checkpoint is uploaded and when
the run ends. (``benchmarks/pytorch_autolog.py`` measures it against a loop without logging.)

Runs: the first optimizer step starts a run if none is active (it stays active, as with
``cairn.log_metric``). Under ``torch.distributed`` only rank 0 starts the run and logs; the run id is
broadcast to the other ranks at the first optimizer step of the process (:func:`current_run_id`
returns it there). Optimizers stepped from inside a Lightning ``Trainer`` are left to the Lightning
integration, and :func:`suppressed` turns plain-loop logging off for a block.

Checkpoints (``checkpoint_every_n_steps`` / ``checkpoint_every_n_epochs``) go through
:func:`cairn.checkpoint.runs.log_checkpoint` with the model, every optimizer, their LR schedulers,
the GradScaler, the RNG, the training loader's position and the loop's own state registered with
:func:`~cairn.autolog._pytorch_checkpoints.track_state`. A step checkpoint is taken at the next
*batch boundary*: before the training loader fetches the next batch, i.e. after the loop body that
made the step, so a per-batch ``scheduler.step()`` is in it; after an epoch's last batch it waits
for the next epoch's ``iter()``, after the per-epoch code. Without a DataLoader it is taken right
after the optimizer step that ends the step (never inside an evaluation), or, if the optimizers have
LR schedulers, right after the next ``scheduler.step()`` (else before the model's next forward).
When the run ends, the last step gets a checkpoint if it has none. ``resume=`` continues a run from
its newest checkpoint: optimizers, schedulers, scaler and RNG are loaded at ``track_state()``, else
at the first ``iter()`` of the training loader (recognised by dataset type, size and batch size),
which is fast-forwarded inside the interrupted epoch, else at the model's first training-mode
forward (no DataLoader, or one that changed: a :class:`~cairn.checkpoint.runs.ResumeWarning` says
the epoch restarts from its beginning); the weights right before the model's next forward. One INFO
line on ``cairn.autolog`` says what was restored. The loop starts its epoch count at the returned
``ResumeState.epoch``.

Errors in autolog's own code are reported as :class:`~cairn.autolog.config.AutologWarning` (once per
site) and the training step goes on unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import dataloader as _dataloader_module

# The colder parts live in private sibling modules; the per-step hooks stay here, next to ``_state``.
from cairn.autolog._pytorch_background import _Worker, drain_metrics
from cairn.autolog._pytorch_checkpoints import (
    _checkpoint_now,
    _Pending,
    _prepare_resume,
    _schedule_checkpoint,
    _wrap_scheduler_step,
    arm_loader,
    loader_position,
)
from cairn.autolog._pytorch_checkpoints import note_resumed as note_resumed
from cairn.autolog._pytorch_lightning_hook import _driven_elsewhere, _lightning_call
from cairn.autolog._pytorch_loaders import _LoaderTrack, _wrap_iter
from cairn.autolog._pytorch_session import (
    _first_step_of,
    _on_run_end,
    _start_session,
    _stop_monitor,
    built_groups,
)
from cairn.autolog.config import AutologConfig, PatchSet, report_failure
from cairn.store.base import MetricPoint

__all__ = [
    "PyTorchAutologConfig",
    "arm_loader",
    "autolog",
    "current_run_id",
    "drain_metrics",
    "loader_position",
    "suppressed",
]

INTEGRATION = "pytorch"
SUMMARY_FILE = "model_summary.txt"
_EXAMPLE_ROWS = 5
_MAX_TOP_MODULES = 8
_MAX_PENDING_LOSSES = 100_000
_LIGHTNING_MODULES = ("lightning.pytorch.", "pytorch_lightning.")
logger = logging.getLogger("cairn.autolog")


@dataclass(frozen=True)
class PyTorchAutologConfig(AutologConfig):
    """The options of ``cairn.pytorch.autolog()``, also handed to the Lightning integration's ``enable``.

    Attributes:
        log_every_n_steps: log loss, learning rates (and grad norm) every this many optimizer steps.
        checkpoint_every_n_steps: checkpoint every this many steps (``None``: never).
        checkpoint_every_n_epochs: checkpoint every this many epochs (``None``: never).
        keep_last: checkpoints kept in the run (older ones are deleted from its artifacts).
        log_system_metrics: sample CPU, memory, disk, network (and GPU) as ``system/...`` metrics.
        system_metrics_interval: seconds between system-metric samples.
        log_grad_norm: log the total 2-norm of the gradients (``grad_norm``) at each logging step.
        resume: ``None``/``False``: start fresh; ``True`` or ``"latest"``: continue the run named by
            ``CAIRN_RUN_ID`` (if set) from its newest checkpoint; a run id: continue that run.
    """

    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_n_epochs: int | None = None
    keep_last: int = 3
    log_system_metrics: bool = False
    system_metrics_interval: float = 10.0
    log_grad_norm: bool = False
    resume: bool | str | None = None


# -- state -----------------------------------------------------------------------------------------


@dataclass
class _Session:
    """What autolog knows about the training happening in one run."""

    run_id: str | None  # None: a rank other than 0 (logs nothing)
    created_run: bool
    step: int = 0
    primary: Any = None
    optimizers: list[Any] = field(default_factory=list)
    roles: weakref.WeakKeyDictionary[Any, str] = field(default_factory=weakref.WeakKeyDictionary)
    lr_keys: list[str] = field(default_factory=list)
    lr_groups: list[dict[str, Any]] = field(default_factory=list)  # every optimizer's param groups, flattened
    model: Any = None  # weakref.ref to the module
    example: Any = None
    pending: deque[tuple[Any, ...]] = field(default_factory=deque)
    interval_steps: int = 0  # primary steps since the last logged one: the divisor of the interval's loss
    last_epoch_logged: int = -1
    ckpt_due: bool = False
    last_ckpt_step: int = -1
    forward_ckpt_handle: Any = None
    discovered: tuple[list[Any], Any] | None = None  # schedulers, scaler
    monitor: Any = None
    add_points: Callable[[list[MetricPoint]], None] | None = None  # the store's metric batcher


class _State:
    def __init__(self) -> None:
        self.config: PyTorchAutologConfig | None = None
        self.patches = PatchSet()
        self.handles: list[Any] = []
        self.forward_handles: list[Any] = []
        self.losses: list[Any] = []  # floats (CPU losses) or detached tensors on their device
        self.scaled: tuple[int, Any] | None = None
        self.in_backward = False
        self.session: _Session | None = None
        self.top_modules: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()
        self.depth = 0
        self.loaders: weakref.WeakKeyDictionary[DataLoader[Any], _LoaderTrack] = weakref.WeakKeyDictionary()
        self.current: _LoaderTrack | None = None
        self.train_track: _LoaderTrack | None = None
        self.in_replay = False
        self.restore: _Pending | None = None
        self.pending_model: tuple[Path, set[int]] | None = None
        self.foreign: weakref.WeakSet[Any] = weakref.WeakSet()  # optimizers a Lightning Trainer steps
        self.made: dict[str, weakref.WeakSet[Any]] = {
            "optimizer": weakref.WeakSet(),
            "scheduler": weakref.WeakSet(),
            "scaler": weakref.WeakSet(),
        }
        self.resume_step: int | None = None
        self.built_groups: weakref.WeakKeyDictionary[Any, list[dict[str, str]]] = weakref.WeakKeyDictionary()
        self.user_state: Callable[[], Any] | None = None  # track_state()'s getter, saved in each checkpoint
        self.restore_position: tuple[dict[str, Any], int | None] | None = None  # for a later matching loader
        self.suppress = 0
        self.broadcast_done = False
        self.distributed_run_id: str | None = None
        self.reported: set[str] = set()
        self.drain_lock = threading.Lock()
        self.worker: _Worker | None = None
        self.lightning: Any = None


_state = _State()


def _report(what: str, exc: BaseException) -> None:
    """Report an autolog failure once per ``what`` (later ones go to the debug log)."""
    config = _state.config
    if what in _state.reported:
        logger.debug("cairn pytorch autolog: %s failed again: %r", what, exc)
        return
    _state.reported.add(what)
    report_failure(INTEGRATION, what, exc, silent=bool(config and config.silent))


# -- the public switch -----------------------------------------------------------------------------


def autolog(
    log_every_n_steps: int = 1,
    log_models: bool = True,
    checkpoint_every_n_steps: int | None = None,
    checkpoint_every_n_epochs: int | None = None,
    keep_last: int = 3,
    log_system_metrics: bool = False,
    log_grad_norm: bool = False,
    resume: bool | str | None = None,
    disable: bool = False,
    silent: bool = False,
    *,
    system_metrics_interval: float = 10.0,
    extra_tags: Mapping[str, Any] | None = None,
) -> Any:
    """Turn autologging of plain PyTorch training loops on (again, with new options) or off.

    Also turns on the Lightning integration when Lightning is installed, with the same options.

    Args:
        log_every_n_steps: log ``loss`` (per step the sum of its ``backward()`` scalars, averaged over the
            interval), ``lr`` (``lr/group<j>``, ``lr/opt<i>/...`` for several) and ``epoch`` every this many
            optimizer steps.
        log_models: log the model when the run ends (``model``), with the first forward's input slice
            as input example, and its summary (``model_summary.txt``) at the first step.
        checkpoint_every_n_steps, checkpoint_every_n_epochs: checkpoint into the run (see the module
            docstring for when exactly); ``keep_last`` checkpoints are kept.
        log_system_metrics: sample system metrics in a background thread every ``system_metrics_interval`` s.
        log_grad_norm: also log ``grad_norm``, the total 2-norm of the primary optimizer's gradients.
        resume: ``True``/``"latest"`` continues the run in ``CAIRN_RUN_ID`` (if set), a run id continues
            that run, from its newest checkpoint: the run becomes active now and the model, optimizer,
            scheduler, scaler and RNG are loaded when training starts (see the module docstring), the
            training loader fast-forwarded to the interrupted position. A named run with metrics but no
            checkpoint raises :class:`~cairn.errors.CheckpointError`; ``"if_possible"`` (run from
            ``CAIRN_RUN_ID``) warns and starts a new run instead.
        disable: undo every hook and patch; the active session logs nothing more.
        silent: report autolog failures on the ``cairn.autolog`` logger instead of as warnings.
        extra_tags: tags set on runs autolog starts.

    Returns:
        With ``resume``: the :class:`~cairn.checkpoint.runs.ResumeState` (``epoch`` is where the loop
        should start; ``resumed`` is False when there was nothing to resume). Otherwise ``None``.
    """
    if log_every_n_steps < 1:
        from cairn.errors import InvalidArgument

        raise InvalidArgument(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
    config = PyTorchAutologConfig(
        log_models=log_models,
        disable=disable,
        silent=silent,
        extra_tags=dict(extra_tags or {}),
        log_every_n_steps=log_every_n_steps,
        checkpoint_every_n_steps=checkpoint_every_n_steps,
        checkpoint_every_n_epochs=checkpoint_every_n_epochs,
        keep_last=keep_last,
        log_system_metrics=log_system_metrics,
        system_metrics_interval=system_metrics_interval,
        log_grad_norm=log_grad_norm,
        resume=resume,
    )
    if disable:
        _disable()
        _lightning_call("disable")
        return None
    _enable(config)
    _lightning_call("enable", config)
    if resume:
        return _prepare_resume(resume)
    return None


def _enable(config: PyTorchAutologConfig) -> None:
    from cairn.tracking import fluent

    state = _state
    state.config = config
    state.reported.clear()
    if state.handles:  # already on: new options only
        return
    import torch.optim.optimizer as optim_module
    from torch.nn.modules import module as module_module

    state.handles.append(optim_module.register_optimizer_step_post_hook(_after_step))
    _arm_forward_hooks(module_module)
    state.patches.patch(torch.Tensor, "backward", _wrap_backward)
    _patch_constructors(state)
    state.patches.patch(DataLoader, "__iter__", _wrap_iter)
    state.patches.patch(_dataloader_module._BaseDataLoaderIter, "__next__", _wrap_next)
    scaler_class = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if isinstance(scaler_class, type):
        state.patches.patch(scaler_class, "scale", _wrap_scale)
    fluent.add_end_run_hook(_on_run_end)
    if state.worker is None:
        state.worker = _Worker()


def _patch_constructors(state: _State) -> None:
    """Note optimizers, LR schedulers and grad scalers as they are built (see :func:`_made`)."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    def registering(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                original(self, *args, **kwargs)
                with contextlib.suppress(TypeError):
                    _state.made[kind].add(self)
                    if kind == "optimizer":
                        _note_built(self)

            return __init__

        return wrap

    state.patches.patch(torch.optim.Optimizer, "__init__", registering("optimizer"))
    state.patches.patch(LRScheduler, "__init__", registering("scheduler"))
    state.patches.patch(ReduceLROnPlateau, "__init__", registering("scheduler"))
    state.patches.patch(LRScheduler, "step", _wrap_scheduler_step)  # a deferred checkpoint (no DataLoader)
    scaler_class = getattr(torch.amp, "GradScaler", None)
    if isinstance(scaler_class, type):
        state.patches.patch(scaler_class, "__init__", registering("scaler"))


def _note_built(optimizer: Any) -> None:
    """Keep an optimizer's param-group hyperparameters as built: they become its params at its first step."""
    try:
        _state.built_groups[optimizer] = built_groups(optimizer)
    except Exception as exc:
        _report("noting the optimizer's hyperparameters", exc)


def _disable() -> None:
    from cairn.tracking import fluent

    state = _state
    session = state.session
    if session is not None:
        drain_metrics()
        _stop_monitor(session)
        state.session = None
    for handle in state.handles + state.forward_handles:
        handle.remove()
    state.handles.clear()
    state.forward_handles.clear()
    state.patches.restore()
    fluent.remove_end_run_hook(_on_run_end)
    state.config = None
    state.losses = []
    state.restore = None
    state.pending_model = None
    state.resume_step = None
    state.user_state = None
    state.restore_position = None
    state.current = None  # a loader iterated before must not become the next session's training loader
    state.train_track = None


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Log nothing from plain-loop hooks inside this block (for integrations that log themselves)."""
    _state.suppress += 1
    try:
        yield
    finally:
        _state.suppress -= 1


def current_run_id() -> str | None:
    """The run plain-PyTorch autolog logs into; on ranks other than 0, the run rank 0 logs into."""
    session = _state.session
    if session is not None and session.run_id is not None:
        return session.run_id
    return _state.distributed_run_id


# -- model discovery (forward hooks until the first step) ---------------------------------------------


def _arm_forward_hooks(module_module: Any) -> None:
    _state.depth = 0
    _state.forward_handles.append(module_module.register_module_forward_pre_hook(_forward_pre))
    _state.forward_handles.append(module_module.register_module_forward_hook(_forward_post, always_call=True))


def _forward_pre(module: nn.Module, args: Any) -> None:
    state = _state
    state.depth += 1
    if state.depth != 1:
        return
    if state.restore is not None and module.training:
        from cairn.autolog._pytorch_checkpoints import restore_at_forward

        restore_at_forward(module)
    if state.pending_model is not None:
        _load_pending_model(module)
    if module in state.top_modules or len(state.top_modules) >= _MAX_TOP_MODULES:
        return
    try:
        state.top_modules[module] = _example_of(args)
    except Exception as exc:
        state.top_modules[module] = None
        _report("capturing the input example", exc)


def _load_pending_model(module: nn.Module) -> None:
    """Resume: load the checkpoint's weights into the first top-level module that owns the optimizer's
    parameters, right before its first forward (errors are reported; training then starts untrained)."""
    state = _state
    assert state.pending_model is not None
    path, ids = state.pending_model
    if not any(id(p) in ids for p in module.parameters()):
        return
    state.pending_model = None
    try:
        from cairn.checkpoint.capture import _load_model
        from cairn.checkpoint.state_tree import read_flat_tree

        _load_model(_unwrap(module), read_flat_tree(path, "model"), strict=True, where=str(path))
    except Exception as exc:
        _report(f"restoring the model from {path}", exc)


def _forward_post(module: nn.Module, args: Any, output: Any) -> None:
    _state.depth = max(0, _state.depth - 1)


def _example_of(args: Any) -> Any:
    """A small CPU copy of the first positional input (a tensor, or a dict of tensors), else None."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, torch.Tensor):
        return first[:_EXAMPLE_ROWS].detach().to("cpu", copy=True) if first.dim() else None
    if isinstance(first, Mapping) and first and all(isinstance(v, torch.Tensor) and v.dim() for v in first.values()):
        return {str(k): v[:_EXAMPLE_ROWS].detach().to("cpu", copy=True) for k, v in first.items()}
    return None


def _remove_forward_hooks() -> None:
    for handle in _state.forward_handles:
        handle.remove()
    _state.forward_handles.clear()


def _unwrap(model: Any) -> Any:
    from cairn.checkpoint.capture import _unwrap as unwrap

    return unwrap(model)


def _param_ids(optimizer: Any) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _made(kind: str) -> list[Any]:
    """Live objects of a kind whose construction autolog saw (``"optimizer"``, ``"scheduler"``, ``"scaler"``).

    Registries filled by wrapping the constructors, because scanning ``gc.get_objects()`` would hand
    this thread references to objects other threads are still building (e.g. a tuple being resized),
    which breaks them.
    """
    return list(_state.made[kind])


def _model_for(optimizer: Any) -> tuple[nn.Module | None, Any]:
    """The module an optimizer trains (the top-level module called whose parameters it holds most of),
    and its recorded input example; ``(None, None)`` when no such module ran a forward while autolog was on."""
    ids = _param_ids(optimizer)
    best, best_count, example = None, 0, None
    for module, recorded in list(_state.top_modules.items()):
        count = sum(1 for p in module.parameters() if id(p) in ids)
        if count > best_count:
            best, best_count, example = module, count, recorded
    return (_unwrap(best), example) if best is not None else (None, None)


# -- distributed ---------------------------------------------------------------------------------------


def _dist() -> Any:
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


# -- the step hook ---------------------------------------------------------------------------------------


def _after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    state = _state
    if state.config is None:
        return
    try:
        session = state.session
        if session is None:
            if optimizer in state.foreign:
                state.losses.clear()
                return
            if state.suppress or _driven_elsewhere(optimizer):
                if not state.suppress:
                    state.foreign.add(optimizer)  # asked once per Lightning/Trainer optimizer, not per step
                state.losses.clear()
                _remove_forward_hooks()
                return
            session = _start_session()
        role = "primary" if optimizer is session.primary else session.roles.get(optimizer)
        if role is None:
            role = _first_step_of(session, optimizer)
            _remove_forward_hooks()
        if role == "ignored" or session.run_id is None or state.suppress:
            state.losses.clear()
            return
        if role != "primary":
            return
        if len(state.losses) > 1 and (args[1] if len(args) > 1 else kwargs.get("closure")) is not None:
            del state.losses[1:]  # a closure optimizer (LBFGS) evaluated it several times: its loss is the first
        session.step += 1
        session.interval_steps += 1
        track = state.current
        if track is not None and not track.train:
            track.train = True
            state.train_track = track
        config = state.config
        if session.step % config.log_every_n_steps == 0:
            _emit(session, config)
        every = config.checkpoint_every_n_steps
        if every and session.step % every == 0:
            _schedule_checkpoint(session)
    except Exception as exc:
        _report("logging the optimizer step", exc)


def _driven_by_lightning() -> bool:
    """Whether the optimizer step comes from inside a Lightning Trainer (which has its own integration)."""
    if "lightning" not in sys.modules and "pytorch_lightning" not in sys.modules:
        return False
    frame: Any = sys._getframe(2)
    depth = 0
    while frame is not None and depth < 80:
        if frame.f_globals.get("__name__", "").startswith(_LIGHTNING_MODULES):
            return True
        frame = frame.f_back
        depth += 1
    return False


def _emit(session: _Session, config: PyTorchAutologConfig) -> None:
    """Queue the interval's values as they are (one loss value, lr floats): about 1 µs, no device sync.

    A step's loss is the sum of the ``backward()`` scalars since the previous step (with gradient
    accumulation, ``(loss / k).backward()`` k times: the objective whose gradients were accumulated);
    the logged ``loss`` is its mean over the interval's steps. Several recorded scalars are queued as
    ``(scalars, steps)`` and summed by the background thread (see :func:`_loss_floats`), so a micro-step
    costs one ``append`` and a step with accumulation one more tuple and list. The background thread
    turns the queue into metric points every 0.2 s (see :func:`_to_floats`). Allocations are kept to
    one tuple per step: every container the loop allocates brings Python's cyclic garbage collector
    (which walks torch's many objects) closer.
    """
    state = _state
    losses = state.losses
    steps = session.interval_steps
    session.interval_steps = 0
    loss: Any = None
    if len(losses) == 1 and steps == 1:
        loss = losses[0]
        losses.clear()
    elif losses:
        loss = (losses, steps or 1)
        state.losses = []
    groups = session.lr_groups
    track = state.train_track
    session.pending.append(
        (
            session.step,
            time.time_ns() // 1_000_000,
            loss,
            groups[0]["lr"] if len(groups) == 1 else [group["lr"] for group in groups],
            _grad_norm(session.primary) if config.log_grad_norm else None,
            track.epoch if track is not None and track.epoch >= 0 else None,
        )
    )


def _grad_norm(optimizer: Any) -> torch.Tensor | None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)


# -- patched methods --------------------------------------------------------------------------------------


def _wrap_backward(original: Callable[..., Any]) -> Callable[..., Any]:
    def backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        state = _state
        if state.in_backward or (args[0] if args else kwargs.get("gradient")) is not None:
            return original(self, *args, **kwargs)
        try:
            # A CPU value is read now (no sync; cheaper than detach()); elsewhere it stays on its device.
            loss = self.item() if self.is_cpu else self.detach()
            scaled = state.scaled
            if scaled is not None and scaled[0] == id(self):
                loss = scaled[1]
                state.scaled = None
            losses = state.losses
            losses.append(loss)
            if len(losses) > _MAX_PENDING_LOSSES:  # backward without optimizer steps: keep memory bounded
                del losses[: _MAX_PENDING_LOSSES // 2]
        except Exception as exc:
            _report("recording the loss", exc)
        state.in_backward = True
        try:
            return original(self, *args, **kwargs)
        finally:
            state.in_backward = False

    return backward


def _wrap_scale(original: Callable[..., Any]) -> Callable[..., Any]:
    def scale(self: Any, outputs: Any) -> Any:
        scaled = original(self, outputs)
        if isinstance(outputs, torch.Tensor) and isinstance(scaled, torch.Tensor) and outputs.dim() == 0:
            _state.scaled = (id(scaled), outputs.item() if outputs.is_cpu else outputs.detach())
        return scaled

    return scale


def _wrap_next(original: Callable[..., Any]) -> Callable[..., Any]:
    def __next__(self: Any) -> Any:
        track = getattr(self, "_cairn_track", None)
        if track is None:
            return original(self)
        state = _state
        session = state.session
        if session is not None and session.ckpt_due and track.train:
            length = track.length
            if length is None or track.batch < length:  # a batch follows: this is a batch boundary
                _checkpoint_now(session, track, boundary=False)
        try:
            batch = original(self)
        except StopIteration:
            track.finished = True
            raise
        track.batch += 1
        state.current = track
        return batch

    return __next__
