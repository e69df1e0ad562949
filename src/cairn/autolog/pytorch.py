"""Plain-PyTorch autologging: ``cairn.pytorch.autolog()`` makes an ordinary training loop log itself.

What is hooked, all process-wide and undone by ``autolog(disable=True)``:

- torch's *global* optimizer step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``):
  counts steps (the first optimizer that steps is the primary one; its steps are the run's steps,
  starting at 1), logs each optimizer's class and param-group hyperparameters once as params, and the
  learning rate of every param group at each logged step (read after the step, so it is the rate the
  step used; a scheduler's change shows from the next step);
- ``torch.Tensor.backward``: the scalar ``backward()`` is called on is recorded: read at once when it
  is on the CPU (no sync there, and cheaper than keeping a detached tensor), kept *detached, on its
  device* otherwise (``GradScaler.scale`` is wrapped too, so the unscaled loss is kept under AMP).
  ``loss`` is the mean over each logging interval. ``torch.autograd.backward(loss)`` is not seen;
  call ``loss.backward()``;
- ``DataLoader.__iter__`` and ``_BaseDataLoaderIter.__next__``: count epochs and batches (``epoch`` is
  logged when it changes). The *training* loader is the one whose batches are followed by optimizer
  steps;
- the constructors of ``Optimizer``, ``LRScheduler``/``ReduceLROnPlateau`` and ``GradScaler``: they
  note the instances (weakly), so checkpoints find the schedulers and scaler of the optimizers. (Not
  by scanning ``gc.get_objects()``: that hands one thread references to objects other threads are
  still building, which breaks them.) Build them after ``autolog()``: a scheduler built before is
  reported and left out of checkpoints;
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
the GradScaler, the RNG and the training loader's position. A step checkpoint is taken at the next
*batch boundary*: before the training loader fetches the next batch (or before the model's next
forward, without a loader), i.e. after the loop body that made the step, so a per-batch
``scheduler.step()`` is in it; after an epoch's last batch it waits for the next epoch's ``iter()``,
after the per-epoch code. ``resume=`` continues a run from its newest checkpoint: optimizers,
schedulers, scaler and RNG are loaded at the first ``iter()`` of the training loader (recognised by
dataset type, size and batch size), which is fast-forwarded inside the interrupted epoch, and the
weights right before the model's first forward; the loop only starts its epoch count at the returned
``ResumeState.epoch``.

Errors in autolog's own code are reported as :class:`~cairn.autolog.config.AutologWarning` (once per
site) and the training step goes on unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
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

from cairn.autolog.config import AutologConfig, PatchSet, report_failure
from cairn.checkpoint.dataloader import EpochStart, LoaderState, capture_epoch_start, resumable_position
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
_DRAIN_INTERVAL_S = 0.2
_LIGHTNING_MODULES = ("lightning.pytorch.", "pytorch_lightning.")
_LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning")
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


class _LoaderTrack:
    """Epoch and batch bookkeeping of one DataLoader."""

    __slots__ = ("__weakref__", "armed", "batch", "epoch", "epoch_start", "finished", "length", "loader", "train")

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = weakref.ref(loader)
        self.epoch = -1
        self.batch = 0
        self.finished = False
        self.train = False
        self.epoch_start: EpochStart | None = None
        self.armed: tuple[dict[str, Any] | None, int | None] | None = None
        try:
            self.length: int | None = len(loader)
        except TypeError:
            self.length = None

    def position(self, *, boundary: bool) -> dict[str, Any]:
        """This loader's position as a checkpoint tree (``boundary``: the next epoch has not started)."""
        if boundary:
            state = LoaderState(epoch_start=None, batch_in_epoch=0, epoch_finished=True)
        else:
            state = LoaderState(epoch_start=self.epoch_start, batch_in_epoch=self.batch, epoch_finished=self.finished)
        loader = self.loader()
        return {**state.to_tree(), "fingerprint": _fingerprint(loader) if loader is not None else None}


