"""Plain-PyTorch autolog: handing the options on to the Lightning integration (:mod:`cairn.autolog.pytorch`).

``autolog()`` calls :func:`_lightning_call`; when Lightning is installed but not imported yet, enabling
waits in :class:`_LightningImportHook` until the script imports it. :func:`_driven_elsewhere` is where the
plain-loop hooks ask whether another integration drives an optimizer's loop. Part of :mod:`cairn.autolog.pytorch`;
what lives there (``_report``, ``logger``) is reached through that module at call time.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

_LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning")


def _driven_elsewhere(optimizer: Any) -> bool:
    """Whether another integration drives this optimizer's loop, so the plain-loop hooks stand down.

    Asked once per optimizer (the plain hooks remember the answer), never per step: an optimizer
    claimed in :data:`cairn.autolog.base.loops` (a Transformers ``Trainer`` under ``CairnCallback``),
    or one stepped from inside a Lightning ``Trainer`` (found on the call stack).
    """
    from cairn.autolog import pytorch as core
    from cairn.autolog.base import loops

    return loops.driver_of(optimizer) is not None or core._driven_by_lightning()


def _lightning_call(name: str, *args: Any) -> None:
    """Forward to ``cairn.autolog.lightning`` when Lightning is installed (its failures are warnings).

    Importing Lightning takes seconds, so when it is not imported yet, ``enable`` is deferred until
    the script imports it (a post-import hook on ``lightning`` / ``pytorch_lightning``).
    """
    from cairn.autolog import pytorch as core

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
        core.logger.debug("cairn: Lightning autolog is not available: %s", exc)
        return
    try:
        getattr(module, name)(*args)
    except Exception as exc:
        core._report(f"{name} of the Lightning integration", exc)


class _LightningImportHook:
    """Enables the Lightning integration once Lightning is imported (an :class:`~cairn.autolog.base.ImportWatcher`).

    It watches ``lightning``, ``pytorch_lightning`` and ``cairn.autolog.lightning``; after any of them
    finishes executing, it enables the integration if Lightning is loaded and the integration module
    is complete (it may itself be the one importing Lightning), then removes itself.
    """

    _installed: _LightningImportHook | None = None
    WATCHED = (*_LIGHTNING_PACKAGES, "cairn.autolog.lightning")

    def __init__(self, config: Any) -> None:
        from cairn.autolog.base import ImportWatcher

        self.config = config
        self.watcher = ImportWatcher(self.WATCHED, self.maybe_enable)

    @classmethod
    def install(cls, config: Any) -> None:
        cls.uninstall()
        cls._installed = cls(config)
        cls._installed.watcher.install()

    @classmethod
    def uninstall(cls) -> None:
        hook, cls._installed = cls._installed, None
        if hook is not None:
            hook.watcher.uninstall()

    def maybe_enable(self) -> None:
        from cairn.autolog import pytorch as core

        if _LightningImportHook._installed is not self or not any(t in sys.modules for t in _LIGHTNING_PACKAGES):
            return
        integration = sys.modules.get("cairn.autolog.lightning")
        if integration is None:
            try:
                integration = importlib.import_module("cairn.autolog.lightning")  # may enable through this hook
            except ImportError as exc:
                core.logger.debug("cairn: Lightning autolog is not available: %s", exc)
                _LightningImportHook.uninstall()
                return
        if _LightningImportHook._installed is not self or not hasattr(integration, "enable"):
            return  # done already, or the integration module is still executing (it calls back when done)
        _LightningImportHook.uninstall()
        try:
            integration.enable(self.config)
        except Exception as exc:
            core._report("enable of the Lightning integration", exc)
