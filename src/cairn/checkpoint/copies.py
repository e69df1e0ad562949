"""Host-memory copies of a snapshot, spread over two threads: the training thread's stall is the copy.

``Tensor.copy_`` releases the GIL, so a second thread copies half the bytes while the calling thread
copies the other half. Large tensors are cut into slices so that one big weight matrix is shared too.
Small snapshots are copied on the calling thread alone (a hand-off costs more than it saves).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["copy_all"]

PARALLEL_FROM_BYTES = 8 << 20  # below this, one thread
SLICE_BYTES = 4 << 20

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def copy_all(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``out.copy_(source)`` for every ``(out, source)`` pair (CPU tensors of equal shape and dtype)."""
    total = sum(source.numel() * source.element_size() for _, source in pairs)
    if total < PARALLEL_FROM_BYTES or (os.cpu_count() or 1) < 2:
        for out, source in pairs:
            out.copy_(source)
        return
    halves: tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]] = ([], [])
    loads = [0, 0]
    for out, source in _slices(pairs):
        lighter = 0 if loads[0] <= loads[1] else 1
        halves[lighter].append((out, source))
        loads[lighter] += source.numel() * source.element_size()
    other = _pool().submit(_copy, halves[1])
    try:
        _copy(halves[0])
    finally:
        other.result()


def _copy(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for out, source in pairs:
        out.copy_(source)


def _slices(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pairs with contiguous tensors above ``SLICE_BYTES`` cut into flat slices of about that size."""
    sliced = []
    for out, source in pairs:
        size = source.element_size()
        count = source.numel()
        if count * size <= SLICE_BYTES or not (source.is_contiguous() and out.is_contiguous()):
            sliced.append((out, source))
            continue
        flat_out, flat_source = out.view(-1), source.view(-1)
        step = max(1, SLICE_BYTES // size)
        sliced += [(flat_out[i : i + step], flat_source[i : i + step]) for i in range(0, count, step)]
    return sliced


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-snapshot-copy")
        return _executor
