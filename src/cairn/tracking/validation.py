"""Rules for keys and values, checked before anything reaches a store.

Key checks are cached: a training loop logs the same few keys millions of times, so after the
first call a key costs one set lookup.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from cairn.errors import InvalidArgument

MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_RUN_NAME_LENGTH = 250

_KEY_PATTERN = re.compile(r"^[\w\-. /:]+$")
_valid_keys: set[str] = set()


def validate_key(key: object, kind: str = "metric") -> str:
    """Return ``key`` if it is a usable name, else raise InvalidArgument naming the problem."""
    if key in _valid_keys:
        return str(key)
    if not isinstance(key, str):
        raise InvalidArgument(f"{kind} key must be a string, got {type(key).__name__}: {key!r}")
    if not key or not key.strip():
        raise InvalidArgument(f"{kind} key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"{kind} key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}: {key[:40]!r}..."
        )
    if not _KEY_PATTERN.match(key):
        raise InvalidArgument(
            f"{kind} key {key!r} has characters outside letters, digits, '_', '-', '.', ' ', ':' and '/'"
        )
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidArgument(f"{kind} key {key!r} looks like a path: no leading '/', empty, '.' or '..' parts")
    if len(_valid_keys) < 100_000:
        _valid_keys.add(key)
    return key


def metric_value(value: Any, key: str = "") -> float:
    """Convert a number-like value (int, float, numpy/torch scalar) to float; NaN/inf pass."""
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    if isinstance(value, (str, bytes)):
        raise InvalidArgument(f"metric {key!r} got {type(value).__name__} value {value!r}; a number is required")
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        result = float(value)  # numpy/torch scalars, 1-element arrays and tensors
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"metric {key!r} got {type(value).__name__} value {value!r}; a number is required"
        ) from exc
    return result


def metric_step(step: Any, key: str = "") -> int:
    if type(step) is int:
        return step
    if step is None:
        return 0
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        if isinstance(step, float) and step.is_integer():
            return int(step)
        raise InvalidArgument(f"metric {key!r} got step {step!r}; the step must be an integer")
    return int(step)


def stringify(value: Any, *, kind: str, key: str, limit: int) -> str:
    """Render a param/tag value as a string; over ``limit`` characters raises InvalidArgument."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    else:
        try:
            text = str(value)
        except Exception as exc:
            raise InvalidArgument(
                f"{kind} {key!r}: value of type {type(value).__name__} cannot be turned into text"
            ) from exc
    if len(text) > limit:
        raise InvalidArgument(f"{kind} {key!r} value is {len(text)} characters long; the limit is {limit}")
    return text


def param_value(value: Any, key: str) -> str:
    return stringify(value, kind="param", key=key, limit=MAX_PARAM_VALUE_LENGTH)


def tag_value(value: Any, key: str) -> str:
    return stringify(value, kind="tag", key=key, limit=MAX_TAG_VALUE_LENGTH)
