"""Capture everything a training loop needs to resume exactly, and put it back.

A checkpoint directory holds one state tree per component (``model``, ``optimizer``, ``scheduler``,
``scaler``, ``rng``, ``extra``, ``dataloader``; see :mod:`cairn.checkpoint.state_tree`), a
``training_state.json`` with the step, epoch, position in the epoch, run id and the class of each
component, and ``manifest.json`` (see :mod:`cairn.checkpoint.manifest`). Restoring reads only
safetensors and JSON: no pickle, no ``torch.load``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cairn.checkpoint._fs import MAX_COUNT, is_count, read_json, write_json
from cairn.checkpoint.buffers import BufferPool
from cairn.checkpoint.dataloader import LoaderState, resumable_position
from cairn.checkpoint.manifest import Manifest, read_manifest
from cairn.checkpoint.rng import capture_rng_state, restore_rng_state
from cairn.checkpoint.state_tree import FlatTree, flatten_state_tree, read_flat_tree, tree_files, write_flat_tree
from cairn.errors import CheckpointCorrupt, InvalidArgument, StateMismatch

__all__ = [
    "STATE_FILE",
    "RestoredState",
    "TrainingState",
    "capture_training_state",
    "load_component",
    "restore_training_state",
    "snapshot_state",
]

STATE_FILE = "training_state.json"
STATE_FORMAT = "cairn.training_state"
STATE_VERSION = 1
_COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_RESERVED = frozenset({"manifest", "training_state"})
_MAX_LISTED = 40


@dataclass
class TrainingState:
    """A snapshot of training state, detached from the live objects, ready to be written (even later).

    ``components`` maps a component name to its flattened tree; ``classes`` records the qualified class
    of each live object captured, checked again on restore.
    """

    components: dict[str, FlatTree]
    step: int
    epoch: int | None = None
    batch_in_epoch: int | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    released: bool = False
    """Set once a writer recycled this snapshot's buffers; it can no longer be written."""
    attached: dict[str, tuple[Path, Any]] = field(default_factory=dict)
    """Directories written elsewhere (FSDP2 shards) that :meth:`write_files` moves into the checkpoint, each
    with the future of its write (``None``: already written)."""

    def attach(self, name: str, directory: Path, written: Any = None) -> None:
        """Move ``directory`` into the checkpoint as ``name/`` when it is written (same filesystem), once the
        future ``written`` (if any) completed; its failure fails the checkpoint's write."""
        if not _COMPONENT_NAME.match(name) or name in self.components:
            raise InvalidArgument(f"invalid name {name!r} for a directory in a checkpoint")
        self.attached[name] = (Path(directory), written)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the snapshot."""
        return sum(flat.nbytes for flat in self.components.values())

    def wait_ready(self) -> None:
        """Block until asynchronous device-to-host copies have landed."""
        for flat in self.components.values():
            flat.wait_ready()

    def release(self) -> list[torch.Tensor]:
        """Give up this snapshot: returns the buffers it owned (for reuse) and marks it unwritable."""
        self.released = True
        owned = [buffer for flat in self.components.values() for buffer in flat.buffers]
        for flat in self.components.values():
            flat.tensors.clear()
            flat.buffers.clear()
        return owned

    def write_files(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write every component and ``training_state.json`` into ``directory`` (no manifest, no fsync)."""
        if self.released:
            raise InvalidArgument(f"the snapshot of step {self.step} was already written and its memory reused")
        root = Path(directory)
        written: list[Path] = []
        for name, flat in self.components.items():
            written += write_flat_tree(flat, root, name)
        payload = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "run_id": self.run_id,
            "components": sorted(self.components),
            "classes": self.classes,
        }
        write_json(root / STATE_FILE, payload)
        written.append(root / STATE_FILE)
        for name, (source, future) in self.attached.items():
            if future is not None:
                try:
                    future.result()
                except BaseException as exc:  # DCP's CheckpointException is a BaseException
                    raise OSError(f"the shards in {source} could not be written: {exc}") from exc
            os.rename(source, root / name)
            written += sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.is_symlink())
        return written


