"""Local layout: only checkpoints with a valid manifest are listed; a damaged newest one falls back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from cairn.checkpoint import (
    checkpoints_dir,
    latest_checkpoint,
    list_checkpoints,
    restore_training_state,
    snapshot_state,
    step_dirname,
    write_checkpoint,
)


def write(root: Path, step: int) -> Path:
    state = snapshot_state({"model": {"w": torch.full((8,), float(step))}}, step=step, epoch=step // 10)
    return write_checkpoint(state, checkpoints_dir(root), step_dirname(step)).path


def test_layout_and_sorting_by_step(tmp_path: Path) -> None:
    for step in (100, 5, 20):
        write(tmp_path, step)
    listed = list_checkpoints(tmp_path)
    assert [c.name for c in listed] == ["step-5", "step-20", "step-100"]
    assert listed[0].path == tmp_path / "checkpoints" / "step-5" and listed[2].epoch == 10
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.step == 100


def test_nothing_there(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None


def test_partial_and_temporary_directories_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, 1)
    good = write(tmp_path, 2)
    directory = checkpoints_dir(tmp_path)
    shutil.copytree(good, directory / ".tmp-step-3-abc")  # complete, but never renamed into place
    shutil.copytree(good, directory / "step-4")
    (directory / "step-4" / "manifest.json").unlink()  # killed before the manifest
    shutil.copytree(good, directory / "step-5")
    (directory / "step-5" / "manifest.json").write_text('{"format": "cairn.checkpoint", "step": 5, "fi')
    (directory / "stray-file").write_text("x")
    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2]
    assert latest_checkpoint(tmp_path).name == "step-2"  # type: ignore[union-attr]


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    write(tmp_path, 1)
    write(tmp_path, 2)
    newest = write(tmp_path, 3)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # a flipped bit, same size
    (newest / "model.safetensors").write_bytes(bytes(data))
    assert [c.step for c in list_checkpoints(tmp_path, verify_hashes=False)] == [1, 2, 3]
    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.step == 2
    assert restore_training_state(latest.path).step == 2
    # a missing file in step-2 as well: back to step-1
    (latest.path / "model.json").unlink()
    assert latest_checkpoint(tmp_path).step == 1  # type: ignore[union-attr]


def test_manifest_files_are_the_checkpoint_files(tmp_path: Path) -> None:
    path = write(tmp_path, 7)
    manifest = json.loads((path / "manifest.json").read_text())
    on_disk = {p.name for p in path.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert manifest["step"] == 7 and manifest["metadata"]["components"] == ["model"]
