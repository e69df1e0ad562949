"""Snapshot copies spread over two threads: every byte lands where it belongs."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[torch]')")

from cairn.checkpoint import copies  # noqa: E402 - after the importorskip


def _pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    sources = [
        torch.randn(1500, 1500, generator=g),  # 9 MB: sliced
        torch.randn(3000, generator=g).to(torch.float16),
        torch.randint(0, 100, (700, 900), generator=g),  # int64, 5 MB: sliced
        torch.randn(800, 900, generator=g).t(),  # not contiguous: copied whole
        torch.empty(0),
    ]
    return [(torch.zeros(s.shape, dtype=s.dtype), s) for s in sources]


def test_large_snapshots_are_copied_exactly_by_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    original = copies._copy

    def watched(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        threads.add(threading.current_thread().name)
        original(pairs)

    monkeypatch.setattr(copies, "_copy", watched)
    monkeypatch.setattr(copies.os, "cpu_count", lambda: 2)
    pairs = _pairs()
    copies.copy_all(pairs)
    for out, source in pairs:
        assert out.dtype == source.dtype and torch.equal(out, source)
    assert len(threads) == 2 and any(name.startswith("cairn-snapshot-copy") for name in threads)


def test_small_snapshots_stay_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copies, "_pool", lambda: pytest.fail("a small snapshot used the copy thread"))
    source = torch.arange(1000.0)
    out = torch.empty_like(source)
    copies.copy_all([(out, source)])
    assert torch.equal(out, source)


def test_slices_cover_each_tensor_once() -> None:
    source = torch.arange(3 * copies.SLICE_BYTES // 4 + 5, dtype=torch.float32)  # 3 slices and a bit
    out = torch.zeros_like(source)
    sliced = copies._slices([(out, source)])
    assert len(sliced) == 4 and sum(s.numel() for _, s in sliced) == source.numel()