def snapshot_state(
    trees: Mapping[str, Any],
    *,
    step: int,
    epoch: int | None = None,
    batch_in_epoch: int | None = None,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    classes: Mapping[str, str] | None = None,
    buffers: BufferPool | None = None,
) -> TrainingState:
    """Snapshot arbitrary named state trees (private CPU copies) into a :class:`TrainingState`.

    ``buffers``: copy into free buffers of this pool (e.g. ``writer.buffers``) instead of allocating.

    Raises:
        InvalidArgument: a component name is invalid, ``step``, ``epoch`` or ``batch_in_epoch`` is negative
            (or beyond a 64-bit integer), or a value cannot be stored.
    """
    for what, count in (("step", step), ("epoch", epoch), ("batch_in_epoch", batch_in_epoch)):
        if count is not None and not 0 <= int(count) <= MAX_COUNT:
            raise InvalidArgument(f"checkpoint {what} must be between 0 and {MAX_COUNT}, got {count}")
    components = {}
    for name, tree in trees.items():
        if not _COMPONENT_NAME.match(name) or name in _RESERVED:
            raise InvalidArgument(f"invalid checkpoint component name {name!r} (letters, digits, '_', '-', '.')")
        components[name] = flatten_state_tree(tree, root=name, copy=True, buffers=buffers)
    return TrainingState(
        components=components,
        step=int(step),
        epoch=None if epoch is None else int(epoch),
        batch_in_epoch=None if batch_in_epoch is None else int(batch_in_epoch),
        run_id=run_id,
        metrics={str(k): float(v) for k, v in (metrics or {}).items()},
        metadata=dict(metadata or {}),
        classes=dict(classes or {}),
    )


def capture_training_state(
    *,
    model: torch.nn.Module | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    step: int,
    epoch: int,
    batch_in_epoch: int | None = None,
    extra: Any = None,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    dataloader: Any = None,
    rng: bool = True,
    buffers: BufferPool | None = None,
) -> TrainingState:
    """Snapshot model, optimizer, scheduler, grad scaler, RNG and loader position on the calling thread.

    The snapshot copies tensors (to CPU, ``non_blocking`` from CUDA) so training can go on while it is
    written. ``model`` may be wrapped in DDP/DataParallel or ``torch.compile``; the inner module's state
    is saved so the checkpoint loads into an unwrapped model. ``optimizer`` and ``scheduler`` may be
    lists (several optimizers).

    Args:
        step: global step (optimizer steps done).
        epoch: current epoch.
        batch_in_epoch: batches of ``epoch`` already consumed; taken from ``dataloader`` when omitted.
        extra: any further state tree (tensors, numpy arrays, scalars, containers).
        metrics: values for ``keep_best`` retention (recorded in the manifest).
        dataloader: a :class:`~cairn.checkpoint.dataloader.ResumableLoader` (anything with ``state_dict()``),
            whose epoch-start RNG and position are saved so the resumed epoch sees the same batches.
        rng: capture the global RNG states (python, numpy, torch CPU, CUDA).
        buffers: reuse the memory of snapshots already written (pass ``writer.buffers``); the copy is then
            a plain memcpy instead of fresh allocations that page-fault.

    Raises:
        InvalidArgument: a value cannot be stored; the message names its path (``optimizer.state.3.momentum_buffer``).
    """
    trees: dict[str, Any] = {}
    classes: dict[str, str] = {}
    for name, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if name == "model":
            obj = _unwrap(obj)
        trees[name], classes[name] = _state_of(obj, name)
    if extra is not None:
        trees["extra"] = extra
    if dataloader is not None:
        trees["dataloader"] = dataloader.state_dict()
        if batch_in_epoch is None:
            batch_in_epoch = trees["dataloader"].get("batch_in_epoch")
    if rng:
        trees["rng"] = capture_rng_state()
    return snapshot_state(
        trees,
        step=step,
        epoch=epoch,
        batch_in_epoch=batch_in_epoch,
        run_id=run_id,
        metrics=metrics,
        metadata={"batch_in_epoch": batch_in_epoch},
        classes=classes,
        buffers=buffers,
    )