def _fingerprint(loader: DataLoader[Any]) -> dict[str, Any]:
    """What tells the training loader apart from others when a resumed process iterates them."""
    dataset = loader.dataset
    try:
        size: int | None = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
    kind = type(dataset)
    return {"dataset": f"{kind.__module__}.{kind.__qualname__}", "size": size, "batch_size": loader.batch_size}


def _fits(tree: dict[str, Any] | None, loader: DataLoader[Any]) -> bool:
    """Whether ``loader`` looks like the loader whose position ``tree`` holds (True when unknown)."""
    recorded = tree.get("fingerprint") if isinstance(tree, dict) else None
    return recorded is None or recorded == _fingerprint(loader)


class _PositionView:
    """Gives ``log_checkpoint(loader=...)`` a tracked plain DataLoader's position (``state_dict()``)."""

    def __init__(self, tree: dict[str, Any]) -> None:
        self._tree = tree

    def state_dict(self) -> dict[str, Any]:
        return self._tree


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
    last_epoch_logged: int = -1
    ckpt_due: bool = False
    last_ckpt_step: int = -1
    forward_ckpt_handle: Any = None
    discovered: tuple[list[Any], Any] | None = None  # schedulers, scaler
    monitor: Any = None
    add: Callable[[MetricPoint], None] | None = None  # the store's metric batcher


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
        log_every_n_steps: log ``loss`` (the mean of the interval's ``backward()`` scalars), ``lr``
            (``lr/group<j>``, ``lr/opt<i>/...`` for several) and ``epoch`` every this many optimizer steps.
        log_models: log the model when the run ends (``model``), with the first forward's input slice
            as input example, and its summary (``model_summary.txt``) at the first step.
        checkpoint_every_n_steps, checkpoint_every_n_epochs: checkpoint into the run (see the module
            docstring for when exactly); ``keep_last`` checkpoints are kept.
        log_system_metrics: sample system metrics in a background thread every ``system_metrics_interval`` s.
        log_grad_norm: also log ``grad_norm``, the total 2-norm of the primary optimizer's gradients.
        resume: ``True``/``"latest"`` continues the run in ``CAIRN_RUN_ID`` (if set), a run id continues
            that run, from its newest checkpoint: the run becomes active now and the model, optimizer,
            scheduler, scaler and RNG are loaded when training starts (the first ``iter()`` of the
            training loader), which is also fast-forwarded to the interrupted position.
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


def _lightning_call(name: str, *args: Any) -> None:
    """Forward to ``cairn.autolog.lightning`` when Lightning is installed (its failures are warnings).

    Importing Lightning takes seconds, so when it is not imported yet, ``enable`` is deferred until
    the script imports it (a post-import hook on ``lightning`` / ``pytorch_lightning``).
    """
    _LightningImportHook.uninstall()
    if name == "enable" and not any(top in sys.modules for top in _LIGHTNING_PACKAGES):
        if any(importlib.util.find_spec(top) is not None for top in _LIGHTNING_PACKAGES):
            _LightningImportHook.install(*args)
        return
    if not any(top in sys.modules for top in _LIGHTNING_PACKAGES):
        return  # never imported, so never enabled
    try:
        module = importlib.import_module("cairn.autolog.lightning")
    except ImportError as exc:
        logger.debug("cairn: Lightning autolog is not available: %s", exc)
        return
    try:
        getattr(module, name)(*args)
    except Exception as exc:
        _report(f"{name} of the Lightning integration", exc)


class _LightningImportHook:
    """A ``sys.meta_path`` finder that enables the Lightning integration once Lightning is imported.

    It watches ``lightning``, ``pytorch_lightning`` and ``cairn.autolog.lightning``; after any of them
    finishes executing, it enables the integration if Lightning is loaded and the integration module
    is complete (it may itself be the one importing Lightning), then removes itself.
    """

    _installed: _LightningImportHook | None = None
    WATCHED = (*_LIGHTNING_PACKAGES, "cairn.autolog.lightning")

    def __init__(self, config: Any) -> None:
        self.config = config
        self.busy = False

    @classmethod
    def install(cls, config: Any) -> None:
        cls.uninstall()
        cls._installed = cls(config)
        sys.meta_path.insert(0, cls._installed)

    @classmethod
    def uninstall(cls) -> None:
        hook, cls._installed = cls._installed, None
        if hook is not None and hook in sys.meta_path:
            sys.meta_path.remove(hook)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.WATCHED or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            self.maybe_enable()

        loader.exec_module = exec_module
        return spec

    def maybe_enable(self) -> None:
        if _LightningImportHook._installed is not self or not any(t in sys.modules for t in _LIGHTNING_PACKAGES):
            return
        integration = sys.modules.get("cairn.autolog.lightning")
        if integration is None:
            try:
                integration = importlib.import_module("cairn.autolog.lightning")  # may enable through this hook
            except ImportError as exc:
                logger.debug("cairn: Lightning autolog is not available: %s", exc)
                _LightningImportHook.uninstall()
                return
        if _LightningImportHook._installed is not self or not hasattr(integration, "enable"):
            return  # done already, or the integration module is still executing (it calls back when done)
        _LightningImportHook.uninstall()
        try:
            integration.enable(self.config)
        except Exception as exc:
            _report("enable of the Lightning integration", exc)


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

            return __init__

        return wrap

    state.patches.patch(torch.optim.Optimizer, "__init__", registering("optimizer"))
    state.patches.patch(LRScheduler, "__init__", registering("scheduler"))
    state.patches.patch(ReduceLROnPlateau, "__init__", registering("scheduler"))
    scaler_class = getattr(torch.amp, "GradScaler", None)
    if isinstance(scaler_class, type):
        state.patches.patch(scaler_class, "__init__", registering("scaler"))


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
            if state.suppress or _driven_by_lightning():
                if not state.suppress:
                    state.foreign.add(optimizer)  # one stack walk per Lightning optimizer, not per step
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
        session.step += 1
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


def _start_session() -> _Session:
    from cairn.tracking import fluent

    state = _state
    config = state.config
    assert config is not None
    dist = _dist()
    rank = dist.get_rank() if dist is not None else 0
    run_id: str | None = None
    created = False
    if rank == 0:
        try:
            active = fluent.active_run()
            if active is None:
                active = fluent.start_run(tags=dict(config.extra_tags))
                created = True
            run_id = active.info.run_id
        except Exception as exc:
            _report("starting a run", exc)
    if dist is not None and dist.get_world_size() > 1 and not state.broadcast_done:
        state.broadcast_done = True
        shared = [run_id]
        dist.broadcast_object_list(shared, src=0)
        state.distributed_run_id = shared[0]
    session = _Session(run_id=run_id if rank == 0 else None, created_run=created)
    if session.run_id is not None:
        try:
            from cairn.tracking import config as tracking_config

            session.add = tracking_config.get_batcher(fluent._get_client().store).add
        except Exception as exc:
            _report("finding the metric writer", exc)
    if state.resume_step is not None:
        session.step = state.resume_step
        state.resume_step = None
    state.session = session
    if session.run_id is not None and config.log_system_metrics:
        _start_monitor(session, config)
    return session


def _first_step_of(session: _Session, optimizer: Any) -> str:
    state = _state
    if _driven_by_lightning():
        session.roles[optimizer] = "ignored"
        return "ignored"
    role = "primary" if session.primary is None else "secondary"
    session.roles[optimizer] = role
    if role == "primary":
        session.primary = optimizer
    session.optimizers.append(optimizer)
    session.lr_keys = _lr_keys(session.optimizers)
    session.lr_groups = [group for o in session.optimizers for group in o.param_groups]
    if session.run_id is None:
        return role
    config = state.config
    assert config is not None
    params = _optimizer_params(optimizer, len(session.optimizers) - 1)
    run_id = session.run_id
    _submit(lambda: _log_params(run_id, params), "logging optimizer params")
    if session.model is None:
        model, example = _model_for(optimizer)
        if model is not None:
            session.model = weakref.ref(model)
            session.example = example
            if config.log_models:
                summary = model_summary(model)
                _submit(lambda: _log_text(run_id, summary, SUMMARY_FILE), "logging the model summary")
    return role


def _lr_keys(optimizers: list[Any]) -> list[str]:
    keys = []
    for i, optimizer in enumerate(optimizers):
        groups = len(optimizer.param_groups)
        prefix = "lr" if len(optimizers) == 1 else f"lr/opt{i}"
        keys += [prefix if groups == 1 else f"{prefix}/group{j}" for j in range(groups)]
    return keys


def _optimizer_params(optimizer: Any, index: int) -> dict[str, str]:
    """``optimizer_name`` and each param group's hyperparameters (``group<j>.`` prefixed beyond the first)."""
    prefix = "" if index == 0 else f"optimizer{index}."
    params = {f"{prefix}optimizer_name": type(optimizer).__name__}
    for j, group in enumerate(optimizer.param_groups):
        group_prefix = prefix if j == 0 else f"{prefix}group{j}."
        for key, value in group.items():
            if key == "params" or value is None:
                continue
            if key == "lr" and "initial_lr" in group:
                continue  # a scheduler may have changed it already; initial_lr is the configured one
            name = "lr" if key == "initial_lr" else key
            if isinstance(value, torch.Tensor):
                value = value.item() if value.numel() == 1 else value.tolist()
            params[f"{group_prefix}{name}"] = str(value)
    return params


def _emit(session: _Session, config: PyTorchAutologConfig) -> None:
    """Queue the interval's values as they are (one loss tensor, lr floats): about 1 µs, no device sync.

    Several losses (an interval of several backward calls) are averaged on their device first (one
    op, no sync). The background thread turns the queue into metric points every 0.2 s (see
    :func:`_to_floats`). Allocations are kept to one tuple per step: every container the loop allocates
    brings Python's cyclic garbage collector (which walks torch's many objects) closer.
    """
    state = _state
    losses = state.losses
    loss = None
    if len(losses) == 1:
        loss = losses[0]
        losses.clear()
    elif losses:
        loss = _mean(losses)
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


def _mean(losses: list[Any]) -> Any:
    """The mean of recorded losses: a float for floats (CPU losses), else a tensor on their device (no sync)."""
    tensors = [x for x in losses if isinstance(x, torch.Tensor)]
    if not tensors:
        return math.fsum(losses) / len(losses)
    try:
        if len(tensors) == len(losses):
            return torch.stack([x.float().reshape(()) for x in losses]).mean()
    except RuntimeError:  # several devices
        pass
    return math.fsum(float(x) for x in losses) / len(losses)  # mixed: reads the device values


def _to_floats(values: list[Any]) -> list[float]:
    """Recorded values (floats, or one-element tensors on an accelerator) as floats, reading the tensors
    with one ``stack`` and one read (a single device sync, on the calling background thread)."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [float(v) for v in values]
    try:
        read = iter(torch.stack([t.reshape(()) for t in tensors]).float().tolist())
    except RuntimeError:  # several devices or shapes
        read = iter([float(t.item()) for t in tensors])
    return [float(next(read)) if isinstance(v, torch.Tensor) else float(v) for v in values]


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


def _wrap_iter(original: Callable[..., Any]) -> Callable[..., Any]:
    def __iter__(self: DataLoader[Any]) -> Any:
        state = _state
        if state.config is None or state.in_replay:
            return original(self)
        track = None
        iterator = None
        try:
            track = state.loaders.get(self)
            if track is None:
                track = _LoaderTrack(self)
                state.loaders[self] = track
            iterator = _start_epoch(self, track)
        except Exception as exc:
            _report("tracking the DataLoader epoch", exc)
        if iterator is None:
            iterator = original(self)
        if track is not None:
            with contextlib.suppress(AttributeError, TypeError):
                iterator._cairn_track = track
        return iterator

    return __iter__


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


def _start_epoch(loader: DataLoader[Any], track: _LoaderTrack) -> Any:
    """Bookkeeping at ``iter(loader)``: epoch-boundary checkpoint, pending resume, epoch start.

    Returns an iterator when the epoch resumes mid-way (else ``None``: the caller iterates normally).
    """
    state = _state
    config = state.config
    assert config is not None
    session = state.session
    if session is not None and track.train and track.epoch >= 0:
        every = config.checkpoint_every_n_epochs or 0
        epoch_due = every > 0 and track.finished and (track.epoch + 1) % every == 0
        if session.ckpt_due or epoch_due:
            _checkpoint_now(session, track, boundary=True)
    if state.restore is not None and _fits(state.restore.dataloader_state, loader):
        _apply_restore(track)
    armed, track.armed = track.armed, None
    if armed is not None:
        tree, epoch = armed
        track.epoch = epoch if epoch is not None else track.epoch + 1
    else:
        tree = None
        track.epoch += 1
    track.batch = 0
    track.finished = False
    position = LoaderState.from_tree(tree) if tree is not None else None
    if position is not None and position.epoch_start is not None and not position.epoch_finished:
        track.epoch_start = position.epoch_start
        state.in_replay = True
        try:
            iterator = resumable_position(loader, position.batch_in_epoch, epoch_start=position.epoch_start)
        finally:
            state.in_replay = False
        track.batch = position.batch_in_epoch
        return iterator
    track.epoch_start = capture_epoch_start(loader)  # ~0.1 ms per epoch: what a mid-epoch resume needs
    return None


# -- checkpoints --------------------------------------------------------------------------------------


def _schedule_checkpoint(session: _Session) -> None:
    """Mark a checkpoint as due at the next batch boundary (see the module docstring)."""
    session.ckpt_due = True
    if _state.train_track is None and session.forward_ckpt_handle is None and session.model is not None:
        model = session.model()
        if model is not None:

            def before_forward(module: nn.Module, args: Any) -> None:
                if session.ckpt_due:
                    _checkpoint_now(session, None, boundary=False)

            session.forward_ckpt_handle = model.register_forward_pre_hook(before_forward)


def _schedulers_of(optimizers: list[Any]) -> list[Any]:
    """The LR schedulers (built while autolog was on) driving ``optimizers``, in the optimizers' order.

    Warns once when an optimizer is driven by a scheduler autolog did not see being built (it was
    created before ``autolog()``), since checkpoints then lack its state.
    """
    ids = [id(o) for o in optimizers]
    schedulers = [s for s in _made("scheduler") if id(getattr(s, "optimizer", None)) in ids]
    schedulers.sort(key=lambda s: ids.index(id(s.optimizer)))
    covered = {id(s.optimizer) for s in schedulers}
    for optimizer in optimizers:
        if hasattr(optimizer.step, "_wrapped_by_lr_sched") and id(optimizer) not in covered:
            _report(
                "finding the LR scheduler",
                RuntimeError(
                    f"{type(optimizer).__name__} is driven by an LR scheduler created before autolog() was turned "
                    "on; checkpoints do not include its state (call autolog() before building it)"
                ),
            )
    return schedulers


def _scaler() -> Any:
    """The one enabled GradScaler built while autolog was on, if exactly one exists."""
    enabled = [s for s in _made("scaler") if getattr(s, "_enabled", True)]
    return enabled[0] if len(enabled) == 1 else None


def _discover(session: _Session) -> tuple[list[Any], Any]:
    """The LR schedulers of the session's optimizers and the live GradScaler (cached per session)."""
    if session.discovered is None:
        session.discovered = (_schedulers_of(session.optimizers), _scaler())
    return session.discovered


def _checkpoint_now(session: _Session, track: _LoaderTrack | None, *, boundary: bool) -> None:
    """Take the due checkpoint (warnings on failure; the training step is never disturbed)."""
    session.ckpt_due = False
    if session.forward_ckpt_handle is not None:
        session.forward_ckpt_handle.remove()
        session.forward_ckpt_handle = None
    if session.run_id is None or session.step == session.last_ckpt_step:
        return
    try:
        _take_checkpoint(session, track, boundary=boundary)
    except Exception as exc:
        _report(f"checkpointing at step {session.step}", exc)


def _take_checkpoint(session: _Session, track: _LoaderTrack | None, *, boundary: bool) -> None:
    from cairn.checkpoint import runs

    config = _state.config
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
    extra = {
        "autolog": {
            "optimizers": [_optimizer_signature(o) for o in optimizers],
            "pending_losses": [float(loss) for loss in _state.losses],  # a sync only if kept on a device
        }
    }
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
    if _state.config is None or not isinstance(loader, DataLoader):
        return None
    track = _state.loaders.get(loader)
    if track is None:
        track = _LoaderTrack(loader)
        _state.loaders[loader] = track
    return _PositionView(track.position(boundary=False))


def note_resumed(step: int, loader: Any = None, epoch: int | None = None) -> None:
    """Called by :func:`cairn.checkpoint.runs.resume`: autolog's step count continues at ``step`` (and the
    epoch count of ``loader``, a DataLoader or a ResumableLoader, at ``epoch``)."""
    state = _state
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
    track = _state.loaders.get(loader)
    if track is None:
        track = _LoaderTrack(loader)
        _state.loaders[loader] = track
    track.armed = (tree, epoch)


# -- resume --------------------------------------------------------------------------------------------


def _prepare_resume(resume: bool | str) -> Any:
    """Resolve ``resume=``, continue the run now, and keep the checkpoint to load when training starts."""
    from cairn.checkpoint import runs
    from cairn.checkpoint.capture import _read_state_file, load_component
    from cairn.checkpoint.manifest import read_manifest
    from cairn.tracking import fluent

    run_id = os.environ.get("CAIRN_RUN_ID") if resume is True or resume == "latest" else str(resume)
    if not run_id:
        return runs.ResumeState(step=0, epoch=0, batch_in_epoch=0, extra=None, run_id=None, resumed=False)
    dist = _dist()
    rank0 = dist is None or dist.get_rank() == 0
    client = fluent._get_client()
    if rank0:
        runs._check_active(run_id)
    found = runs._find(run_id, "latest", client)
    if found is None:
        if rank0:
            runs._activate(run_id)
        return runs.ResumeState(step=0, epoch=0, batch_in_epoch=0, extra=None, run_id=run_id, resumed=False)
    manifest = read_manifest(found.path, verify_hashes=True)
    info = _read_state_file(found.path)
    components = set(info["components"])
    extra = load_component(found.path, "extra") if "extra" in components else None
    loader_state = load_component(found.path, "dataloader") if "dataloader" in components else None
    _state.restore = _Pending(
        path=found.path,
        step=info["step"],
        epoch=info.get("epoch"),
        batch_in_epoch=info.get("batch_in_epoch"),
        dataloader_state=loader_state,
        classes=dict(info.get("classes") or {}),
        extra=extra,
        rank0=rank0,
    )
    _state.resume_step = info["step"]
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
    )


