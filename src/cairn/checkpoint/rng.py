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

__all__ = ["capture_rng_state", "restore_rng_state"]


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


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every global generator back to ``state`` (from :func:`capture_rng_state`, possibly via disk).

    CUDA states are restored when CUDA is available; if the device count differs from the saving
    process, the common devices are restored and a warning names the difference.

    Raises:
        CheckpointCorrupt: ``state`` is not an RNG state tree.
    """
    try:
        python_state = state["python"]
        numpy_state = state["numpy"]
        torch_state = state["torch"]
    except (KeyError, TypeError) as exc:
        raise CheckpointCorrupt(f"RNG state lacks {exc}; expected python, numpy and torch states") from exc
    try:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state.to("cpu"))
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointCorrupt(f"RNG state cannot be restored: {exc}") from exc
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
