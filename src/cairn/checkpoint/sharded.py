"""Sharded checkpoints of FSDP2 models (``fully_shard``, DTensor parameters) through ``torch.distributed.checkpoint``.

A model whose parameters are DTensors cannot be gathered into one state dict cheaply, so every rank writes
its own shards with ``dcp.async_save`` (the training thread only stages a host copy, into buffers reused
from the previous checkpoint, see :class:`_ReusedBuffersStager`; the files are written on a background
thread, DCP's collectives going through a gloo process group of cairn's own) of
``{"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}`` into
the checkpoint's ``sharded/`` subdirectory (one ``__<rank>_0.distcp`` file per rank and DCP's
``.metadata``). The rest of the checkpoint (scheduler, scaler, extra, every rank's RNG and data position)
is written as for DDP (see :mod:`cairn.checkpoint.distributed`), and rank 0's checkpoint writer thread
writes ``manifest.json`` over all of it once rank 0's write future completed, which is after every rank's
shards were written (DCP gathers the ranks' write results before its coordinator commits ``.metadata``).
A failed background write (of any rank: DCP hands its result to every rank) is raised by every rank's next
``log_checkpoint`` or ``flush_checkpoints``, which removes the half-written shards; rank 0's writer also
reports it at its next submission. The shards are written into
a ``.tmp-`` directory of the run's staging area that rank 0 moves into the checkpoint, so the staging
directory must be on a filesystem every rank sees (one node, or a shared filesystem). A kill during the
save leaves only that ``.tmp-`` directory: no manifest, no checkpoint.

Pickle: DCP's ``.metadata`` file is a pickle, and DCP reads non-tensor values (optimizer
``param_groups``) with ``torch.load(weights_only=False)``. cairn reads neither that way: the manifest's
sha256 of every file is verified first, then ``.metadata`` is read by :class:`_MetadataUnpickler`, which
resolves only DCP's metadata classes, ``torch.Size``, dtypes, layouts and ``pathlib`` paths (anything
else, e.g. ``os.system``, is refused before it is looked up), and non-tensor values are read with
``torch.load(weights_only=True)``. Tensors DCP already reads with ``weights_only=True``.

A job of one rank (``fully_shard`` on a 1-rank mesh still gives DTensors) is sharded the same way, with
one shard file. DCP reshards on restore: a checkpoint of N ranks loads on M (tested 2 -> 1, 1 -> 2, 2 -> 4).

Retention deletes ``step-<N>/`` with its ``sharded/`` subdirectory as one checkpoint.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from cairn.errors import CheckpointCorrupt, CheckpointWriteError, StateMismatch

__all__ = ["SHARDED_DIR", "classes", "is_sharded", "load_sharded", "read_metadata", "save_sharded", "single_rank"]

SHARDED_DIR = "sharded"
METADATA_FILE = ".metadata"
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_DCP_METADATA, name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
}


def is_sharded(model: Any) -> bool:
    """Whether ``model`` has DTensor parameters (FSDP2 ``fully_shard``, tensor parallel)."""
    if model is None or not torch.distributed.is_available():  # builds without torch.distributed have no DTensor
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def single_rank() -> bool:
    """Whether this process is a ``torch.distributed`` job of one rank (``fully_shard`` still gives DTensors there,
    so its checkpoints are sharded too, with no collective of cairn's around them)."""
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() == 1)


def classes(model: Any, optimizer: Any) -> dict[str, str]:
    """The classes recorded for the sharded components (checked on restore like the others)."""
    found = {"model": f"{type(model).__module__}.{type(model).__qualname__}"}
    if optimizer is not None:
        items = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
        found["optimizer"] = ",".join(f"{type(o).__module__}.{type(o).__qualname__}" for o in items)
    return found