def _apply_restore(track: _LoaderTrack) -> None:
    """Load the pending checkpoint into the live model/optimizers/schedulers/scaler, arm ``loader``."""
    from cairn.checkpoint.capture import restore_training_state

    state = _state
    pending = state.restore
    assert pending is not None
    saved = (pending.extra or {}).get("autolog", {}) if isinstance(pending.extra, dict) else {}
    live = _made("optimizer")
    optimizers: list[Any] = []
    signatures = saved.get("optimizers") or []
    if signatures:  # an autolog checkpoint: match class and parameter shapes
        for signature in signatures:
            match = [o for o in live if _optimizer_signature(o) == list(signature) and o not in optimizers]
            if not match:
                return  # not built yet: try again at the next iter()
            optimizers.append(match[0])
    elif "optimizer" in pending.classes:  # from log_checkpoint: match the class, which must be unambiguous
        for name in pending.classes["optimizer"].split(","):
            match = [o for o in live if _optimizer_signature(o)[0] == name and o not in optimizers]
            if len(match) != 1:
                return
            optimizers.append(match[0])
    if not optimizers:
        return
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
            state.pending_model = (pending.path, set().union(*(_param_ids(o) for o in optimizers)))
            if not state.forward_handles:
                from torch.nn.modules import module as module_module

                _arm_forward_hooks(module_module)
        state.losses = [float(loss) for loss in saved.get("pending_losses") or []]
        track.armed = (pending.dataloader_state, pending.epoch)
        track.train = True
        state.train_track = track
    except Exception as exc:
        _report(f"restoring the checkpoint {pending.path}", exc)


