"""One run's training under plain-PyTorch autolog: step counting and its metrics.

A :class:`Session` starts at the first optimizer step (the first optimizer that steps is the primary
one; its steps are the run's steps, starting at 1). Each logged step queues one tuple on the training
thread (about 1 µs, no device sync); :meth:`Session.drain` turns the queue into metric points, reading
device values in bulk (one ``torch.stack(...).tolist()``: one sync per batch of steps, off the training
thread), and hands them to the store's metric writer.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cairn.autolog.torch.config import PyTorchAutologConfig, Report
from cairn.autolog.torch.loaders import LoaderTrack
from cairn.autolog.torch.losses import LossRecorder
from cairn.autolog.torch.params import grad_norm, lr_keys
from cairn.errors import RunLeased
from cairn.store.base import MetricPoint

__all__ = ["Session"]

PRIMARY, SECONDARY, IGNORED = "primary", "secondary", "ignored"


@dataclass
class Session:
    """What autolog knows about the training happening in one run (``run_id`` None: a rank other than 0)."""

    run_id: str | None
    created_run: bool
    peer: bool = False  # a rank > 0 of a torch.distributed job whose rank 0 logs into a run: takes part in checkpoints
    add_points: Callable[[list[MetricPoint]], None] | None = None  # the store's metric writer
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
    drain_lock: threading.Lock = field(default_factory=threading.Lock)

    def role_of(self, optimizer: Any) -> str | None:
        return PRIMARY if optimizer is self.primary else self.roles.get(optimizer)

    def add_optimizer(self, optimizer: Any) -> str:
        """An optimizer's first step: it becomes the primary one (the first) or a secondary one."""
        role = PRIMARY if self.primary is None else SECONDARY
        self.roles[optimizer] = role
        if role == PRIMARY:
            self.primary = optimizer
        self.optimizers.append(optimizer)
        self.lr_keys = lr_keys(self.optimizers)
        self.lr_groups = [group for o in self.optimizers for group in o.param_groups]
        return role

    def ignore(self, optimizer: Any) -> None:
        self.roles[optimizer] = IGNORED

    def current_model(self) -> Any:
        return self.model() if self.model is not None else None

    def emit(self, losses: LossRecorder, config: PyTorchAutologConfig, track: LoaderTrack | None) -> None:
        """Queue the interval's values as they are (its loss from ``losses``, lr floats): no device sync.

        The loss is one value or ``(scalars, steps)``, summed by :meth:`drain` (see :func:`_loss_floats`).
        Allocations are kept to one tuple per step: every container the loop allocates brings Python's
        cyclic garbage collector (which walks torch's many objects) closer.
        """
        loss = losses.take_interval(self.interval_steps)
        self.interval_steps = 0
        groups = self.lr_groups
        self.pending.append(
            (
                self.step,
                time.time_ns() // 1_000_000,
                loss,
                groups[0]["lr"] if len(groups) == 1 else [group["lr"] for group in groups],
                grad_norm(self.primary) if config.log_grad_norm else None,
                track.epoch if track is not None and track.epoch >= 0 else None,
            )
        )

    def drain(self, *, hold_newest: bool = False) -> None:
        """Turn the queued step values into metric points in the store's metric writer now.

        ``hold_newest`` (the background thread's call) leaves the values of the step in progress queued: an
        optimizer stepping for the first time later in that step renames the ``lr`` keys (``lr/opt<i>/...``),
        and every step is written under the names known once it is complete, whatever the thread's timing.
        """
        if self.run_id is None or not self.pending or self.add_points is None:
            return
        with self.drain_lock:
            pending = self.pending
            items = []
            while pending and not (hold_newest and pending[0][0] >= self.step):
                items.append(pending.popleft())
            if items:
                self.add_points(self._points(items))

    def _points(self, items: list[tuple[Any, ...]]) -> list[MetricPoint]:
        """The metric points of queued intervals; tensors read in bulk (see :func:`_to_floats`)."""
        run_id = self.run_id
        assert run_id is not None
        loss_values = iter(_loss_floats([loss for _, _, loss, *_ in items if loss is not None]))
        norm_values = iter(_to_floats([norm for *_, norm, _ in items if norm is not None]))
        keys = self.lr_keys
        first_key = keys[0] if keys else None
        points: list[MetricPoint] = []
        append = points.append
        for step, timestamp, loss, lrs, norm, epoch in items:
            if loss is not None:
                append(MetricPoint(run_id, "loss", next(loss_values), timestamp, step))
            if type(lrs) is float and first_key is not None:  # one param group with a float lr: most loops
                append(MetricPoint(run_id, first_key, lrs, timestamp, step))
            else:
                for key, lr in zip(keys, lrs if type(lrs) is list else (lrs,), strict=False):
                    value = lr if type(lr) is float else float(lr.item() if isinstance(lr, torch.Tensor) else lr)
                    append(MetricPoint(run_id, key, value, timestamp, step))
            if norm is not None:
                append(MetricPoint(run_id, "grad_norm", next(norm_values), timestamp, step))
            if epoch is not None and epoch != self.last_epoch_logged:
                self.last_epoch_logged = epoch
                append(MetricPoint(run_id, "epoch", float(epoch), timestamp, step))
        return points

    def start_monitor(self, config: PyTorchAutologConfig, add_point: Callable[[MetricPoint], None]) -> None:
        """Sample system metrics, numbered by this session's training step."""
        from cairn.autolog.system_metrics import SystemMetricsMonitor

        assert self.run_id is not None
        self.monitor = SystemMetricsMonitor(
            self.run_id,
            add_point,
            interval=config.system_metrics_interval,
            step_source=lambda: self.step,  # the run's step: samples chart against training steps
        )
        self.monitor.start()

    def stop_monitor(self, report: Report) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            try:
                monitor.stop()
            except RunLeased:  # another process is resuming the run: training on would write into it twice
                raise
            except Exception as exc:
                report("stopping system metrics", exc)


def _loss_floats(losses: list[Any]) -> list[float]:
    """Queued interval losses as floats: a value, or ``(scalars, steps)``: the sum of the ``backward()``
    scalars of the interval's steps over their number. Every device value is read in one go."""
    flat: list[Any] = []
    for loss in losses:
        if type(loss) is tuple:
            flat.extend(loss[0])
        else:
            flat.append(loss)
    values = iter(_to_floats(flat))
    return [
        sum(itertools.islice(values, len(loss[0]))) / loss[1] if type(loss) is tuple else next(values)
        for loss in losses
    ]


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
