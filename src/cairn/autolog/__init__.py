"""Autologging: one call (``cairn.sklearn.autolog()``, ``cairn.pytorch.autolog()``, ...) makes training
code log params, metrics and models with no other change.

Each framework has its own module here (``autolog/sklearn.py``, ...), imported only when its
namespace is used; the machinery they share (options, failure isolation, re-entry guard, patching,
run handling) lives in :mod:`cairn.autolog.config`. Importing this package imports no framework.

The package is also callable: ``cairn.autolog()`` is :func:`cairn.autolog.universal.autolog` (every
integration, each enabled when its framework is imported), like ``mlflow.autolog()``. Type checkers see
``cairn.autolog`` as a :class:`CallableAutologModule` (declared in ``cairn/__init__.py`` for them only).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any, Protocol

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
    "CallableAutologModule",
    "PatchSet",
    "ReentryGuard",
    "autolog",
    "autolog_run",
    "safe_autolog",
]


class CallableAutologModule(Protocol):
    """What ``cairn.autolog`` is to a type checker: callable as ``cairn.autolog(...)``, and a package.

    mypy types a package as a module, which is never callable ("Module not callable"); ``cairn/__init__.py``
    declares ``autolog: CallableAutologModule`` under ``TYPE_CHECKING`` instead.
    """

    AutologConfig: type[AutologConfig]
    AutologWarning: type[AutologWarning]

    def __call__(
        self,
        *,
        log_models: bool = True,
        disable: bool = False,
        silent: bool = False,
        extra_tags: Mapping[str, Any] | None = None,
    ) -> None: ...

    def __getattr__(self, name: str) -> Any: ...  # the package's other names and submodules


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