# -- end of a run --------------------------------------------------------------------------------------


def _on_run_end(run_id: str, status: Any) -> None:
    """End-run hook: last checkpoint if due, metrics, final model, system metrics (never raises)."""
    state = _state
    session = state.session
    if session is None or session.run_id != run_id:
        return
    try:
        config = state.config
        track = state.train_track
        if config is not None:
            every = config.checkpoint_every_n_epochs or 0
            epoch_due = every > 0 and track is not None and track.finished and (track.epoch + 1) % every == 0
            if session.ckpt_due or epoch_due:
                _checkpoint_now(session, track, boundary=bool(track is not None and track.finished))
        drain_metrics()
        if config is not None and config.log_models and session.model is not None:
            model = session.model()
            if model is not None:
                _log_final_model(run_id, model, session.example)
        _stop_monitor(session)
        if session.last_ckpt_step >= 0:
            from cairn.checkpoint import runs

            runs.flush_checkpoints(run_id)
    except Exception as exc:
        _report("finishing the run", exc)
    finally:
        if state.session is session:
            state.session = None
            state.train_track = None
            state.current = None
            state.losses = []
            if state.config is not None and not state.forward_handles:
                from torch.nn.modules import module as module_module

                state.top_modules = weakref.WeakKeyDictionary()
                _arm_forward_hooks(module_module)  # the next session finds its model the same way


