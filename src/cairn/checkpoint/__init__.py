"""Training checkpoints that resume exactly: capture, atomic background writes, retention, restore.

A checkpoint is a directory of safetensors files (tensors) and JSON files (structure, scalars, RNG,
step, epoch, run id), committed by a ``manifest.json`` holding the sha256 of every file, written last.
A directory without a valid manifest does not exist. Nothing on the restore path unpickles.

Modules: :mod:`~cairn.checkpoint.state_tree` (nested state <-> files), :mod:`~cairn.checkpoint.rng`,
:mod:`~cairn.checkpoint.manifest`, :mod:`~cairn.checkpoint.capture` (what to save and how to put it
back), :mod:`~cairn.checkpoint.dataloader` (mid-epoch resume), :mod:`~cairn.checkpoint.writer`
(async atomic writes), :mod:`~cairn.checkpoint.retention` and :mod:`~cairn.checkpoint.local` (layout
``<root>/checkpoints/step-<N>/``).

The one checkpoint/resume core every integration uses (plain PyTorch, Lightning, Transformers):

- :mod:`~cairn.checkpoint.formats`: ``CheckpointFormat`` adapters (native ``checkpoints/step-<N>/``,
  Transformers ``checkpoints/checkpoint-<N>/``, Lightning ``lightning_checkpoints/*.ckpt`` + index): naming,
  what makes one complete, how it is verified;
- :mod:`~cairn.checkpoint.run_checkpoints`: ``RunCheckpoints(client, run_id, fmt)``: a run's checkpoints in
  its artifact store: list, upload (commit marker last), delete, prune by retention, materialise a verified
  local copy; uploads on one background thread (:mod:`~cairn.checkpoint.uploads`) with ``drain(timeout)``
  and ``take_error()``;
- :mod:`~cairn.checkpoint.resume`: the run to resume (``CAIRN_RUN_ID``, explicit, active) and
  ``plan_resume`` (find, verify, warn about a damaged newest one, continue with supersede or fork), and
  ``nothing_to_resume`` (never a restart inside a run's history);
- :mod:`~cairn.checkpoint.runs`: the public API on top (``log_checkpoint``, ``resume``, ``checkpoint_path``);
- :mod:`~cairn.checkpoint.distributed`: under ``torch.distributed`` every rank's RNG and data position,
  gathered to rank 0 into the checkpoint (``rank-<r>``), restored by each rank; another world size;
- :mod:`~cairn.checkpoint.sharded`: FSDP2 (DTensor) models in shards through ``torch.distributed.checkpoint``
  (``async_save``), DCP's pickled metadata read through an allow-list.

The manifest, local-layout and retention modules need no torch; the names from the other modules are
imported (with torch) on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cairn.checkpoint.local import (
    CheckpointInfo,
    checkpoints_dir,
    latest_checkpoint,
    list_checkpoints,
    scan_checkpoints,
    step_dirname,
)
from cairn.checkpoint.manifest import Manifest, is_valid_checkpoint, read_manifest, write_manifest
from cairn.checkpoint.retention import RetentionPolicy, apply_retention, delete_local

if TYPE_CHECKING:
    from cairn.checkpoint.buffers import BufferPool
    from cairn.checkpoint.capture import (
        RestoredState,
        TrainingState,
        capture_training_state,
        load_component,
        restore_training_state,
        snapshot_state,
    )
    from cairn.checkpoint.dataloader import EpochStart, ResumableLoader, capture_epoch_start, resumable_position
    from cairn.checkpoint.rng import capture_rng_state, restore_rng_state
    from cairn.checkpoint.state_tree import load_state_tree, save_state_tree
    from cairn.checkpoint.writer import AsyncCheckpointWriter, FailedWrite, write_checkpoint

_LAZY = {
    "BufferPool": "buffers",
    "RestoredState": "capture",
    "TrainingState": "capture",
    "capture_training_state": "capture",
    "load_component": "capture",
    "restore_training_state": "capture",
    "snapshot_state": "capture",
    "EpochStart": "dataloader",
    "ResumableLoader": "dataloader",
    "capture_epoch_start": "dataloader",
    "resumable_position": "dataloader",
    "capture_rng_state": "rng",
    "restore_rng_state": "rng",
    "load_state_tree": "state_tree",
    "save_state_tree": "state_tree",
    "AsyncCheckpointWriter": "writer",
    "FailedWrite": "writer",
    "write_checkpoint": "writer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cairn.checkpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cairn.checkpoint.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncCheckpointWriter",
    "BufferPool",
    "CheckpointInfo",
    "EpochStart",
    "FailedWrite",
    "Manifest",
    "RestoredState",
    "ResumableLoader",
    "RetentionPolicy",
    "TrainingState",
    "apply_retention",
    "capture_epoch_start",
    "capture_rng_state",
    "capture_training_state",
    "checkpoints_dir",
    "delete_local",
    "is_valid_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_component",
    "load_state_tree",
    "read_manifest",
    "restore_rng_state",
    "restore_training_state",
    "resumable_position",
    "save_state_tree",
    "scan_checkpoints",
    "snapshot_state",
    "step_dirname",
    "write_checkpoint",
    "write_manifest",
]
