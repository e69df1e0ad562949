"""Reusable host buffers for snapshots, so capturing is a plain memory copy.

A fresh snapshot of a few hundred MB spends most of its time in page faults on newly allocated memory,
not in copying. Once a checkpoint is written, :class:`~cairn.checkpoint.writer.AsyncCheckpointWriter`
gives its snapshot buffers back to a pool; the next capture (``capture_training_state(...,
buffers=writer.buffers)``) copies into them instead of allocating. Buffers are matched by dtype, shape
and pinning.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import torch

__all__ = ["BufferPool"]

_Key = tuple[torch.dtype, tuple[int, ...], bool]


class BufferPool:
    """A thread-safe pool of free CPU tensors (taken on the training thread, given back by the writer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: OrderedDict[_Key, list[torch.Tensor]] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by free buffers."""
        with self._lock:
            return self._bytes

    def take(self, shape: torch.Size, dtype: torch.dtype, *, pinned: bool = False) -> torch.Tensor | None:
        """A free buffer of exactly this dtype, shape and pinning, or ``None``."""
        key = (dtype, tuple(shape), pinned)
        with self._lock:
            free = self._free.get(key)
            if not free:
                return None
            buffer = free.pop()
            if not free:
                del self._free[key]
            self._bytes -= _size(buffer)
            return buffer

    def give(self, buffers: Iterable[torch.Tensor], *, keep_bytes: int) -> None:
        """Return buffers nobody references any more; keep at most ``keep_bytes`` (oldest dropped first)."""
        with self._lock:
            for buffer in buffers:
                key = (buffer.dtype, tuple(buffer.shape), buffer.is_pinned())
                self._free.setdefault(key, []).append(buffer)
                self._free.move_to_end(key)
                self._bytes += _size(buffer)
            while self._bytes > keep_bytes and self._free:
                key, free = next(iter(self._free.items()))
                self._bytes -= _size(free.pop(0))
                if not free:
                    del self._free[key]

    def clear(self) -> None:
        """Drop every free buffer."""
        with self._lock:
            self._free.clear()
            self._bytes = 0


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
