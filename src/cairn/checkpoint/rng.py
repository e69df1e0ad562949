"""Capture and restore the global random number generators as a state tree (JSON + tensors, no pickle).

Covered: Python's ``random`` module, numpy's legacy global generator (``np.random.seed``/``np.random.rand``),
torch's CPU generator and, when CUDA is available, every CUDA device's generator. Generators that are
objects of their own (``np.random.default_rng()``, ``torch.Generator()``) are not global state; keep them
in the checkpoint's ``extra`` (``torch.Generator.get_state()`` is a tensor, ``bit_generator.state`` a dict).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

from cairn.errors import CheckpointCorrupt

__all__ = ["capture_rng_state", "check_rng_state", "restore_rng_state"]

_KEYS = frozenset({"python", "numpy", "torch", "cuda"})
_PYTHON_VERSION = 3  # what random.getstate() returns first; setstate refuses anything else
_MT_WORDS = 624  # words of the Mersenne Twister state (Python keeps one more: its position)
_WORD_LIMIT = 2**32


def capture_rng_state() -> dict[str, Any]:
    """The current state of every global generator, as a tree :func:`~cairn.checkpoint.state_tree.save_state_tree`
    stores exactly (``random``'s state is a tuple of ints, numpy's holds a ``uint32`` array)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=True),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_rng_state(state: Any, source: str = "") -> None:
    """Check that ``state`` has the exact shape :func:`capture_rng_state` produces, changing nothing.

    Raises:
        CheckpointCorrupt: it does not; the message starts with ``source`` (the file it was read from).
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(state, dict):
        raise CheckpointCorrupt(f"{prefix}RNG state is a {type(state).__name__}, not a dict of generator states")
    missing, unknown = {"python", "numpy", "torch"} - set(state), set(state) - _KEYS
    if missing or unknown:
        raise CheckpointCorrupt(
            f"{prefix}RNG state lacks {sorted(missing)} or has unknown entries {sorted(map(repr, unknown))[:5]}; "
            "expected python, numpy and torch states (and cuda)"
        )
    problem = _python_problem(state["python"]) or _numpy_problem(state["numpy"]) or _torch_problem(state)
    if problem is not None:
        raise CheckpointCorrupt(f"{prefix}RNG state cannot be restored: {problem}")


def _python_problem(state: Any) -> str | None:
    if not (isinstance(state, tuple) and len(state) == 3 and state[0] == _PYTHON_VERSION and type(state[0]) is int):
        return f"python state must be ({_PYTHON_VERSION}, <{_MT_WORDS + 1} words>, gauss)"
    words, gauss = state[1], state[2]
    if not (isinstance(words, tuple) and len(words) == _MT_WORDS + 1 and all(_is_word(w) for w in words)):
        return f"python state must hold {_MT_WORDS + 1} integers in [0, 2**32)"
    if gauss is not None and type(gauss) is not float:
        return "python state's gauss must be a float or None"
    return None


def _numpy_problem(state: Any) -> str | None:
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == "MT19937"):
        return "numpy state must be ('MT19937', keys, pos, has_gauss, cached_gaussian)"
    _, keys, pos, has_gauss, cached = state
    if not (isinstance(keys, np.ndarray) and keys.dtype == np.uint32 and keys.shape == (_MT_WORDS,)):
        return f"numpy state keys must be a uint32 array of {_MT_WORDS}"
    if not (_is_int(pos) and 0 <= pos <= _MT_WORDS and _is_int(has_gauss) and has_gauss in (0, 1)):
        return f"numpy state pos must be in [0, {_MT_WORDS}] and has_gauss 0 or 1"
    if type(cached) is not float:
        return "numpy state cached_gaussian must be a float"
    return None


def _torch_problem(state: dict[str, Any]) -> str | None:
    expected = torch.get_rng_state().numel()
    if not _is_byte_vector(state["torch"]) or state["torch"].numel() != expected:
        return f"torch state must be a uint8 tensor of {expected} bytes"
    cuda = state.get("cuda")
    if cuda is not None and not (isinstance(cuda, list | tuple) and all(_is_byte_vector(s) for s in cuda)):
        return "cuda states must be a list of uint8 tensors"
    return None


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_word(value: Any) -> bool:
    return type(value) is int and 0 <= value < _WORD_LIMIT


def _is_byte_vector(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def restore_rng_state(state: dict[str, Any], *, source: str = "") -> None:
    """Put every global generator back to ``state`` (from :func:`capture_rng_state`, possibly via disk).

    ``state`` is checked first (see :func:`check_rng_state`), so a bad one changes no generator.
    CUDA states are restored when CUDA is available; if the device count differs from the saving
    process, the common devices are restored and a warning names the difference.

    Raises:
        CheckpointCorrupt: ``state`` is not an RNG state tree; the message starts with ``source``.
    """
    check_rng_state(state, source)
    try:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"].to("cpu"))
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # what the checks cannot foresee
        prefix = f"{source}: " if source else ""
        raise CheckpointCorrupt(f"{prefix}RNG state cannot be restored: {exc}") from exc
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count != len(cuda_states):
            warnings.warn(
                f"checkpoint holds RNG state for {len(cuda_states)} CUDA devices but {count} are visible; "
                f"restoring the first {min(count, len(cuda_states))}",
                stacklevel=2,
            )
        for device, device_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(device_state.to("cpu"), device)
