"""Rules for keys and values, checked before anything reaches a store.

Every entry point (fluent API, ``Client``, the stores) refuses here, at the call, what a database
cannot store, with an :class:`InvalidArgument` naming the key: text with a NUL character or a lone
surrogate (PostgreSQL refuses the first, UTF-8 the second), steps and timestamps outside a signed
64-bit integer, metric values that are not real numbers. SQLite and PostgreSQL then behave alike.

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
MAX_EXPERIMENT_NAME_LENGTH = 256
MIN_INT64 = -(2**63)
MAX_INT64 = 2**63 - 1

#: Characters no backend stores: NUL (PostgreSQL text) and lone surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
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
    storable_text(key, f"{kind} key {key!r}")
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
    if kind is not int and (
        isinstance(value, (str, bytes)) or (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real))
    ):
        raise InvalidArgument(
            f"metric {key!r} got {type(value).__name__} value {_short(value)}; a real number is required"
        )
    try:
        return float(value)  # int, numpy/torch scalars, 1-element arrays and tensors
    except OverflowError as exc:
        raise InvalidArgument(
            f"metric {key!r} got value {_short(value)}, too large for a 64-bit float (about ±1.8e308)"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"metric {key!r} got {type(value).__name__} value {_short(value)}; a real number is required"
        ) from exc


def metric_step(step: Any, key: str = "") -> int:
    """The step as an int (``None`` is 0); InvalidArgument unless it is an integer fitting 64 bits."""
    if type(step) is int and step.bit_length() < 64:  # fits int64 (-2**63 itself takes the slow path)
        return step
    if step is None:
        return 0
    return _int64(step, key, "step")


def metric_timestamp(timestamp: Any, key: str = "") -> int:
    """The timestamp (milliseconds) as an int; InvalidArgument unless it is an integer fitting 64 bits."""
    if type(timestamp) is int and timestamp.bit_length() < 64:
        return timestamp
    return _int64(timestamp, key, "timestamp")


def _int64(number: Any, key: str, what: str) -> int:
    if isinstance(number, bool) or not isinstance(number, (numbers.Integral, float)):
        raise InvalidArgument(f"metric {key!r} got {what} {_short(number)}; the {what} must be an integer")
    if isinstance(number, float) and not number.is_integer():
        raise InvalidArgument(f"metric {key!r} got {what} {number!r}; the {what} must be an integer")
    result = int(number)
    if not MIN_INT64 <= result <= MAX_INT64:
        raise InvalidArgument(
            f"metric {key!r} got {what} {_short(result)}, out of range: the {what} must fit a signed 64-bit "
            f"integer ({MIN_INT64} to {MAX_INT64})"
        )
    return result


def _short(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a huge int has no repr past 4,300 digits)."""
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__} too large to print>"
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"


def point_problem(run_id: object, key: object, value: object, timestamp: object, step: object) -> str | None:
    """Why a metric point already built cannot be stored, or None (the writer's check of a failed batch)."""
    if not isinstance(run_id, str) or not isinstance(key, str):
        return "run id and key must be strings"
    if _UNSTORABLE.search(key):
        return "the key has a NUL character or a lone surrogate"
    if not isinstance(value, float):
        return f"value {_short(value)} is not a float"
    for what, number in (("step", step), ("timestamp", timestamp)):
        if isinstance(number, bool) or not isinstance(number, int) or not MIN_INT64 <= number <= MAX_INT64:
            return f"{what} {_short(number)} is not an integer fitting a signed 64-bit integer"
    return None


def is_storable_text(text: object) -> bool:
    """Whether ``text`` is a string every backend can store and look up."""
    return isinstance(text, str) and _UNSTORABLE.search(text) is None


def storable_text(text: str, what: str) -> str:
    """Return ``text`` unless it holds a character no database stores (NUL, a lone surrogate)."""
    found = _UNSTORABLE.search(text)
    if found is not None:
        char = found.group()
        name = "a NUL character ('\\x00')" if char == "\x00" else f"a lone surrogate ({char!r}), not valid Unicode"
        raise InvalidArgument(f"{what} has {name} at position {found.start()}; databases cannot store it")
    return text


def run_name(name: object) -> str:
    """Return ``name`` if it can name a run: a string of at most ``MAX_RUN_NAME_LENGTH`` storable characters."""
    if not isinstance(name, str):
        raise InvalidArgument(f"run name must be a string, got {type(name).__name__}: {name!r}")
    if len(name) > MAX_RUN_NAME_LENGTH:
        raise InvalidArgument(f"run name is {len(name)} characters long; the limit is {MAX_RUN_NAME_LENGTH}")
    return storable_text(name, f"run name {name!r}")


def experiment_name(name: object) -> str:
    """Return ``name`` if it can name an experiment: non-empty, at most 256 storable characters."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument(f"experiment name must be a non-empty string, got {name!r}")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise InvalidArgument(
            f"experiment name is {len(name)} characters long; the limit is {MAX_EXPERIMENT_NAME_LENGTH}"
        )
    return storable_text(name, f"experiment name {name!r}")


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
    return storable_text(text, f"{kind} {key!r} value")


def param_value(value: Any, key: str) -> str:
    return stringify(value, kind="param", key=key, limit=MAX_PARAM_VALUE_LENGTH)


def tag_value(value: Any, key: str) -> str:
    return stringify(value, kind="tag", key=key, limit=MAX_TAG_VALUE_LENGTH)
