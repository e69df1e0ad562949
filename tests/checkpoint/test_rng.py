"""Global RNG state survives a trip through disk: the draws after restore equal the draws after capture."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cairn.checkpoint.rng import capture_rng_state, restore_rng_state
from cairn.checkpoint.state_tree import load_state_tree, save_state_tree
from cairn.errors import CheckpointCorrupt


def draws() -> tuple[object, ...]:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.standard_normal(),
        torch.rand(4).tolist(),
        torch.randperm(10).tolist(),
    )


def test_draws_after_restore_equal_draws_after_capture(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draws()  # move away from the seeded states, leaving a cached gaussian in numpy and python
    np.random.standard_normal()
    save_state_tree(capture_rng_state(), tmp_path, name="rng")
    expected = draws()
    # Scramble everything, as a fresh process would.
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draws() != expected
    restore_rng_state(load_state_tree(tmp_path, name="rng"))
    assert draws() == expected


def test_state_holds_only_json_and_tensors(tmp_path: Path) -> None:
    state = capture_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    assert ("cuda" in state) == torch.cuda.is_available()
    save_state_tree(state, tmp_path, name="rng")
    restored = load_state_tree(tmp_path, name="rng")
    assert type(restored["python"]) is tuple and type(restored["python"][1]) is tuple
    assert restored["numpy"][1].dtype == np.uint32


def test_malformed_state_is_corrupt() -> None:
    with pytest.raises(CheckpointCorrupt, match="RNG state lacks"):
        restore_rng_state({"python": random.getstate()})
    state = capture_rng_state()
    state["python"] = [3, [1, 2], None]  # lists where random.setstate needs tuples
    with pytest.raises(CheckpointCorrupt, match="cannot be restored"):
        restore_rng_state(state)
