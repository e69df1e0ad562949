"""Autologging: one call (``cairn.sklearn.autolog()``, ``cairn.pytorch.autolog()``, ...) makes training
code log params, metrics and models with no other change.

Each framework has its own module here (``autolog/sklearn.py``, ...), imported only when its
namespace is used; the machinery they share (options, failure isolation, re-entry guard, patching,
run handling) lives in :mod:`cairn.autolog.config`. Importing this package imports no framework.

The package is also callable: ``cairn.autolog()`` is :func:`cairn.autolog.universal.autolog` (every
integration, each enabled when its framework is imported), like ``mlflow.autolog()``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

from cairn.autolog.config import (
    AutologConfig,
    AutologRun,
    AutologWarning,
    PatchSet,
    ReentryGuard,
    autolog_run,
    safe_autolog,
)
from cairn.autolog.universal import autolog

__all__ = [
    "AutologConfig",
    "AutologRun",
    "AutologWarning",
    "PatchSet",
    "ReentryGuard",
    "autolog",
    "autolog_run",
    "safe_autolog",
]


class _CallableModule(types.ModuleType):
    """``cairn.autolog`` stays the package (``cairn.autolog.AutologWarning``) and is also ``autolog()``."""

    def __call__(
        self,
        *,
        log_models: bool = True,
        disable: bool = False,
        silent: bool = False,
        extra_tags: Mapping[str, Any] | None = None,
    ) -> None:
        autolog(log_models=log_models, disable=disable, silent=silent, extra_tags=extra_tags)


sys.modules[__name__].__class__ = _CallableModule
