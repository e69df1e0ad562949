"""Finding what a training loop trains: its model, input example, optimizers, LR schedulers, GradScaler.

- :class:`Constructed`: optimizers, LR schedulers and grad scalers noted (weakly) by the patched
  constructors, and each optimizer's param-group hyperparameters as built. (Not by scanning
  ``gc.get_objects()``: that hands one thread references to objects other threads are still building.)
  Objects built before ``autolog()`` are looked up through the garbage collector's *referrers* of their
  class or optimizer, only at the rare moments that need them, keeping only objects of the exact kind.
- :class:`ModelDiscovery`: the top-level modules called (global forward hooks, only until the first
  optimizer step) and a 5-row slice of their first input; the model of an optimizer is the noted module
  whose parameters it holds most of.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cairn.autolog.torch.config import Report
from cairn.autolog.torch.params import built_groups

__all__ = ["Constructed", "ModelDiscovery", "param_ids", "unwrap"]

_EXAMPLE_ROWS = 5
_MAX_TOP_MODULES = 8
KINDS = ("optimizer", "scheduler", "scaler")


def unwrap(model: Any) -> Any:
    """The module inside DDP/compile wrappers."""
    from cairn.checkpoint.capture import _unwrap

    return _unwrap(model)


def param_ids(optimizer: Any) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


class Constructed:
    """Live optimizers, LR schedulers and grad scalers whose construction autolog saw."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._made: dict[str, weakref.WeakSet[Any]] = {kind: weakref.WeakSet() for kind in KINDS}
        self.built_groups: weakref.WeakKeyDictionary[Any, list[dict[str, str]]] = weakref.WeakKeyDictionary()

    def note(self, kind: str, obj: Any) -> None:
        """Called by the patched constructor of ``kind`` (``"optimizer"``, ``"scheduler"``, ``"scaler"``)."""
        try:
            self._made[kind].add(obj)
        except TypeError:  # not weakly referenceable
            return
        if kind == "optimizer":
            try:
                self.built_groups[obj] = built_groups(obj)
            except Exception as exc:
                self._report("noting the optimizer's hyperparameters", exc)

    def made(self, kind: str) -> list[Any]:
        return list(self._made[kind])

    def schedulers_of(self, optimizers: list[Any]) -> list[Any]:
        """The LR schedulers driving ``optimizers``, in the optimizers' order.

        One built before ``autolog()`` is looked up among the live objects when an optimizer shows it is
        driven by one (torch marks its ``step``); reported if it still cannot be found, since checkpoints
        then lack its state.
        """
        ids = [id(o) for o in optimizers]
        schedulers = [s for s in self.made("scheduler") if id(getattr(s, "optimizer", None)) in ids]
        covered = {id(s.optimizer) for s in schedulers}
        for optimizer in optimizers:
            if hasattr(optimizer.step, "_wrapped_by_lr_sched") and id(optimizer) not in covered:
                found = _schedulers_built_before(optimizer)
                schedulers += found
                if not found:
                    self._report(
                        "finding the LR scheduler",
                        RuntimeError(
                            f"{type(optimizer).__name__} is driven by an LR scheduler cairn cannot find; "
                            "checkpoints do not include its state"
                        ),
                    )
        schedulers.sort(key=lambda s: ids.index(id(s.optimizer)))
        return schedulers

    def scaler(self) -> Any:
        """The one enabled GradScaler built while autolog was on, if exactly one exists."""
        enabled = [s for s in self.made("scaler") if getattr(s, "_enabled", True)]
        return enabled[0] if len(enabled) == 1 else None


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


def optimizers_built_before(class_names: list[str]) -> list[Any]:
    """Live optimizers of the classes named ``"module.Qualname"``, if those modules are imported already."""
    found: list[Any] = []
    for name in dict.fromkeys(class_names):
        module_name, _, qualname = name.rpartition(".")
        cls = getattr(sys.modules.get(module_name), qualname, None)  # never imports what a checkpoint names
        if isinstance(cls, type):
            found += [o for o in gc.get_referrers(cls) if type(o) is cls]
    return found


class ModelDiscovery:
    """Top-level modules called while the global forward hooks are on, with a slice of their first input."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self.top_modules: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()
        self.depth = 0  # nesting of module calls: 1 is a top-level call

    def reset(self) -> None:
        self.top_modules = weakref.WeakKeyDictionary()
        self.depth = 0

    def note(self, module: nn.Module, args: Any) -> None:
        """Record a top-level module call (at most a few modules, the first call of each)."""
        if module in self.top_modules or len(self.top_modules) >= _MAX_TOP_MODULES:
            return
        try:
            self.top_modules[module] = example_of(args)
        except Exception as exc:
            self.top_modules[module] = None
            self._report("capturing the input example", exc)

    def model_for(self, optimizer: Any) -> tuple[nn.Module | None, Any]:
        """The module an optimizer trains and its recorded input example; ``(None, None)`` when none ran."""
        ids = param_ids(optimizer)
        best, best_count, example = None, 0, None
        for module, recorded in list(self.top_modules.items()):
            count = sum(1 for p in module.parameters() if id(p) in ids)
            if count > best_count:
                best, best_count, example = module, count, recorded
        return (unwrap(best), example) if best is not None else (None, None)


def example_of(args: Any) -> Any:
    """A small CPU copy of the first positional input (a tensor, or a dict of tensors), else None."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, torch.Tensor):
        return first[:_EXAMPLE_ROWS].detach().to("cpu", copy=True) if first.dim() else None
    if isinstance(first, Mapping) and first and all(isinstance(v, torch.Tensor) and v.dim() for v in first.values()):
        return {str(k): v[:_EXAMPLE_ROWS].detach().to("cpu", copy=True) for k, v in first.items()}
    return None
