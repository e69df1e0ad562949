"""Autologging: one call (``cairn.sklearn.autolog()``, ``cairn.pytorch.autolog()``, ...) makes training
code log params, metrics and models with no other change.

Each framework has its own module here (``autolog/sklearn.py``, ...), imported only when its
namespace is used; the machinery they share (options, failure isolation, re-entry guard, patching,
run handling) lives in :mod:`cairn.autolog.config`. Importing this package imports no framework.
"""

from __future__ import annotations

from cairn.autolog.config import (
    AutologConfig,
    AutologRun,
    AutologWarning,
    PatchSet,
    ReentryGuard,
    autolog_run,
    safe_autolog,
)

__all__ = [
    "AutologConfig",
    "AutologRun",
    "AutologWarning",
    "PatchSet",
    "ReentryGuard",
    "autolog_run",
    "safe_autolog",
]
