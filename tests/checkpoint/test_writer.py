"""The async writer: atomic commits, back-pressure, deferred errors with the snapshot kept, retention, crashes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cairn.checkpoint import (
    AsyncCheckpointWriter,
    CheckpointInfo,
    RetentionPolicy,
    capture_training_state,
    checkpoints_dir,
    delete_local,
    latest_checkpoint,
    list_checkpoints,
    load_component,
    scan_checkpoints,
    snapshot_state,
    write_checkpoint,
)
from cairn.checkpoint import state_tree as state_tree_module
from cairn.checkpoint.buffers import BufferPool
from cairn.errors import CheckpointError, CheckpointWriteError, InvalidArgument
from tests.checkpoint._helpers import TinyNet, assert_tree_identical

REAL_WRITE = state_tree_module._write_tensors


def state(step: int, value: float = 0.0, **metrics: float) -> Any:
    return snapshot_state({"model": {"w": torch.full((4,), value)}}, step=step, epoch=0, metrics=metrics)


def dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_checkpoints_are_committed_with_a_manifest_and_no_leftovers(tmp_path: Path) -> None:
    directory = checkpoints_dir(tmp_path)
    model = TinyNet()
    with AsyncCheckpointWriter(directory) as writer:
        writer.submit(capture_training_state(model=model, step=10, epoch=0, run_id="r"))
        writer.submit(state(20))
        writer.wait()
        assert writer.pending == 0
        assert [c.name for c in writer.committed] == ["step-10", "step-20"]
    assert dirs(directory) == ["step-10", "step-20"]
    assert sorted(p.name for p in (directory / "step-10").iterdir()) == [
        "manifest.json",
        "model.json",
        "model.safetensors",
        "rng.json",
        "rng.safetensors",
        "training_state.json",
    ]
    assert [c.step for c in list_checkpoints(tmp_path)] == [10, 20]
    assert_tree_identical(load_component(directory / "step-10", "model"), model.state_dict())
    with pytest.raises(CheckpointError, match="closed"):
        writer.submit(state(30))


def test_rewriting_a_name_replaces_it(tmp_path: Path) -> None:
    write_checkpoint(state(1, 1.0), tmp_path, "latest")
    write_checkpoint(state(2, 2.0), tmp_path, "latest")
    assert dirs(tmp_path) == ["latest"]
    assert torch.equal(load_component(tmp_path / "latest", "model")["w"], torch.full((4,), 2.0))


def test_back_pressure_blocks_the_third_submit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_write(tensors: dict[str, torch.Tensor], path: Path) -> None:
        assert release.wait(10)
        REAL_WRITE(tensors, path)

    monkeypatch.setattr(state_tree_module, "_write_tensors", slow_write)
    writer = AsyncCheckpointWriter(tmp_path, max_pending=2)
    started = time.perf_counter()
    writer.submit(state(1))
    writer.submit(state(2))
    assert time.perf_counter() - started < 1.0 and writer.pending == 2
    third = threading.Thread(target=writer.submit, args=(state(3),))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # waiting for a slot
    release.set()
    third.join(10)
    assert not third.is_alive()
    writer.close()
    assert [c.step for c in writer.committed] == [1, 2, 3]


def test_capture_is_fast_and_the_write_happens_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing_thread: list[str] = []

    def record(tensors: dict[str, torch.Tensor], path: Path) -> None:
        writing_thread.append(threading.current_thread().name)
        REAL_WRITE(tensors, path)

    monkeypatch.setattr(state_tree_module, "_write_tensors", record)
    with AsyncCheckpointWriter(tmp_path) as writer:
        writer.submit(capture_training_state(model=TinyNet(), step=1, epoch=0))
    assert writing_thread and set(writing_thread) == {"cairn-checkpoint-writer"}


def test_disk_full_is_surfaced_and_the_state_is_kept_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(tensors: dict[str, torch.Tensor], path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    writer = AsyncCheckpointWriter(tmp_path)
    writer.submit(state(1, 1.0))
    writer.wait()
    monkeypatch.setattr(state_tree_module, "_write_tensors", disk_full)
    writer.submit(state(2, 2.0))
    with pytest.raises(CheckpointWriteError) as info:
        writer.wait()
    message = str(info.value)
    assert "checkpoint 'step-2' could not be written" in message and "No space left on device" in message
    assert "retry_failed()" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert dirs(tmp_path) == ["step-1"]  # the partial write left nothing behind
    assert writer.failed is not None and writer.failed.state.step == 2

    # The next submit raises the error of a background write too, and does not queue its own state.
    writer.submit(state(3, 3.0))
    deadline = time.monotonic() + 10
    while writer.pending and time.monotonic() < deadline:  # let the background write fail first
        time.sleep(0.01)
    with pytest.raises(CheckpointWriteError, match="'step-3' could not be written"):
        writer.submit(state(4, 4.0))
    assert writer.pending == 0 and writer.failed.state.step == 3  # the newest failed state is kept

    monkeypatch.setattr(state_tree_module, "_write_tensors", REAL_WRITE)  # space freed
    assert writer.retry_failed() is True
    writer.close()
    assert dirs(tmp_path) == ["step-1", "step-3"]
    assert torch.equal(load_component(tmp_path / "step-3", "model")["w"], torch.full((4,), 3.0))
    assert writer.failed is None and writer.retry_failed() is False


def test_error_is_raised_at_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(tensors: dict[str, torch.Tensor], path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_tree_module, "_write_tensors", fail)
    writer = AsyncCheckpointWriter(tmp_path)
    writer.submit(state(1))
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        writer.close()
    writer.close()  # reported once


def test_retention_and_on_commit_run_after_each_write(tmp_path: Path) -> None:
    committed: list[str] = []
    deleted: list[str] = []

    def delete_everywhere(info: CheckpointInfo) -> None:
        delete_local(info)
        deleted.append(info.name)  # e.g. also delete it from the artifact store

    policy = RetentionPolicy(keep_last=2, keep_best=1, monitor="val_loss", mode="min")
    losses = [0.9, 0.2, 0.5, 0.6, 0.4, 0.3]
    with AsyncCheckpointWriter(
        tmp_path, retention=policy, delete=delete_everywhere, on_commit=lambda i: committed.append(i.name)
    ) as writer:
        for step, loss in enumerate(losses, start=1):
            writer.submit(state(step, val_loss=loss))
    assert committed == [f"step-{s}" for s in range(1, 7)]
    assert dirs(tmp_path) == ["step-2", "step-5", "step-6"]  # best (0.2) + last two
    assert sorted(deleted) == ["step-1", "step-3", "step-4"]


def test_on_commit_failure_is_surfaced_but_the_checkpoint_exists(tmp_path: Path) -> None:
    def upload(info: CheckpointInfo) -> None:
        raise ConnectionError("artifact store unreachable")

    writer = AsyncCheckpointWriter(tmp_path, on_commit=upload)
    writer.submit(state(1))
    with pytest.raises(CheckpointWriteError, match=r"written to .*step-1 but on_commit failed.*unreachable"):
        writer.wait()
    assert dirs(tmp_path) == ["step-1"] and writer.failed is None
    writer.close()


CHILD = """
import sys, time, torch
from pathlib import Path
from cairn.checkpoint import AsyncCheckpointWriter, snapshot_state, write_checkpoint
from cairn.checkpoint import state_tree

