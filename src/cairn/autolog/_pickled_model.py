"""Autolog's notice when the model it logged loads only with the pickle opt-in (the torch and Lightning integrations).

The PyTorch flavor stores a module's architecture without pickle when it can (its importable class, or a
``torch.export`` program traced from the input example) and otherwise as a cloudpickled skeleton, with a
warning addressed to a ``log_model`` caller ("pass module_class=..."). Autolog's user never called
``log_model``: :func:`log_announcing_pickle` replaces that warning with one that says which run's model it is,
how to load it and what to change in the training script so that the next one loads by default.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cairn.models.model import ModelInfo

__all__ = ["log_announcing_pickle"]

logger = logging.getLogger("cairn.autolog")

# The flavor's warning (cairn.flavors.pytorch._choose_architecture); its parenthesis carries the reason.
_FLAVOR_WARNING = re.compile(
    r"storing the architecture of .+? as a cloudpickled skeleton \((?P<reason>.*)\); loading it", re.DOTALL
)


def log_announcing_pickle(
    log: Callable[[], ModelInfo | None],
    *,
    integration: str,
    model: Any,
    advice: str,
    silent: bool = False,
) -> ModelInfo | None:
    """Run ``log`` (which logs ``model`` and returns its :class:`ModelInfo`, or ``None`` if it did not) and,
    when the logged architecture is a pickled skeleton, warn once (a log record when ``silent``) instead of
    the flavor: the model's URI, ``allow_pickle=True`` / ``CAIRN_ALLOW_PICKLE=1`` to load it, and ``advice``
    (how to avoid pickle). Every other warning raised meanwhile is passed on unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = log()
    reason = None
    for w in caught:
        match = _FLAVOR_WARNING.match(str(w.message))
        if match is not None:
            reason = match.group("reason")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if info is None or info.flavors.get("pytorch", {}).get("architecture") != "skeleton":
        return info
    name = type(model).__qualname__
    message = (
        f"cairn {integration} autolog: the trained model {name} was logged with its architecture pickled "
        f"({reason or 'no pickle-free way to store it'}); loading it ({info.model_uri}) needs allow_pickle=True "
        f"or CAIRN_ALLOW_PICKLE=1, and class {name} importable where it is loaded. To log it without pickle: "
        f"{advice}"
    )
    if silent:
        logger.warning(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=2)
    return info
