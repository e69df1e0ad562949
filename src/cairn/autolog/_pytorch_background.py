"""Plain-PyTorch autolog: the background thread and what it does for :mod:`cairn.autolog.pytorch`.

Queued logging tasks (params, the model summary) and the conversion of queued step values into metric
points, off the training thread. What lives there (``_state``, ``_report``) is reached
through it at call time.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cairn.store.base import MetricPoint

if TYPE_CHECKING:
    from cairn.autolog.pytorch import _Session

_DRAIN_INTERVAL_S = 0.2


# -- background work ------------------------------------------------------------------------------------


class _Worker:
    """One daemon thread: runs queued logging tasks and turns queued step values into metric points."""

    def __init__(self) -> None:
        self.tasks: deque[tuple[Callable[[], None], str]] = deque()
        self.wake = threading.Event()
        self.running = threading.RLock()  # held while tasks run, so the end of a run waits for one in flight
        self.thread = threading.Thread(target=self._loop, name="cairn-pytorch-autolog", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        from cairn.autolog import pytorch as core

        while True:
            self.wake.wait(_DRAIN_INTERVAL_S)
            self.wake.clear()
            self.run_tasks()
            try:
                drain_metrics(hold_newest=True)
            except Exception as exc:
                core._report("converting metrics", exc)

    def run_tasks(self) -> None:
        """Run the queued tasks; from another thread, also wait for the task this thread is running.

        Tasks only talk to the store (no lock of the fluent API), so waiting here cannot deadlock.
        """
        from cairn.autolog import pytorch as core

        with self.running:
            while self.tasks:
                try:
                    task, what = self.tasks.popleft()
                except IndexError:
                    return
                try:
                    task()
                except Exception as exc:
                    core._report(what, exc)


def _submit(task: Callable[[], None], what: str) -> None:
    from cairn.autolog import pytorch as core

    worker = core._state.worker
    if worker is None:
        task()
        return
    worker.tasks.append((task, what))
    worker.wake.set()


def drain_metrics(*, hold_newest: bool = False) -> None:
    """Turn the queued step values of the active session into metric points in the store's batcher now.

    Called by the background thread every 0.2 s, before each checkpoint is uploaded and when the run ends.
    ``hold_newest`` (the background thread's call) leaves the values of the step in progress queued: an
    optimizer stepping for the first time later in that step renames the ``lr`` keys (``lr/opt<i>/...``),
    and every step is written under the names known once it is complete, whatever the thread's timing.
    """
    from cairn.autolog import pytorch as core

    state = core._state
    session = state.session
    worker = state.worker
    if worker is not None:
        worker.run_tasks()
    if session is None or session.run_id is None or not session.pending:
        return
    from cairn.tracking import config as tracking_config
    from cairn.tracking import fluent

    with state.drain_lock:
        add_points = session.add_points or tracking_config.get_batcher(fluent._get_client().store).add_many
        pending = session.pending
        items = []
        while pending and not (hold_newest and pending[0][0] >= session.step):
            items.append(pending.popleft())
        if not items:
            return
        add_points(_points(session, items))


def _points(session: _Session, items: list[tuple[Any, ...]]) -> list[MetricPoint]:
    """The metric points of queued intervals; tensors read in bulk (see :func:`_to_floats`)."""
    run_id = session.run_id
    assert run_id is not None
    loss_values = iter(_loss_floats([loss for _, _, loss, *_ in items if loss is not None]))
    norm_values = iter(_to_floats([norm for *_, norm, _ in items if norm is not None]))
    keys = session.lr_keys
    first_key = keys[0] if keys else None
    points: list[MetricPoint] = []
    append = points.append
    for step, timestamp, loss, lrs, grad_norm, epoch in items:
        if loss is not None:
            append(MetricPoint(run_id, "loss", next(loss_values), timestamp, step))
        if type(lrs) is float and first_key is not None:  # one param group with a float lr: most loops
            append(MetricPoint(run_id, first_key, lrs, timestamp, step))
        else:
            for key, lr in zip(keys, lrs if type(lrs) is list else (lrs,), strict=False):
                value = lr if type(lr) is float else float(lr.item() if isinstance(lr, torch.Tensor) else lr)
                append(MetricPoint(run_id, key, value, timestamp, step))
        if grad_norm is not None:
            append(MetricPoint(run_id, "grad_norm", next(norm_values), timestamp, step))
        if epoch is not None and epoch != session.last_epoch_logged:
            session.last_epoch_logged = epoch
            append(MetricPoint(run_id, "epoch", float(epoch), timestamp, step))
    return points


def _loss_floats(losses: list[Any]) -> list[float]:
    """Queued interval losses as floats: a value, or ``(scalars, steps)``: the sum of the ``backward()``
    scalars of the interval's steps over their number. Every device value is read in one go (see
    :func:`_to_floats`)."""
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
