"""What autolog logs once per optimizer and model: hyperparameters as params, learning-rate keys, the summary."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["built_groups", "grad_norm", "lr_keys", "model_summary", "optimizer_params"]


def lr_keys(optimizers: list[Any]) -> list[str]:
    """``lr`` (``lr/group<j>``, ``lr/opt<i>/...`` for several) for every param group of ``optimizers``."""
    keys = []
    for i, optimizer in enumerate(optimizers):
        groups = len(optimizer.param_groups)
        prefix = "lr" if len(optimizers) == 1 else f"lr/opt{i}"
        keys += [prefix if groups == 1 else f"{prefix}/group{j}" for j in range(groups)]
    return keys


def optimizer_params(optimizer: Any, index: int, built: list[dict[str, str]] | None = None) -> dict[str, str]:
    """``optimizer_name``, the constructor's hyperparameters (``optimizer.defaults``), and per param group
    the values it was built with (:func:`built_groups`; ``group<j>.`` prefixed): all of them for groups
    beyond the first, those that differ from the defaults for the first (``group0.``).

    Not the groups' values at the first step: a loop that sets ``param_group['lr']`` by hand (warm-up) or
    a scheduler has changed them by then. Without ``built`` (an optimizer built before ``autolog()``, or
    groups added later) a group's current values are used, with ``initial_lr`` (a scheduler's record of
    the configured rate) as its ``lr``.
    """
    prefix = "" if index == 0 else f"optimizer{index}."
    defaults = _hyperparameters(optimizer.defaults)
    params = {f"{prefix}optimizer_name": type(optimizer).__name__}
    params.update({f"{prefix}{key}": value for key, value in defaults.items()})
    for j, group in enumerate(optimizer.param_groups):
        values = built[j] if built is not None and j < len(built) else _hyperparameters(group)
        for key, value in values.items():
            if j > 0 or defaults.get(key) != value:
                params[f"{prefix}group{j}.{key}"] = value
    return params


def built_groups(optimizer: Any) -> list[dict[str, str]]:
    """Each param group's hyperparameters as the optimizer is now (called by autolog's constructor hook)."""
    return [_hyperparameters(group) for group in optimizer.param_groups]


def _hyperparameters(values: Any) -> dict[str, str]:
    """A param group's (or ``defaults``') hyperparameters as param values: ``params`` and ``None`` left out."""
    out = {}
    for key, value in values.items():
        if key in ("params", "initial_lr") or value is None:
            continue
        if key == "lr" and "initial_lr" in values:
            value = values["initial_lr"]  # a scheduler may have changed lr already; initial_lr is the configured one
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        out[key] = str(value)
    return out


def grad_norm(optimizer: Any) -> torch.Tensor | None:
    """The total 2-norm of the gradients of ``optimizer``'s parameters (a device tensor), None without any."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)


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
