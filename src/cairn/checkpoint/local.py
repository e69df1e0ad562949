"""Checkpoints on the local disk: ``<root>/checkpoints/step-<N>/``, listed from their manifests.

Only directories with a valid manifest count; interrupted writes (``.tmp-*`` siblings, directories
without a manifest, damaged files) are skipped silently, so after a crash the previous checkpoint is
the latest one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.checkpoint.manifest import Manifest, read_manifest
from cairn.errors import CheckpointCorrupt

__all__ = [
    "CHECKPOINTS_DIRNAME",
    "TEMP_PREFIX",
    "CheckpointInfo",
    "checkpoints_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "scan_checkpoints",
    "step_dirname",
]

CHECKPOINTS_DIRNAME = "checkpoints"
TEMP_PREFIX = ".tmp-"
"""Prefix of directories being written (and of replaced ones being removed); never a checkpoint."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One valid checkpoint directory, described by its manifest."""

    name: str
    path: Path
    step: int
    epoch: int | None
    run_id: str | None
    created_at: str
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, path: Path, manifest: Manifest) -> CheckpointInfo:
        return cls(
            name=path.name,
            path=path,
            step=manifest.step,
            epoch=manifest.epoch,
            run_id=manifest.run_id,
            created_at=manifest.created_at,
            metrics=dict(manifest.metrics),
            metadata=dict(manifest.metadata),
        )


def checkpoints_dir(root: str | os.PathLike[str]) -> Path:
    """The directory holding the checkpoints of ``root`` (a run's local directory)."""
    return Path(root) / CHECKPOINTS_DIRNAME


def step_dirname(step: int) -> str:
    """The directory name of the checkpoint at ``step``."""
    return f"step-{int(step)}"


def scan_checkpoints(directory: str | os.PathLike[str], *, verify_hashes: bool = True) -> list[CheckpointInfo]:
    """Valid checkpoints directly inside ``directory``, sorted by (step, creation time, name).

    Args:
        verify_hashes: hash every file of every checkpoint; ``False`` checks manifests, presence and sizes.
    """
    base = Path(directory)
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        path = base / entry.name
        try:
            manifest = read_manifest(path, verify_hashes=verify_hashes)
        except CheckpointCorrupt:
            continue
        found.append(CheckpointInfo.from_manifest(path, manifest))
    found.sort(key=lambda info: (info.step, info.created_at, info.name))
    return found


def list_checkpoints(root: str | os.PathLike[str], *, verify_hashes: bool = True) -> list[CheckpointInfo]:
    """Valid checkpoints under ``<root>/checkpoints``, oldest step first."""
    return scan_checkpoints(checkpoints_dir(root), verify_hashes=verify_hashes)


def latest_checkpoint(root: str | os.PathLike[str]) -> CheckpointInfo | None:
    """The valid checkpoint with the highest step under ``<root>/checkpoints``, or ``None``.

    Candidates are screened cheaply (manifest, sizes), then fully hashed from the newest down until one
    passes, so a damaged newest checkpoint falls back to the previous one without hashing all of them.
    """
    for info in reversed(scan_checkpoints(checkpoints_dir(root), verify_hashes=False)):
        try:
            read_manifest(info.path, verify_hashes=True)
        except CheckpointCorrupt:
            continue
        return info
    return None