root = Path(sys.argv[1]) / "checkpoints"
write_checkpoint(snapshot_state({"model": {"w": torch.ones(1000)}}, step=1, epoch=0), root)
real = state_tree._write_tensors

def write_then_hang(tensors, path):
    real(tensors, path)
    with open(path, "r+b") as handle:  # leave the file half written
        handle.truncate(path.stat().st_size // 2)
    print("WRITING", flush=True)
    time.sleep(60)

state_tree._write_tensors = write_then_hang
writer = AsyncCheckpointWriter(root)
writer.submit(snapshot_state({"model": {"w": torch.zeros(1000)}}, step=2, epoch=0))
writer.wait()
"""


def test_process_killed_while_writing_leaves_the_previous_checkpoint_latest(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "WRITING", child.stderr.read() if child.stderr else line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    directory = checkpoints_dir(tmp_path)
    assert any(name.startswith(".tmp-step-2-") for name in dirs(directory))
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-1"]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.step == 1
    assert torch.equal(load_component(latest.path, "model")["w"], torch.ones(1000))


def test_written_snapshots_are_recycled_for_the_next_capture(tmp_path: Path) -> None:
    model = TinyNet()
    with AsyncCheckpointWriter(tmp_path, max_pending=1) as writer:
        first = capture_training_state(model=model, step=1, epoch=0, buffers=writer.buffers)
        first_ptrs = {t.data_ptr() for t in first.components["model"].tensors.values()}
        snapshot_bytes = first.nbytes
        writer.submit(first)
        writer.wait()
        assert first.released and first.nbytes == 0
        assert writer.buffers.nbytes == snapshot_bytes  # model and RNG buffers, ready for reuse
        with torch.no_grad():
            model.fc1.weight.add_(1.0)
        second = capture_training_state(model=model, step=2, epoch=0, buffers=writer.buffers)
        second_ptrs = {t.data_ptr() for t in second.components["model"].tensors.values()}
        assert second_ptrs == first_ptrs  # same memory, no fresh allocation
        assert writer.buffers.nbytes == 0
        writer.submit(second)
        with pytest.raises(InvalidArgument, match="already written"):
            write_checkpoint(first, tmp_path, "again")
    assert_tree_identical(load_component(tmp_path / "step-2", "model"), model.state_dict())
    assert not torch.equal(load_component(tmp_path / "step-1", "model")["fc1.weight"], model.fc1.weight)


def test_buffer_pool_is_bounded() -> None:
    pool = BufferPool()
    pool.give([torch.empty(10), torch.empty(10), torch.empty(5, dtype=torch.float64)], keep_bytes=80)
    assert pool.nbytes == 80  # the oldest buffer of 40 bytes was dropped
    assert pool.take(torch.Size([5]), torch.float64) is not None
    assert pool.take(torch.Size([10]), torch.float32) is not None
    assert pool.take(torch.Size([10]), torch.float32) is None and pool.nbytes == 0


EXIT_CHILD = """
import sys, torch
from pathlib import Path
from cairn.checkpoint import AsyncCheckpointWriter, snapshot_state
from cairn.checkpoint import state_tree

root = Path(sys.argv[1])
writer = AsyncCheckpointWriter(root / "ok")
writer.submit(snapshot_state({"model": {"w": torch.ones(10)}}, step=1, epoch=0))
failing = AsyncCheckpointWriter(root / "full")
real = state_tree._write_tensors
def fail(tensors, path):
    if "full" in str(path):
        raise OSError(28, "No space left on device")
    real(tensors, path)
state_tree._write_tensors = fail
failing.submit(snapshot_state({"model": {"w": torch.ones(10)}}, step=1, epoch=0))
# exits without wait() or close()
"""


def test_interpreter_exit_finishes_queued_writes_and_reports_failures(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(EXIT_CHILD))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [c.step for c in scan_checkpoints(tmp_path / "ok")] == [1]
    assert "checkpoint 'step-1' could not be written" in done.stderr and "No space left" in done.stderr