def _log_final_model(run_id: str, model: nn.Module, example: Any) -> None:
    try:
        from cairn.flavors import pytorch as flavor
    except ImportError as exc:
        _report("logging the model (cairn.flavors.pytorch is unavailable)", exc)
        return
    try:
        flavor.log_model(model, "model", input_example=example, run_id=run_id)
    except Exception as exc:
        if example is None:
            _report("logging the model", exc)
            return
        try:  # an example the model cannot be traced with must not cost the model itself
            flavor.log_model(model, "model", run_id=run_id)
        except Exception as second:
            _report("logging the model", second)


def _start_monitor(session: _Session, config: PyTorchAutologConfig) -> None:
    from cairn.autolog.system_metrics import SystemMetricsMonitor
    from cairn.tracking import config as tracking_config
    from cairn.tracking import fluent

    try:
        batcher = tracking_config.get_batcher(fluent._get_client().store)
        assert session.run_id is not None
        session.monitor = SystemMetricsMonitor(session.run_id, batcher.add, interval=config.system_metrics_interval)
        session.monitor.start()
    except Exception as exc:
        _report("starting system metrics", exc)


def _stop_monitor(session: _Session) -> None:
    monitor, session.monitor = session.monitor, None
    if monitor is not None:
        try:
            monitor.stop()
        except Exception as exc:
            _report("stopping system metrics", exc)


