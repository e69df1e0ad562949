"""Moving runs between stores: ``cairn.sync(...)`` (cairn to cairn), ``cairn.import_mlflow(...)`` and
``cairn.import_tensorboard(...)``.

>>> report = cairn.sync("./cairn-runs", "postgresql://team-db/cairn", destination_artifact_root="s3://b/runs")
>>> report.total          # 0 when the destination was already up to date
>>> report = cairn.import_mlflow("./mlruns")
>>> report = cairn.import_tensorboard("./tb_logs", experiment="baseline")

This module is callable (``cairn.sync(...)`` calls :func:`sync`), because ``cairn.sync`` is both this
package and the function users call. Nothing here imports mlflow; :func:`import_mlflow` does, on
first use.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from cairn.sync.api import sync
from cairn.sync.report import ImportReport, Note, SyncReport

if TYPE_CHECKING:
    from cairn.sync.mlflow_import import import_mlflow
    from cairn.sync.tensorboard_import import import_tensorboard

__all__ = ["ImportReport", "Note", "SyncReport", "import_mlflow", "import_tensorboard", "sync"]


def __getattr__(name: str) -> Any:
    if name == "import_mlflow":
        from cairn.sync.mlflow_import import import_mlflow

        return import_mlflow
    if name == "import_tensorboard":
        from cairn.sync.tensorboard_import import import_tensorboard

        return import_tensorboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """``cairn.sync`` the module, callable as ``cairn.sync(...)`` the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> SyncReport:
        return sync(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
