"""manifest.json is the commit marker: without a valid one, a checkpoint does not exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cairn.checkpoint.manifest import MANIFEST_NAME, is_valid_checkpoint, read_manifest, write_manifest
from cairn.errors import CheckpointCorrupt, InvalidArgument


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    root = tmp_path / "step-5"
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"\x00" * 100)
    (root / "sub" / "extra.json").write_text('{"a": 1}')
    write_manifest(
        root, step=5, epoch=1, run_id="abc", metrics={"val_loss": 0.25, "nan": float("nan")}, metadata={"k": [1]}
    )
    return root


def test_manifest_records_every_file_and_the_training_position(checkpoint: Path) -> None:
    manifest = read_manifest(checkpoint)
    assert set(manifest.files) == {"model.safetensors", "sub/extra.json"}
    assert manifest.files["model.safetensors"].size == 100
    assert (manifest.step, manifest.epoch, manifest.run_id) == (5, 1, "abc")
    assert manifest.metrics["val_loss"] == 0.25 and manifest.metrics["nan"] != manifest.metrics["nan"]
    assert manifest.metadata == {"k": [1]} and manifest.created_at.endswith("+00:00")
    payload = json.loads((checkpoint / MANIFEST_NAME).read_text(), parse_constant=lambda c: pytest.fail(c))
    assert payload["format"] == "cairn.checkpoint" and payload["format_version"] == 1
    assert len(payload["files"]["model.safetensors"]["sha256"]) == 64
    assert is_valid_checkpoint(checkpoint)


def test_missing_manifest(checkpoint: Path) -> None:
    (checkpoint / MANIFEST_NAME).unlink()
    assert not is_valid_checkpoint(checkpoint)
    with pytest.raises(CheckpointCorrupt, match=r"has no manifest\.json"):
        read_manifest(checkpoint)


def test_truncated_manifest(checkpoint: Path) -> None:
    text = (checkpoint / MANIFEST_NAME).read_text()
    (checkpoint / MANIFEST_NAME).write_text(text[: len(text) // 2])
    assert not is_valid_checkpoint(checkpoint)
    with pytest.raises(CheckpointCorrupt, match="unreadable"):
        read_manifest(checkpoint)


def test_flipped_byte_is_caught_by_the_hash_only(checkpoint: Path) -> None:
    data = bytearray((checkpoint / "model.safetensors").read_bytes())
    data[50] ^= 0xFF
    (checkpoint / "model.safetensors").write_bytes(bytes(data))
    assert is_valid_checkpoint(checkpoint, verify_hashes=False)  # same size
    assert not is_valid_checkpoint(checkpoint)
    with pytest.raises(CheckpointCorrupt, match=r"sha256 of model\.safetensors differs"):
        read_manifest(checkpoint)


def test_missing_or_truncated_file(checkpoint: Path) -> None:
    (checkpoint / "sub" / "extra.json").write_text("{")
    with pytest.raises(CheckpointCorrupt, match=r"sub/extra\.json has 1 bytes"):
        read_manifest(checkpoint, verify_hashes=False)
    (checkpoint / "sub" / "extra.json").unlink()
    with pytest.raises(CheckpointCorrupt, match=r"sub/extra\.json is missing"):
        read_manifest(checkpoint)


def test_manifest_may_not_point_outside_its_directory(checkpoint: Path) -> None:
    payload = json.loads((checkpoint / MANIFEST_NAME).read_text())
    payload["files"]["../escape"] = {"size": 0, "sha256": "0" * 64}
    (checkpoint / MANIFEST_NAME).write_text(json.dumps(payload))
    with pytest.raises(CheckpointCorrupt, match=r"invalid path '\.\./escape'"):
        read_manifest(checkpoint)


def test_wrong_format_and_bad_metadata(checkpoint: Path) -> None:
    (checkpoint / MANIFEST_NAME).write_text('{"format": "cairn.checkpoint", "format_version": 99}')
    with pytest.raises(CheckpointCorrupt, match="format version 99"):
        read_manifest(checkpoint)
    with pytest.raises(InvalidArgument, match="plain JSON"):
        write_manifest(checkpoint, step=1, metadata={"x": float("nan")})