@dataclass
class RestoredState:
    """What :func:`restore_training_state` read besides the objects it loaded into."""

    step: int
    epoch: int | None
    batch_in_epoch: int | None
    extra: Any
    run_id: str | None
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    dataloader_state: dict[str, Any] | None = None
    """This rank's data position (``None`` when the checkpoint holds none, or it cannot be exact)."""
    epoch_restarts: bool = False
    """The checkpoint holds a data position this job cannot use exactly (another world size): the
    interrupted epoch restarts from its beginning."""

    def fast_forward(self, loader: Any) -> Iterator[Any]:
        """An iterator over the batches of ``loader`` the interrupted epoch had not consumed yet.

        Needs a checkpoint captured with ``dataloader=`` (which recorded the RNG at the epoch's start);
        call it after :func:`restore_training_state` has restored the RNG, in place of ``iter(loader)``
        for the resumed epoch only.

        Raises:
            InvalidArgument: the checkpoint holds no data-loader position.
        """
        if self.dataloader_state is None and self.epoch_restarts:
            return iter(loader)
        if self.dataloader_state is None:
            raise InvalidArgument(
                f"checkpoint {self.path} has no data-loader position; capture it with "
                "capture_training_state(..., dataloader=ResumableLoader(loader))"
            )
        position = LoaderState.from_tree(self.dataloader_state, str(tree_files(self.path, "dataloader")[1]))
        if position.epoch_start is None or position.epoch_finished:
            return iter(loader)
        return resumable_position(loader, position.batch_in_epoch, epoch_start=position.epoch_start)


