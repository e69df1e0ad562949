"""The Lightning integration's shared names, the Lightning packages importable here, and RNG states in
checkpoints (see :mod:`cairn.autolog.lightning`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from cairn.errors import CheckpointCorrupt

INTEGRATION = "lightning"
#: Run artifact directory holding the uploaded ``.ckpt`` files and their index.
CHECKPOINTS_DIR = "lightning_checkpoints"
#: The index of uploaded checkpoints (JSON), written after every upload and deletion.
INDEX_FILE = "index.json"
INDEX_FORMAT = "cairn.lightning_checkpoints"
RNG_KEY = "cairn_rng"
RUN_ID_KEY = "cairn_run_id"
LOG_STEP_KEY = "cairn_log_step"
LOADERS_KEY = "cairn_loaders"
_PARAM_BATCH = 100
_FRAMEWORK_PACKAGES = ("lightning.pytorch", "pytorch_lightning")

logger = logging.getLogger("cairn.autolog")


# ------------------------------------------------------------------------------------------------ frameworks


@dataclass(frozen=True)
class _Framework:
    """The classes of one Lightning package (``lightning.pytorch`` or ``pytorch_lightning``)."""

    package: str
    trainer: type
    logger: type
    callback: type
    model_checkpoint: type
    module: type


def _load_framework(package: str) -> _Framework | None:
    import importlib

    try:
        root = importlib.import_module(package)
        loggers: ModuleType = importlib.import_module(f"{package}.loggers.logger")
        callbacks: ModuleType = importlib.import_module(f"{package}.callbacks")
    except ImportError:
        return None
    return _Framework(
        package, root.Trainer, loggers.Logger, callbacks.Callback, callbacks.ModelCheckpoint, root.LightningModule
    )


_framework_cache: dict[str, _Framework | None] = {}


def frameworks() -> list[_Framework]:
    """The Lightning packages that can be imported here (``lightning.pytorch`` first)."""
    found = []
    for package in _FRAMEWORK_PACKAGES:
        if package not in _framework_cache:
            _framework_cache[package] = _load_framework(package)
        framework = _framework_cache[package]
        if framework is not None:
            found.append(framework)
    return found


def _framework_of(obj: Any) -> _Framework:
    for framework in frameworks():
        if isinstance(obj, framework.trainer | framework.module | framework.callback | framework.logger):
            return framework
    return frameworks()[0]


# ------------------------------------------------------------------------------------------------ RNG, safely


def _rng_to_checkpoint(state: Mapping[str, Any]) -> dict[str, Any]:
    """An RNG tree from :func:`~cairn.checkpoint.rng.capture_rng_state` in types ``torch.load(weights_only=True)``
    accepts: numpy's key array becomes an int64 tensor, everything else already is tensors, ints, tuples."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    out: dict[str, Any] = {
        "python": state["python"],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": state["torch"],
    }
    if "cuda" in state:
        out["cuda"] = list(state["cuda"])
    return out


def _rng_from_checkpoint(saved: Any) -> dict[str, Any]:
    import numpy as np

    try:
        numpy_state = saved["numpy"]
        python_state = saved["python"]
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        state: dict[str, Any] = {
            "python": (python_state[0], tuple(python_state[1]), python_state[2]),
            "numpy": (
                numpy_state["name"],
                keys,
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            ),
            "torch": saved["torch"],
        }
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointCorrupt(f"checkpoint entry {RNG_KEY!r} is not an RNG state written by cairn: {exc}") from exc
    if saved.get("cuda"):
        state["cuda"] = saved["cuda"]
    return state