# -- background work ------------------------------------------------------------------------------------


class _Worker:
    """One daemon thread: runs queued logging tasks and turns queued step values into metric points."""

    def __init__(self) -> None:
        self.tasks: deque[tuple[Callable[[], None], str]] = deque()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="cairn-pytorch-autolog", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.wake.wait(_DRAIN_INTERVAL_S)
            self.wake.clear()
            self.run_tasks()
            try:
                drain_metrics()
            except Exception as exc:
                _report("converting metrics", exc)

    def run_tasks(self) -> None:
        while self.tasks:
            try:
                task, what = self.tasks.popleft()
            except IndexError:
                return
            try:
                task()
            except Exception as exc:
                _report(what, exc)


def _submit(task: Callable[[], None], what: str) -> None:
    worker = _state.worker
    if worker is None:
        task()
        return
    worker.tasks.append((task, what))
    worker.wake.set()


def drain_metrics() -> None:
    """Turn the queued step values of the active session into metric points in the store's batcher now.

    Called by the background thread every 0.2 s, before each checkpoint is uploaded and when the run ends.
    """
    state = _state
    session = state.session
    worker = state.worker
    if worker is not None:
        worker.run_tasks()
    if session is None or session.run_id is None or not session.pending:
        return
    from cairn.tracking import config as tracking_config
    from cairn.tracking import fluent

    with state.drain_lock:
        add = session.add or tracking_config.get_batcher(fluent._get_client().store).add
        pending = session.pending
        items = []
        while pending:
            items.append(pending.popleft())
        for point in _points(session, items):
            add(point)


