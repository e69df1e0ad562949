"""What the integrations share without importing a framework: who drives a loop, and enabling on import.

- :data:`loops` (a :class:`LoopDrivers`): the one arbitration point between integrations. The
  plain-PyTorch hooks see every optimizer step of the process; an integration that drives a training
  loop itself (the Transformers ``CairnCallback`` from ``on_train_begin`` to ``on_train_end``, the
  Lightning ``CairnCheckpointCallback`` from ``on_train_start`` to the end of ``fit``) claims that
  loop's optimizers, and the plain hooks leave a claimed optimizer alone. They ask once per optimizer
  (when it first steps), never per step. (Lightning fits are also recognised by the plain hooks from
  the call stack, with or without cairn's Lightning integration.)
- :class:`ImportWatcher`: a ``sys.meta_path`` finder that calls back once a watched module has
  executed (its loader's ``exec_module`` is wrapped), so ``cairn.autolog()`` enables an integration
  when the script imports its framework instead of importing it itself. It removes itself when told.
"""

from __future__ import annotations

import importlib.util
import sys
import weakref
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ImportWatcher", "LoopDrivers", "imported", "loops"]


class LoopDrivers:
    """Which integration drives the training loop of which optimizer (held weakly)."""

    def __init__(self) -> None:
        self._drivers: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def claim(self, integration: str, optimizers: Iterable[Any]) -> None:
        """Mark optimizers as stepped by ``integration``'s loop (a wrapper's inner ``.optimizer`` too)."""
        for optimizer in _with_inner(optimizers):
            try:
                self._drivers[optimizer] = integration
            except TypeError:  # not weakly referenceable
                pass

    def release(self, optimizers: Iterable[Any]) -> None:
        """Hand the optimizers back (the loop ended)."""
        for optimizer in _with_inner(optimizers):
            try:
                self._drivers.pop(optimizer, None)
            except TypeError:
                pass

    def driver_of(self, optimizer: Any) -> str | None:
        """The integration driving this optimizer's loop right now, or None."""
        try:
            return self._drivers.get(optimizer)
        except TypeError:
            return None


def _with_inner(optimizers: Iterable[Any]) -> list[Any]:
    """The optimizers and the torch optimizers they wrap (accelerate's ``AcceleratedOptimizer.optimizer``)."""
    found: list[Any] = []
    for optimizer in optimizers:
        while optimizer is not None and not any(optimizer is o for o in found):
            found.append(optimizer)
            optimizer = getattr(optimizer, "optimizer", None)
    return found


loops = LoopDrivers()


def imported(name: str) -> bool:
    """Whether module ``name`` is imported and finished executing (not half-way through its import)."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return not getattr(getattr(module, "__spec__", None), "_initializing", False)


class ImportWatcher:
    """A ``sys.meta_path`` finder calling ``on_import()`` after any of ``names`` finishes executing.

    Only fresh imports of the watched names go through it (one ``find_spec`` delegation each); every
    other import costs one set lookup. ``install``/``uninstall`` are idempotent.
    """

    def __init__(self, names: Iterable[str], on_import: Callable[[], None]) -> None:
        self.names = frozenset(names)
        self.on_import = on_import
        self._busy = False

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.names or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)  # the import's own errors propagate; nothing is called then
            spec._initializing = False  # type: ignore[attr-defined]  # done executing (importlib resets it too)
            self.on_import()

        loader.exec_module = exec_module
        return spec
