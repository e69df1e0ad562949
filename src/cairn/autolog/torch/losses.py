"""The scalars ``backward()`` is called on, recorded between two optimizer steps.

Read at once when on the CPU (no sync there, and cheaper than keeping a detached tensor), kept
*detached, on its device* otherwise; under AMP, the unscaled loss that ``GradScaler.scale`` was given.
A step's loss is the *sum* of the scalars recorded since the previous step (gradient accumulation:
``(loss / k).backward()`` k times is the objective whose gradients were accumulated).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LossRecorder"]

_MAX_PENDING_LOSSES = 100_000


class LossRecorder:
    """The recorded ``backward()`` scalars of the step in progress: floats or detached device tensors."""

    __slots__ = ("in_backward", "scaled", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.scaled: tuple[int, Any] | None = None  # (id of GradScaler.scale's output, the unscaled loss)
        self.in_backward = False

    def record(self, loss: torch.Tensor) -> None:
        value: Any = loss.item() if loss.is_cpu else loss.detach()
        scaled = self.scaled
        if scaled is not None and scaled[0] == id(loss):
            value = scaled[1]
            self.scaled = None
        values = self.values
        values.append(value)
        if len(values) > _MAX_PENDING_LOSSES:  # backward without optimizer steps: keep memory bounded
            del values[: _MAX_PENDING_LOSSES // 2]

    def note_scaled(self, outputs: Any, scaled: Any) -> None:
        """``GradScaler.scale(outputs)`` returned ``scaled``: its ``backward()`` records ``outputs``."""
        if isinstance(outputs, torch.Tensor) and isinstance(scaled, torch.Tensor) and outputs.dim() == 0:
            self.scaled = (id(scaled), outputs.item() if outputs.is_cpu else outputs.detach())

    def keep_first(self) -> None:
        """A closure optimizer (LBFGS) evaluated its closure several times: its step's loss is the first."""
        del self.values[1:]

    def take_interval(self, steps: int) -> Any:
        """The loss of a logging interval of ``steps`` steps, leaving none recorded: one value, or
        ``(scalars, steps)`` (their sum over ``steps``, computed off the training thread), or None."""
        values = self.values
        if len(values) == 1 and steps == 1:
            loss = values[0]
            values.clear()  # no new list: one tuple per step is all the loop allocates
            return loss
        if values:
            self.values = []
            return (values, steps or 1)
        return None

    def clear(self) -> None:
        self.values.clear()

    def as_floats(self) -> list[float]:
        """For a checkpoint (a device sync only for values kept on a device)."""
        return [float(value) for value in self.values]

    def replace(self, floats: list[float]) -> None:
        """A resume: the step in progress when the checkpoint was taken had recorded these."""
        self.values = list(floats)