def _state(model: Any, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


_group: Any = None
_pending: list[tuple[str, Future[Any]]] = []  # this rank's shard writes in flight (directory, future)
_lock = threading.Lock()


def _checkpoint_group() -> Any:
    """A gloo process group of its own for DCP's background collectives (created on first use, on every rank:
    the first sharded checkpoint is reached by every rank together), so they never interleave with training's."""
    global _group
    if _group is None:
        _group = torch.distributed.new_group(backend="gloo")
    return _group


def _layout(value: Any) -> Any:
    """The structure of a state dict as far as staging buffers depend on it: keys, tensor shapes and dtypes."""
    if isinstance(value, torch.Tensor):
        local = value.to_local() if hasattr(value, "to_local") else value  # a DTensor stages its local shard
        return (type(value).__name__, tuple(local.shape), local.dtype, tuple(local.stride()))
    if isinstance(value, dict):
        return tuple((key, _layout(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_layout(item) for item in value))
    return type(value).__name__


class _ReusedBuffersStager:
    """Stages a state dict by copying its tensors into host buffers kept from the previous checkpoint.

    DCP's default stager allocates a fresh host copy of every tensor at every ``async_save``; faulting in
    hundreds of MB of new pages is most of the training thread's stall. The buffers here are allocated once
    (pinned when CUDA is available, for the device-to-host copy) and reused while the state dict keeps its
    layout. A copy is still made at every checkpoint, on the training thread: the optimizer updates the
    parameters and its state in place, so the checkpoint must hold the values of its own step, not later
    ones. Reuse is safe because a shard write is waited for before the next one stages (one at a time, see
    :func:`save_sharded`), so nothing still reads the buffers when they are overwritten. Costs one host copy
    of this rank's state, kept between checkpoints.
    """

    _synchronize_after_execute = False

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None
        self._layout: Any = None

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

        layout = _layout(state_dict)
        if self._cache is None or layout != self._layout:
            self._cache = None  # free the old buffers before allocating new ones
            self._cache = _create_cpu_state_dict(state_dict, pin_memory=torch.cuda.is_available())
            self._layout = layout
        return _copy_state_dict(state_dict, self._cache, type_check=False)

    @property
    def should_synchronize_after_execute(self) -> bool:
        return False

    def synchronize_staging(self) -> None:
        """Nothing to wait for: :meth:`stage` copies before it returns."""

    def close(self) -> None:
        self._cache = None


_stager: _ReusedBuffersStager | None = None


def raise_failed_writes(*, wait: bool) -> None:
    """Raise the failure of a shard write of this rank that finished (``wait``: wait for all of them first).

    Raises:
        CheckpointWriteError: a background shard write failed (its checkpoint does not exist).
    """
    with _lock:
        pending = list(_pending)
    for directory, future in pending:
        if not wait and not future.done():
            continue
        with _lock:
            if (directory, future) in _pending:
                _pending.remove((directory, future))
        try:
            future.result()
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            # (DCP's write result reaches every rank, so each raises it; the half-written shards go)
            shutil.rmtree(directory, ignore_errors=True)
            raise CheckpointWriteError(
                f"writing the shards of this rank into {directory} failed in the background, so that checkpoint "
                f"does not exist: {type(exc).__name__}: {exc}"
            ) from exc


def save_sharded(model: Any, optimizer: Any, directory: str | os.PathLike[str]) -> Future[Any]:
    """Every rank: stage its shards of model and optimizer (a copy in host memory, on this thread) and write
    them into ``directory`` in the background (``dcp.async_save`` on a process group of its own; a collective).

    Returns the write's future. An earlier write still in flight is waited for first (one at a time), and a
    failed earlier write is raised here.

    Raises:
        CheckpointWriteError: an earlier background shard write of this rank failed.
    """
    import torch.distributed.checkpoint as dcp

    raise_failed_writes(wait=True)
    global _stager
    if _stager is None:
        _stager = _ReusedBuffersStager()
    future = dcp.async_save(
        _state(model, optimizer),
        checkpoint_id=str(directory),
        process_group=_checkpoint_group(),
        async_stager=_stager,  # an AsyncStager (a Protocol)
    )
    if not isinstance(future, Future):  # AsyncSaveResponse (another stager): its upload completion
        future = future.upload_completion
    with _lock:
        _pending.append((str(directory), future))
    return future


class _MetadataUnpickler(pickle.Unpickler):
    """Reads DCP's ``.metadata``: only the allow-listed classes (see the module docstring) are resolved."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointCorrupt(
            f"DCP metadata refers to {module}.{name}, which is not one of the metadata classes cairn reads"
        )


def read_metadata(path: Path) -> Any:
    """DCP's metadata at ``path`` through :class:`_MetadataUnpickler`.

    Raises:
        CheckpointCorrupt: it refers to anything else than DCP's metadata classes, or is not readable.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except CheckpointCorrupt as exc:
        raise CheckpointCorrupt(f"{path}: {exc}") from exc
    except Exception as exc:  # truncated, not a pickle, a constructor refusing its arguments
        raise CheckpointCorrupt(f"{path}: cannot read DCP metadata: {exc}") from exc
    if not isinstance(metadata, Metadata):
        raise CheckpointCorrupt(f"{path}: not DCP metadata (a {type(metadata).__name__})")
    return metadata


def _reader(directory: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("rank") is not None:
                raise CheckpointCorrupt(f"{directory}: per-rank DCP metadata is not supported")
            metadata = read_metadata(directory / METADATA_FILE)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(directory))


def _planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = torch.load(value, weights_only=True)  # DCP's own reads with weights_only=False
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafePlanner()


def load_sharded(checkpoint: Path, model: Any, optimizer: Any) -> None:
    """Every rank: load the shards of a *verified* checkpoint (its manifest checked) into ``model`` and
    ``optimizer`` (``dcp.load``, a collective; DCP reshards when the world size changed).

    Raises:
        CheckpointCorrupt: the metadata is refused (see the module docstring) or the shards do not read.
        StateMismatch: the saved state does not fit the model or optimizer.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    directory = checkpoint / SHARDED_DIR
    read_metadata(directory / METADATA_FILE)  # refused here, on every rank, before DCP reads anything
    state = _state(model, optimizer)
    try:
        dcp.load(state, storage_reader=_reader(directory), planner=_planner())
    except CheckpointException as exc:  # a BaseException carrying every rank's failure
        corrupt = [e for e, _ in exc.failures.values() if isinstance(e, CheckpointCorrupt)]
        if corrupt:
            raise CheckpointCorrupt(str(corrupt[0])) from exc
        raise StateMismatch(f"sharded checkpoint {directory} does not load into the model/optimizer: {exc}") from exc
    except (RuntimeError, ValueError, KeyError) as exc:
        raise StateMismatch(f"sharded checkpoint {directory} does not load into the model/optimizer: {exc}") from exc
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
