"""Params and metrics of the Transformers integration (see :mod:`cairn.autolog.transformers`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

_METRIC_KEY_BAD_CHARS = re.compile(r"[^\w\-. /:]")

logger = logging.getLogger("cairn.autolog")


# ----------------------------------------------------------------------------------------- params and metrics


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def training_params(args: Any, model: Any) -> dict[str, str]:
    """The model config and ``TrainingArguments`` as loggable params (arguments win on a shared key).

    Never raises on odd values: anything whose ``str`` fails is logged as its ``repr`` or type name.
    """
    from cairn.autolog.sklearn import loggable_params

    combined: dict[str, Any] = {}
    config = getattr(model, "config", None)
    if config is not None and callable(getattr(config, "to_dict", None)):
        try:
            combined.update(_flatten(config.to_dict()))
        except Exception as exc:
            logger.debug("model config to_dict failed: %s", exc)
    to_dict = getattr(args, "to_dict", None)
    combined.update(_flatten(to_dict() if callable(to_dict) else dict(vars(args))))
    return loggable_params(combined)


def _metric_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    numel = getattr(value, "numel", None)
    if callable(numel) and numel() == 1:
        return float(value.item())
    size = getattr(value, "size", None)
    if type(value).__module__.split(".", 1)[0] == "numpy" and size == 1:
        return float(value)
    return None


_metric_keys: dict[str, str] = {}


def _metric_key(key: Any) -> str:
    cached = _metric_keys.get(key) if isinstance(key, str) else None
    if cached is not None:
        return cached
    text = _METRIC_KEY_BAD_CHARS.sub("_", str(key)).strip("/") or "_"
    if isinstance(key, str) and len(_metric_keys) < 10_000:
        _metric_keys[key] = text
    return text
