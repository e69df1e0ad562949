"""cairn: experiment tracking and model packaging with MLflow's API.

``import cairn`` loads no ML framework, no database driver and no pandas: flavor namespaces
(``cairn.pytorch``, ``cairn.sklearn``, ...) import their framework when first touched, and
``cairn.autolog()`` enables each integration only when the script imports its framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cairn import errors
from cairn.registry import register_model
from cairn.tracking import Client, MlflowClient
from cairn.tracking.entities import Experiment, Metric, Param, Run, RunStatus, RunTag, ViewType
from cairn.tracking.fluent import (
    ActiveRun,
    active_run,
    create_experiment,
    delete_experiment,
    delete_run,
    delete_tag,
    download_artifacts,
    end_run,
    flush,
    get_artifact_uri,
    get_experiment,
    get_experiment_by_name,
    get_run,
    get_tracking_uri,
    last_active_run,
    list_artifacts,
    log_artifact,
    log_artifacts,
    log_dict,
    log_figure,
    log_image,
    log_metric,
    log_metrics,
    log_param,
    log_params,
    log_text,
    search_experiments,
    search_runs,
    set_experiment,
    set_tag,
    set_tags,
    set_tracking_uri,
    start_run,
)

__version__ = "0.1.0"

if TYPE_CHECKING:  # a package is never callable to mypy; at run time the package's module class is
    from cairn.autolog import CallableAutologModule

    autolog: CallableAutologModule

# Namespaces imported on first attribute access; each loads its framework only then.
_LAZY_MODULES: dict[str, str] = {
    "artifacts": "cairn.artifacts",
    "autolog": "cairn.autolog",  # callable: cairn.autolog() enables every integration (see cairn.autolog.universal)
    "models": "cairn.models",
    "onnx": "cairn.onnx",
    "pyfunc": "cairn.pyfunc",
    "pytorch": "cairn.pytorch",
    "lightning": "cairn.lightning",
    "transformers": "cairn.transformers",
    "registry": "cairn.registry",
    "sklearn": "cairn.sklearn",
    "sync": "cairn.sync",
}


def __getattr__(name: str) -> Any:
    if name == "import_mlflow":
        from cairn.sync import import_mlflow

        return import_mlflow
    if name == "import_tensorboard":
        from cairn.sync import import_tensorboard

        return import_tensorboard
    target = _LAZY_MODULES.get(name)
    if target is None:
        raise AttributeError(f"module 'cairn' has no attribute {name!r}")
    module = importlib.import_module(target)
    globals()[name] = module
    return module


__all__ = [
    "ActiveRun",
    "Client",
    "Experiment",
    "Metric",
    "MlflowClient",
    "Param",
    "Run",
    "RunStatus",
    "RunTag",
    "ViewType",
    "active_run",
    "create_experiment",
    "delete_experiment",
    "delete_run",
    "delete_tag",
    "download_artifacts",
    "end_run",
    "errors",
    "flush",
    "get_artifact_uri",
    "get_experiment",
    "get_experiment_by_name",
    "get_run",
    "get_tracking_uri",
    "last_active_run",
    "list_artifacts",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_figure",
    "log_image",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_text",
    "register_model",
    "search_experiments",
    "search_runs",
    "set_experiment",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
]
