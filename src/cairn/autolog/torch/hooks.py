"""What plain-PyTorch autolog hooks into torch, all process-wide and undone when it is disabled.

Each hook is a closure over the integration that installed it (a :class:`HookTarget`), so it reaches
that integration directly and nothing else:

- torch's global optimizer step post-hook: :meth:`HookTarget.on_optimizer_step`;
- ``torch.Tensor.backward``: the scalar ``backward()`` is called on is recorded (``GradScaler.scale`` is
  wrapped too, so the unscaled loss is kept under AMP). ``torch.autograd.backward(loss)`` is not seen;
- ``DataLoader.__iter__`` and ``_BaseDataLoaderIter.__next__``: epochs, batches, batch boundaries;
- the constructors of ``Optimizer``, ``LRScheduler``/``ReduceLROnPlateau`` and ``GradScaler`` (noting the
  instances), and ``LRScheduler.step`` (a checkpoint deferred until the scheduler stepped);
- global module forward hooks, only while the model is being discovered (they put every module call
  on torch's slow path): :meth:`HookTarget.on_forward`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import dataloader as dataloader_module

from cairn.autolog.config import PatchSet
from cairn.autolog.torch.config import Report
from cairn.autolog.torch.loaders import DataTracking, LoaderTrack
from cairn.autolog.torch.losses import LossRecorder
from cairn.autolog.torch.session import Session
from cairn.errors import RunLeased

__all__ = ["HookTarget", "arm_forward_hooks", "arm_step_hook", "patch_torch"]


class HookTarget(Protocol):
    """What the hooks call: the integration that installed them."""

    losses: LossRecorder
    data: DataTracking
    session: Session | None

    @property
    def report(self) -> Report: ...
    def on_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None: ...
    def on_forward(self, module: nn.Module, args: Any) -> None: ...
    def on_iter(self, loader: DataLoader[Any]) -> tuple[LoaderTrack | None, Any]: ...
    def before_batch(self, session: Session, track: LoaderTrack) -> None: ...
    def after_scheduler_step(self) -> None: ...
    def note_constructed(self, kind: str, obj: Any) -> None: ...


def arm_step_hook(target: HookTarget) -> Any:
    """torch's global optimizer step post-hook; returns its removable handle."""
    import torch.optim.optimizer as optimizer_module

    return optimizer_module.register_optimizer_step_post_hook(target.on_optimizer_step)


def arm_forward_hooks(target: HookTarget) -> list[Any]:
    """Global forward pre/post hooks calling ``target.on_forward`` for top-level module calls."""
    from torch.nn.modules import module as module_module

    depth = [0]

    def forward_pre(module: nn.Module, args: Any) -> None:
        depth[0] += 1
        if depth[0] == 1:
            target.on_forward(module, args)

    def forward_post(module: nn.Module, args: Any, output: Any) -> None:
        depth[0] = max(0, depth[0] - 1)

    return [
        module_module.register_module_forward_pre_hook(forward_pre),
        module_module.register_module_forward_hook(forward_post, always_call=True),
    ]


def patch_torch(target: HookTarget) -> PatchSet:
    """Patch torch's classes for ``target``; ``restore()`` on the returned set undoes every patch."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    patches = PatchSet()
    patches.patch(torch.Tensor, "backward", _backward(target))
    patches.patch(DataLoader, "__iter__", _dataloader_iter(target))
    patches.patch(dataloader_module._BaseDataLoaderIter, "__next__", _dataloader_next(target))
    patches.patch(torch.optim.Optimizer, "__init__", _noting(target, "optimizer"))
    patches.patch(LRScheduler, "__init__", _noting(target, "scheduler"))
    patches.patch(ReduceLROnPlateau, "__init__", _noting(target, "scheduler"))
    patches.patch(LRScheduler, "step", _scheduler_step(target))
    scaler_class = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if isinstance(scaler_class, type):
        patches.patch(scaler_class, "__init__", _noting(target, "scaler"))
        patches.patch(scaler_class, "scale", _scale(target))
    return patches


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def _noting(target: HookTarget, kind: str) -> Wrapper:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            target.note_constructed(kind, self)

        return __init__

    return wrap


def _backward(target: HookTarget) -> Wrapper:
    losses = target.losses

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if losses.in_backward or (args[0] if args else kwargs.get("gradient")) is not None:
                return original(self, *args, **kwargs)
            try:
                losses.record(self)
            except RunLeased:  # another process is resuming the run: training on would write into it twice
                raise
            except Exception as exc:
                target.report("recording the loss", exc)
            losses.in_backward = True
            try:
                return original(self, *args, **kwargs)
            finally:
                losses.in_backward = False

        return backward

    return wrap


def _scale(target: HookTarget) -> Wrapper:
    losses = target.losses

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def scale(self: Any, outputs: Any) -> Any:
            scaled = original(self, outputs)
            losses.note_scaled(outputs, scaled)
            return scaled

        return scale

    return wrap


def _scheduler_step(target: HookTarget) -> Wrapper:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def step(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            target.after_scheduler_step()
            return result

        return step

    return wrap


def _dataloader_iter(target: HookTarget) -> Wrapper:
    data = target.data

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def __iter__(self: DataLoader[Any]) -> Any:
            if data.in_replay:
                return original(self)
            track, iterator = target.on_iter(self)
            if iterator is None:
                iterator = original(self)
            if track is not None:
                try:
                    iterator._cairn_track = track
                except (AttributeError, TypeError):
                    pass
            return iterator

        return __iter__

    return wrap


def _dataloader_next(target: HookTarget) -> Wrapper:
    data = target.data

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def __next__(self: Any) -> Any:
            track = getattr(self, "_cairn_track", None)
            if track is None:
                return original(self)
            session = target.session
            if session is not None and session.ckpt_due and track.train:  # one attribute read per batch
                target.before_batch(session, track)
            try:
                batch = original(self)
            except StopIteration:
                track.finished = True
                raise
            track.batch += 1
            data.current = track
            return batch

        return __next__

    return wrap
