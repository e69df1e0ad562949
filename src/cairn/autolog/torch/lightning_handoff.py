"""Plain-PyTorch autolog and Lightning: handing the options on, and standing down inside a Lightning fit.

``cairn.pytorch.autolog()`` also turns on the Lightning integration with the same options. Importing
Lightning takes seconds, so when it is installed but not imported yet, enabling waits (an
:class:`~cairn.autolog.base.ImportWatcher`) until the script imports it. :func:`driven_elsewhere` is where
the plain-loop hooks ask whether another integration drives an optimizer's loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

from cairn.autolog.base import ImportWatcher, loops
from cairn.autolog.torch.config import Report

__all__ = ["LightningHandoff", "driven_elsewhere"]

_LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning")
_LIGHTNING_MODULES = ("lightning.pytorch.", "pytorch_lightning.")
_INTEGRATION_MODULE = "cairn.autolog.lightning"
logger = logging.getLogger("cairn.autolog")


def driven_elsewhere(optimizer: Any) -> bool:
    """Whether another integration drives this optimizer's loop, so the plain-loop hooks stand down.

    Asked once per optimizer (the plain hooks remember the answer), never per step: an optimizer
    claimed in :data:`cairn.autolog.base.loops` (a Transformers ``Trainer`` under ``CairnCallback``, a
    Lightning fit under ``CairnCheckpointCallback``), or one stepped from inside a Lightning ``Trainer``
    (found on the call stack).
    """
    return loops.driver_of(optimizer) is not None or _driven_by_lightning()


def _driven_by_lightning() -> bool:
    if not any(top in sys.modules for top in _LIGHTNING_PACKAGES):
        return False
    frame: Any = sys._getframe(2)
    depth = 0
    while frame is not None and depth < 80:
        if frame.f_globals.get("__name__", "").startswith(_LIGHTNING_MODULES):
            return True
        frame = frame.f_back
        depth += 1
    return False


def _lightning_loaded() -> bool:
    return any(top in sys.modules for top in _LIGHTNING_PACKAGES)


class LightningHandoff:
    """Enables/disables ``cairn.autolog.lightning`` for one plain-PyTorch integration (failures reported)."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self._watcher: ImportWatcher | None = None
        self._config: Any = None

    def enable(self, config: Any) -> None:
        """Enable the Lightning integration now if Lightning is imported, else when it is."""
        self._stop_watching()
        if _lightning_loaded():
            self._call("enable", config)
        elif any(importlib.util.find_spec(top) is not None for top in _LIGHTNING_PACKAGES):
            self._config = config
            self._watcher = ImportWatcher((*_LIGHTNING_PACKAGES, _INTEGRATION_MODULE), self._maybe_enable)
            self._watcher.install()

    def disable(self) -> None:
        self._stop_watching()
        if _lightning_loaded():  # never imported: never enabled
            self._call("disable")

    def _stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.uninstall()

    def _call(self, name: str, *args: Any) -> None:
        try:
            module = importlib.import_module(_INTEGRATION_MODULE)
        except ImportError as exc:
            logger.debug("cairn: Lightning autolog is not available: %s", exc)
            return
        try:
            getattr(module, name)(*args)
        except Exception as exc:
            self.report(f"{name} of the Lightning integration", exc)

    def _maybe_enable(self) -> None:
        """After a watched module executed: enable once Lightning is loaded and the integration module is
        complete (it may itself be the one importing Lightning), then stop watching."""
        watcher = self._watcher
        if watcher is None or not _lightning_loaded():
            return
        integration = sys.modules.get(_INTEGRATION_MODULE)
        if integration is None:
            try:
                integration = importlib.import_module(_INTEGRATION_MODULE)  # may enable through this watcher
            except ImportError as exc:
                logger.debug("cairn: Lightning autolog is not available: %s", exc)
                self._stop_watching()
                return
        if self._watcher is not watcher or not hasattr(integration, "enable"):
            return  # done already, or the integration module is still executing (it calls back when done)
        self._stop_watching()
        try:
            integration.enable(self._config)
        except Exception as exc:
            self.report("enable of the Lightning integration", exc)
