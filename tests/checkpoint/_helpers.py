"""Shared bits of the checkpoint tests: exact (bitwise, type-for-type) tree comparison and a tiny model."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn


def assert_tree_identical(a: Any, b: Any, path: str = "<root>") -> None:
    """Same Python types all the way down, tensors with equal dtype, shape and bytes (NaN-safe)."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{path}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        )
        assert a.requires_grad == b.requires_grad, f"{path}: requires_grad differs"
        assert _bytes(a) == _bytes(b), f"{path}: tensor bytes differ"
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), f"{path}: {a.dtype} != {b.dtype}"
        assert a.tobytes() == b.tobytes(), f"{path}: array bytes differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        assert [type(k) for k in a] == [type(k) for k in b], f"{path}: key types differ"
        if isinstance(a, OrderedDict):
            assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), f"{path}: _metadata differs"
        for key in a:
            assert_tree_identical(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_identical(x, y, f"{path}.{i}")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy()) if flat.numel() else b""


class TinyNet(nn.Module):
    """A small MLP with dropout (so the RNG matters) and a batch norm (so buffers matter)."""

    def __init__(self, width: int = 8, out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, width)
        self.bn = nn.BatchNorm1d(width)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(width, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def batches(n: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(6, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int, scheduler: Any = None) -> None:
    for x, y in batches(n):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(_bytes(sa[k]) == _bytes(sb[k]) for k in sa)