def restore_training_state(
    state_dir: str | os.PathLike[str],
    *,
    model: torch.nn.Module | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    dataloader: Any = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> RestoredState:
    """Verify the checkpoint in ``state_dir``, load it into the given objects and restore the RNG.

    Objects not passed are left alone. The global RNG is restored last, so the next random draw is the
    one the interrupted run would have made.

    Args:
        strict: fail when the model has keys the checkpoint lacks (or the reverse), when a passed object
            has no state in the checkpoint, or when its class differs from the one saved.
        map_location: where tensors are read to before being copied into the objects.
        restore_rng: put this rank's saved RNG back (and its data position into ``dataloader``).
        rank, world_size: this process's place in a ``torch.distributed`` job (default: read from
            ``torch.distributed``; 0 and 1 without it). Rank r > 0 restores its own RNG and data position
            (component ``rank-<r>``); another world size than the checkpoint's restores the replicated
            state only, with a warning (see :mod:`cairn.checkpoint.distributed`).

    Raises:
        CheckpointCorrupt: the checkpoint is incomplete or damaged (it "does not exist").
        StateMismatch: saved state does not fit an object; for a model, lists every mismatched key with
            its saved and current shape, and missing/unexpected keys.
    """
    root = Path(state_dir)
    manifest = read_manifest(root, verify_hashes=True)
    _require_listed(manifest, root, [STATE_FILE])
    info = _read_state_file(root)
    components = set(info["components"])
    files = [path.name for name in components for path in tree_files(root, name)]
    _require_listed(manifest, root, files, named_in=STATE_FILE)
    classes = info["classes"]

    def load(name: str) -> Any:
        return read_flat_tree(root, name, map_location=map_location)

    for name, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if name not in components:
            if strict:
                raise StateMismatch(
                    f"checkpoint {root} holds no {name} state (it has: {', '.join(sorted(components))})"
                )
            continue
        if name == "model":
            _load_model(_unwrap(obj), load(name), strict=strict, where=str(root))
        else:
            _load_into(obj, load(name), name, saved_class=classes.get(name), strict=strict, where=str(root))
    own = _own_state(root, manifest, components, load, rank=rank, world_size=world_size, epoch=info.get("epoch"))
    if dataloader is not None:
        if "dataloader" not in components:
            if strict:
                raise StateMismatch(f"checkpoint {root} holds no data-loader position")
        elif own.loader_state is not None:
            _load_loader_position(dataloader, own.loader_state, own.source("dataloader"))
    extra = load("extra") if "extra" in components else None
    if restore_rng and own.rng is not None:
        restore_rng_state(own.rng, source=own.source("rng"))
    return RestoredState(
        step=info["step"],
        epoch=info.get("epoch"),
        batch_in_epoch=info.get("batch_in_epoch"),
        extra=extra,
        run_id=info.get("run_id"),
        path=root,
        metrics=dict(manifest.metrics),
        dataloader_state=own.loader_state,
        epoch_restarts=own.loader_state is None and "dataloader" in components,
    )


@dataclass
class _OwnState:
    """The RNG and data position of this rank in a checkpoint (``None``: not restorable exactly)."""

    root: Path
    component: str | None  # None: rank 0's ``rng``/``dataloader`` components
    rng: dict[str, Any] | None
    loader_state: dict[str, Any] | None

    def source(self, what: str) -> str:
        return str(tree_files(self.root, self.component or what)[1])


def _own_state(
    root: Path,
    manifest: Manifest,
    components: set[str],
    load: Any,
    *,
    rank: int | None,
    world_size: int | None,
    epoch: int | None,
) -> _OwnState:
    """Which RNG and data position this rank restores (warning when they cannot be exact)."""
    from cairn.checkpoint import distributed

    if rank is None or world_size is None:
        job = distributed.group()
        rank = job.rank if job is not None and rank is None else (rank or 0)
        world_size = job.world_size if job is not None and world_size is None else (world_size or 1)
    saved = distributed.saved_world_size(dict(manifest.metadata))
    if rank == 0:
        component, has_own = None, "rng" in components
        tree = {"rng": load("rng") if has_own else None}
        tree["dataloader"] = load("dataloader") if "dataloader" in components else None
    else:
        component = distributed.rank_component(rank)
        has_own = component in components
        tree = load(component) if has_own else {}
        if not isinstance(tree, dict):
            raise CheckpointCorrupt(f"{tree_files(root, component)[1]}: a rank's state must be a mapping")
        if not has_own and "dataloader" in components:
            tree["dataloader"] = load("dataloader")  # the same batch offset; the shuffle does not depend on it
            component = None
    if saved > 1 or world_size > 1:
        distributed.world_size_warning(root.name, saved=saved, now=world_size, rank=rank, has_own=has_own, epoch=epoch)
    exact_position = saved == world_size
    return _OwnState(
        root,
        component if has_own else None,
        tree.get("rng") if has_own else None,
        tree.get("dataloader") if exact_position else None,
    )


def load_component(state_dir: str | os.PathLike[str], name: str, *, map_location: str | torch.device = "cpu") -> Any:
    """Read one component tree (e.g. ``"model"`` for a plain state dict) from a verified checkpoint.

    Raises:
        CheckpointCorrupt: the checkpoint is damaged, or its manifest does not list the component's files.
    """
    manifest = read_manifest(state_dir, verify_hashes=True)
    _require_listed(manifest, Path(state_dir), [path.name for path in tree_files(state_dir, _component(name))])
    return read_flat_tree(state_dir, name, map_location=map_location)


# -- helpers --------------------------------------------------------------------------------------


def _qualname(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _state_of(obj: Any, name: str) -> tuple[Any, str]:
    if isinstance(obj, (list, tuple)):
        states = [_state_of(item, f"{name}.{i}") for i, item in enumerate(obj)]
        return [s for s, _ in states], ",".join(c for _, c in states)
    if not callable(getattr(obj, "state_dict", None)):
        raise InvalidArgument(f"{name}: {_qualname(obj)} has no state_dict() method")
    return obj.state_dict(), _qualname(obj)


def _unwrap(model: Any) -> Any:
    """The module whose state dict has no wrapper prefix (``module.``, ``_orig_mod.``)."""
    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _component(name: str) -> str:
    if not isinstance(name, str) or not _COMPONENT_NAME.match(name) or name in _RESERVED:
        raise InvalidArgument(f"invalid checkpoint component name {name!r:.80}")
    return name


def _require_listed(manifest: Manifest, root: Path, names: list[str], *, named_in: str = "") -> None:
    """Only files the manifest vouches for are read: an unlisted file was not hashed."""
    unlisted = sorted(name for name in names if name not in manifest.files)
    if unlisted:
        source = f"{root / named_in} names files that" if named_in else f"checkpoint {root} is incomplete:"
        raise CheckpointCorrupt(f"{source} its manifest does not list: {', '.join(unlisted)}")


def _read_state_file(root: Path) -> dict[str, Any]:
    """Parse ``training_state.json``; every field is checked, and ``classes`` is always a dict.

    Raises:
        CheckpointCorrupt: the file is missing, not JSON, or a field has another type or range.
    """
    path = root / STATE_FILE
    info = read_json(path)
    if not isinstance(info, dict) or info.get("format") != STATE_FORMAT or info.get("version") != STATE_VERSION:
        raise CheckpointCorrupt(f"{path} is not a {STATE_FORMAT} v{STATE_VERSION} file")
    problem = _state_file_problem(info)
    if problem is not None:
        raise CheckpointCorrupt(f"{path}: {problem}")
    return {**info, "classes": info.get("classes") or {}}


def _state_file_problem(info: dict[str, Any]) -> str | None:
    if not is_count(info.get("step")):
        return f"step must be an integer between 0 and {MAX_COUNT}"
    for name in ("epoch", "batch_in_epoch"):
        if info.get(name) is not None and not is_count(info[name]):
            return f"{name} must be null or an integer between 0 and {MAX_COUNT}"
    if info.get("run_id") is not None and not isinstance(info["run_id"], str):
        return "run_id must be null or a string"
    components = info.get("components")
    if not isinstance(components, list) or not all(
        isinstance(name, str) and _COMPONENT_NAME.match(name) and name not in _RESERVED for name in components
    ):
        return "components must be a list of component names (letters, digits, '_', '-', '.')"
    classes = info.get("classes") or {}
    if not isinstance(classes, dict) or not all(isinstance(v, str) for v in classes.values()):
        return "classes must map component names to class names"
    return None


def _load_loader_position(dataloader: Any, state: Any, source: str) -> None:
    """Hand the saved position to ``dataloader``; a position it finds malformed is reported against ``source``."""
    try:
        dataloader.load_state_dict(state)
    except CheckpointCorrupt as exc:
        message = str(exc)
        raise CheckpointCorrupt(message if message.startswith(source) else f"{source}: {message}") from exc


def _listing(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    shown = [f"    {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"    ... and {len(lines) - _MAX_LISTED} more")
    return [f"  {title} ({len(lines)}):", *shown]


def _load_model(model: torch.nn.Module, saved: Any, *, strict: bool, where: str) -> None:
    if not isinstance(saved, Mapping):
        raise CheckpointCorrupt(f"model state in {where} is not a mapping")
    current = model.state_dict()
    meta = [k for k, v in current.items() if isinstance(v, torch.Tensor) and v.is_meta]
    if meta:
        raise StateMismatch(
            f"cannot restore {where} into a model with tensors on the 'meta' device ({', '.join(meta[:5])}...); "
            "allocate it first, e.g. model.to_empty(device='cpu')"
        )
    mismatched = [
        f"{k}: saved {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in current.items()
        if k in saved
        and isinstance(v, torch.Tensor)
        and isinstance(saved[k], torch.Tensor)
        and saved[k].shape != v.shape
    ]
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"checkpoint {where} does not fit {_qualname(model)}:"]
        lines += _listing("shape mismatch", mismatched)
        lines += _listing("missing from the checkpoint", missing)
        lines += _listing("in the checkpoint but not in the model", unexpected)
        raise StateMismatch("\n".join(lines))
    model.load_state_dict(saved, strict=strict)


def _load_into(obj: Any, saved: Any, name: str, *, saved_class: str | None, strict: bool, where: str) -> None:
    if isinstance(obj, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(obj):
            count = len(saved) if isinstance(saved, list) else 1
            raise StateMismatch(f"{where} holds {count} {name} state(s) but {len(obj)} were given")
        classes = saved_class.split(",") if saved_class else [None] * len(obj)
        for i, (item, state) in enumerate(zip(obj, saved, strict=True)):
            _load_into(item, state, f"{name}.{i}", saved_class=classes[i], strict=strict, where=where)
        return
    if isinstance(saved, list):
        raise StateMismatch(f"{where} holds {len(saved)} {name} states but one object was given")
    if strict and saved_class and saved_class != _qualname(obj):
        raise StateMismatch(f"{name} in {where} was saved from {saved_class}, not {_qualname(obj)}")
    try:
        obj.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise StateMismatch(f"{name} state in {where} does not fit {_qualname(obj)}: {exc}") from exc