def _points(session: _Session, items: list[tuple[Any, ...]]) -> list[MetricPoint]:
    """The metric points of queued intervals; tensors read in bulk (see :func:`_to_floats`)."""
    run_id = session.run_id
    assert run_id is not None
    loss_values = iter(_to_floats([loss for _, _, loss, *_ in items if loss is not None]))
    norm_values = iter(_to_floats([norm for *_, norm, _ in items if norm is not None]))
    keys = session.lr_keys
    points: list[MetricPoint] = []
    append = points.append
    for step, timestamp, loss, lrs, grad_norm, epoch in items:
        if loss is not None:
            append(MetricPoint(run_id, "loss", next(loss_values), timestamp, step))
        for key, lr in zip(keys, lrs if type(lrs) is list else (lrs,), strict=False):
            value = lr if type(lr) is float else float(lr.item() if isinstance(lr, torch.Tensor) else lr)
            append(MetricPoint(run_id, key, value, timestamp, step))
        if grad_norm is not None:
            append(MetricPoint(run_id, "grad_norm", next(norm_values), timestamp, step))
        if epoch is not None and epoch != session.last_epoch_logged:
            session.last_epoch_logged = epoch
            append(MetricPoint(run_id, "epoch", float(epoch), timestamp, step))
    return points


def _log_params(run_id: str, params: dict[str, str]) -> None:
    """Log params the run does not have yet (a resumed run keeps its first values)."""
    from cairn.tracking import fluent
    from cairn.tracking.entities import Param

    client = fluent._get_client()
    existing = client.get_run(run_id).data.params
    new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)


def _log_text(run_id: str, text: str, artifact_file: str) -> None:
    from cairn.tracking import fluent

    fluent._get_client().log_text(run_id, text, artifact_file)


def model_summary(model: nn.Module) -> str:
    """Parameter counts (total, trainable, frozen), buffers, per-child counts and the module's ``repr``."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    buffers = sum(b.numel() for b in model.buffers())
    kind = type(model)
    lines = [
        f"Model: {kind.__qualname__} ({kind.__module__}.{kind.__qualname__})",
        f"Parameters: {total:,} total, {trainable:,} trainable, {total - trainable:,} frozen",
        f"Buffers: {buffers:,} elements",
        "",
        f"{'child':<32} {'class':<32} {'parameters':>14}",
    ]
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        lines.append(f"{name:<32} {type(child).__qualname__:<32} {count:>14,}")
    lines += ["", repr(model), ""]
    return "\n".join(lines)
