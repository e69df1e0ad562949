"""Tracking: runs, experiments, the Client and the fluent API."""

from cairn.tracking.client import Client
from cairn.tracking.entities import (
    Experiment,
    FileInfo,
    LifecycleStage,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)

MlflowClient = Client  # `import cairn as mlflow; mlflow.tracking.MlflowClient()` keeps working

__all__ = [
    "Client",
    "Experiment",
    "FileInfo",
    "LifecycleStage",
    "Metric",
    "MlflowClient",
    "Param",
    "Run",
    "RunData",
    "RunInfo",
    "RunStatus",
    "RunTag",
    "ViewType",
]
