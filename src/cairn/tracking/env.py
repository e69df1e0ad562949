"""Settings cairn reads from the environment under its own name and under MLflow's.

A script written for MLflow sets ``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID``, ``MLFLOW_EXPERIMENT_ID`` or
``MLFLOW_EXPERIMENT_NAME``; cairn reads each of them when its own ``CAIRN_`` name is unset (or empty), and
the ``CAIRN_`` name wins when both are set. The experiment is one setting of two names: any
``CAIRN_EXPERIMENT_*`` wins over every ``MLFLOW_EXPERIMENT_*``, and within one family the id wins over the
name. A tracking URI set in code (``cairn.set_tracking_uri``) wins over both.

The HTTP credentials (``CAIRN_TRACKING_TOKEN`` / ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``, TLS settings) are read by :mod:`cairn.store.rest.http`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["EXPERIMENT_ID", "EXPERIMENT_NAME", "RUN_ID", "TRACKING_URI", "Setting", "experiment", "get", "lookup"]

TRACKING_URI = "TRACKING_URI"
RUN_ID = "RUN_ID"
EXPERIMENT_ID = "EXPERIMENT_ID"
EXPERIMENT_NAME = "EXPERIMENT_NAME"

_PREFIXES = ("CAIRN_", "MLFLOW_")


@dataclass(frozen=True)
class Setting:
    """A value found in the environment and the variable that held it (for error messages)."""

    name: str
    value: str


def lookup(setting: str) -> Setting | None:
    """``CAIRN_<setting>`` if set and not empty, else ``MLFLOW_<setting>``, else None (values stripped)."""
    for prefix in _PREFIXES:
        found = _read(prefix + setting)
        if found is not None:
            return found
    return None


def get(setting: str) -> str | None:
    """The value of :func:`lookup`."""
    found = lookup(setting)
    return found.value if found is not None else None


def experiment() -> Setting | None:
    """The experiment named by the environment: ``CAIRN_EXPERIMENT_ID``, ``CAIRN_EXPERIMENT_NAME``,
    ``MLFLOW_EXPERIMENT_ID``, ``MLFLOW_EXPERIMENT_NAME``, the first set (``Setting.name`` says which kind)."""
    for prefix in _PREFIXES:
        for setting in (EXPERIMENT_ID, EXPERIMENT_NAME):
            found = _read(prefix + setting)
            if found is not None:
                return found
    return None


def _read(name: str) -> Setting | None:
    value = os.environ.get(name, "").strip()
    return Setting(name, value) if value else None
