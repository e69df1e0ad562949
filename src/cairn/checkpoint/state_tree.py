"""Nested training state as safetensors (tensors) plus a JSON structure file, restored without pickle.

A *state tree* is what ``state_dict()`` methods return: nested ``dict``/``OrderedDict``/``list``/``tuple``
containers whose leaves are tensors, numpy arrays and Python scalars. It is stored as two files:

- ``<name>.safetensors`` holds every tensor, under a key derived from its path in the tree (``fc.weight``,
  ``state.3.exp_avg``), so a flat model state dict reads back with plain ``safetensors.torch.load_file``;
- ``<name>.json`` records the structure with exact Python types: dict key types (``3`` vs ``"3"``),
  ``tuple`` vs ``list``, ``OrderedDict`` (and its ``_metadata``, which module versioning relies on),
  non-finite floats, and for each tensor its key, dtype, shape and whether it was an ``nn.Parameter``.

Plain JSON scalars (str, int, finite float, bool, null) stand for themselves; every other node is a JSON
object tagged with ``"$"``. Tensors are stored contiguous, so strides are not preserved (values are, bitwise).
Tensors that are the same view of the same storage (tied weights) are stored once and restored as one
tensor; partially overlapping views are stored as independent copies. Dtypes safetensors lacks (e.g.
``complex128``) are stored as their raw bytes and viewed back.

Reading treats the JSON as hostile even when its sha256 is right: every node is checked against what the
writer produces (node types, key types, tensor references, dtypes, shapes, nesting at most
:data:`MAX_DEPTH` containers deep), and anything else is :class:`CheckpointCorrupt` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from cairn.checkpoint._fs import read_json
from cairn.checkpoint.buffers import BufferPool
from cairn.checkpoint.copies import copy_all
from cairn.errors import CheckpointCorrupt, InvalidArgument

__all__ = [
    "FORMAT",
    "FlatTree",
    "flatten_state_tree",
    "load_state_tree",
    "read_flat_tree",
    "save_state_tree",
    "tree_files",
    "unflatten_state_tree",
    "write_flat_tree",
]

FORMAT = "cairn.state_tree"
VERSION = 1
MAX_DEPTH = 100
"""Deepest nesting of containers (dicts, lists, tuples) a state tree may have, when written and when read."""

_SAFETENSORS_DTYPES = frozenset(safetensors.torch._TYPES.values())
_RESERVED_KEYS = frozenset({"__metadata__"})
_KEY_SCALARS = (str, int, float, bool, type(None))


@dataclass
class FlatTree:
    """A state tree split into a JSON-able ``structure`` and a flat ``tensors`` mapping, ready to write.

    With ``copy=True`` (see :func:`flatten_state_tree`) the tensors are private CPU copies: the training
    loop may keep mutating its own tensors while this object is written from another thread. ``buffers``
    lists the memory those copies own (what can be recycled once written).
    """

    structure: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    _pending_events: list[Any] = field(default_factory=list, repr=False)
    buffers: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data held."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def wait_ready(self) -> None:
        """Block until asynchronous device-to-host copies (CUDA ``non_blocking``) have landed."""
        while self._pending_events:
            self._pending_events.pop().synchronize()


def tree_files(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """The (tensors, structure) file paths of tree ``name`` in ``directory``."""
    base = Path(directory)
    return base / f"{name}.safetensors", base / f"{name}.json"


def save_state_tree(tree: Any, directory: str | os.PathLike[str], *, name: str = "state") -> list[Path]:
    """Write ``tree`` as ``<name>.safetensors`` + ``<name>.json`` in ``directory`` (created if needed).

    Returns:
        The paths written.

    Raises:
        InvalidArgument: a leaf or key type is unsupported, or a tensor is on the ``meta`` device; the
            message names its path in the tree, e.g. ``optimizer.state.3.momentum_buffer``.
    """
    return write_flat_tree(flatten_state_tree(tree, root=name), directory, name)


def load_state_tree(
    directory: str | os.PathLike[str], *, name: str = "state", map_location: str | torch.device = "cpu"
) -> Any:
    """Read a tree written by :func:`save_state_tree`; tensors land on ``map_location``, numpy arrays on the CPU.

    Raises:
        CheckpointCorrupt: a file is missing or unreadable, or the two files do not agree.
    """
    return read_flat_tree(directory, name, map_location=map_location)


def flatten_state_tree(
    tree: Any, *, root: str = "state", copy: bool = False, buffers: BufferPool | None = None
) -> FlatTree:
    """Split ``tree`` into structure and tensors.

    Args:
        tree: the state to flatten.
        root: name shown first in error paths (``optimizer`` in ``optimizer.state.3.momentum_buffer``).
        copy: take private contiguous CPU copies of every tensor (a snapshot); CUDA tensors are copied
            ``non_blocking`` into pinned memory and :meth:`FlatTree.wait_ready` waits for them. Without
            ``copy`` the tensors are moved to the CPU and made contiguous only where needed.
        buffers: with ``copy``, copy into free buffers of this pool where one fits instead of allocating.
    """
    flattener = _Flattener(root, copy, buffers)
    structure = {"format": FORMAT, "version": VERSION, "tree": flattener.node(tree, ())}
    return FlatTree(structure, flattener.tensors, flattener.finish(), flattener.owned)


def write_flat_tree(flat: FlatTree, directory: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``flat`` as ``<name>.safetensors`` + ``<name>.json``; no fsync (the checkpoint writer does that)."""
    tensors_path, structure_path = tree_files(directory, name)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    flat.wait_ready()
    _write_tensors(flat.tensors, tensors_path)
    text = json.dumps(flat.structure, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    structure_path.write_text(text, encoding="utf-8")
    return [tensors_path, structure_path]


def read_flat_tree(directory: str | os.PathLike[str], name: str, *, map_location: str | torch.device = "cpu") -> Any:
    """Read tree ``name`` from ``directory`` (see :func:`load_state_tree`)."""
    tensors_path, structure_path = tree_files(directory, name)
    structure = read_json(structure_path)
    _check_header(structure, str(structure_path))
    try:
        tensors = safetensors.torch.load_file(str(tensors_path), device=str(torch.device(map_location)))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise CheckpointCorrupt(f"cannot read tensors {tensors_path}: {exc}") from exc
    return unflatten_state_tree(structure, tensors, source=str(structure_path))


def unflatten_state_tree(structure: dict[str, Any], tensors: dict[str, torch.Tensor], *, source: str = "") -> Any:
    """Rebuild the tree from a structure (as written by :func:`flatten_state_tree`) and its tensors."""
    where = source or "state structure"
    _check_header(structure, where)
    return _Decoder(tensors, where).node(structure.get("tree"))


def _check_header(structure: Any, where: str) -> None:
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        raise CheckpointCorrupt(f"{where} is not a {FORMAT} file")
    if structure.get("version") != VERSION:
        raise CheckpointCorrupt(
            f"{where} has format version {structure.get('version')!r:.40}; this cairn reads {VERSION}"
        )


# -- writing --------------------------------------------------------------------------------------


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The one place tensor bytes reach the disk (tests replace it to simulate a full disk)."""
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: Any, where: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise CheckpointCorrupt(f"{where}: unknown dtype {name!r}")
    return dtype


class _Flattener:
    def __init__(self, root: str, copy: bool, pool: BufferPool | None) -> None:
        self.root = root
        self.copy = copy
        self.pool = pool
        self.owned: list[torch.Tensor] = []  # snapshot buffers allocated or taken from the pool
        self.tensors: dict[str, torch.Tensor] = {}
        self._views: dict[tuple[Any, ...], str] = {}  # identity of a stored view -> its key
        self._storages: set[tuple[str, int]] = set()  # storages referenced by stored tensors (copy=False)
        self._devices: set[torch.device] = set()  # CUDA devices with in-flight non_blocking copies
        self._host_copies: list[tuple[torch.Tensor, torch.Tensor]] = []  # (snapshot buffer, CPU source), done at finish
        self._active: set[int] = set()  # containers being visited, to report cycles

    def where(self, path: tuple[Any, ...]) -> str:
        return ".".join([self.root, *map(str, path)]) if self.root else ".".join(map(str, path)) or "<root>"

    def finish(self) -> list[Any]:
        copy_all(self._host_copies)
        self._host_copies = []
        events = []
        for device in self._devices:
            with torch.cuda.device(device):
                event = torch.cuda.Event()
                event.record()
                events.append(event)
        return events

    def node(self, value: Any, path: tuple[Any, ...]) -> Any:
        kind = type(value)
        if value is None or kind in (str, bool, int):
            return value
        if kind is float:
            return value if math.isfinite(value) else {"$": "float", "value": repr(value)}
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if kind is np.ndarray or isinstance(value, np.generic):
            return self.ndarray(value, path)
        if kind in (dict, OrderedDict, list, tuple, torch.Size):
            if id(value) in self._active:
                raise InvalidArgument(f"{self.where(path)}: the state contains a reference cycle")
            if len(self._active) >= MAX_DEPTH:
                raise InvalidArgument(f"{self.where(path)}: the state nests containers more than {MAX_DEPTH} deep")
            self._active.add(id(value))
            try:
                return self.container(value, path)
            finally:
                self._active.discard(id(value))
        if kind is torch.dtype:
            return {"$": "dtype", "value": _dtype_name(value)}
        if kind is torch.device:
            return {"$": "device", "value": str(value)}
        raise InvalidArgument(
            f"{self.where(path)}: values of type {kind.__module__}.{kind.__qualname__} cannot be stored in a "
            "checkpoint; supported are tensors, numpy arrays, str, int, float, bool, None and "
            "dict/OrderedDict/list/tuple of those"
        )

    def container(self, value: Any, path: tuple[Any, ...]) -> dict[str, Any]:
        if isinstance(value, dict):
            items = [[self.key(k, path), self.node(v, (*path, k))] for k, v in value.items()]
            node: dict[str, Any] = {"$": "odict" if type(value) is OrderedDict else "dict", "items": items}
            metadata = getattr(value, "_metadata", None)  # set by nn.Module.state_dict(); versions per submodule
            if metadata is not None:
                node["metadata"] = self.node(metadata, (*path, "_metadata"))
            return node
        tag = "list" if type(value) is list else "tuple" if type(value) is tuple else "size"
        return {"$": tag, "items": [self.node(v, (*path, i)) for i, v in enumerate(value)]}

    def key(self, key: Any, path: tuple[Any, ...]) -> Any:
        if type(key) in _KEY_SCALARS or (type(key) is tuple and all(type(k) in _KEY_SCALARS for k in key)):
            return self.node(key, path)
        raise InvalidArgument(
            f"{self.where(path)}: dict keys of type {type(key).__qualname__} cannot be stored in a checkpoint "
            "(use str, int, float, bool, None or tuples of those)"
        )

    def new_key(self, path: tuple[Any, ...]) -> str:
        base = ".".join(map(str, path)) or (self.root or "tensor")
        key, n = base, 1
        while key in self.tensors or key in _RESERVED_KEYS:
            n += 1
            key = f"{base}#{n}"
        return key

    def tensor(self, value: torch.Tensor, path: tuple[Any, ...], *, dedupe: bool = True) -> dict[str, Any]:
        where = self.where(path)
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise InvalidArgument(
                f"{where}: tensor subclass {type(value).__qualname__} cannot be stored in a checkpoint; "
                "convert it to a plain torch.Tensor (or materialise lazy parameters by running the model once)"
            )
        if value.is_meta:
            raise InvalidArgument(
                f"{where}: tensor is on the 'meta' device and holds no data; materialise the model "
                "(e.g. model.to_empty(device=...) and load real weights) before checkpointing"
            )
        if value.layout != torch.strided or value.is_quantized:
            raise InvalidArgument(f"{where}: only dense tensors can be stored (layout {value.layout}); use .to_dense()")
        node: dict[str, Any] = {"$": "tensor", "dtype": _dtype_name(value.dtype), "shape": list(value.shape)}
        if type(value) is torch.nn.Parameter:
            node["parameter"] = True
        if value.requires_grad:
            node["requires_grad"] = True
        ident = None
        if dedupe and value.numel() > 0:
            storage = value.untyped_storage()
            ident = (
                str(value.device),
                storage.data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                value.stride(),
                value.dtype,
            )
            if ident in self._views:
                node["key"] = self._views[ident]
                return node
        data = self.store(value.detach())
        if value.dtype not in _SAFETENSORS_DTYPES:
            data = data.reshape(-1).view(torch.uint8)
            node["encoding"] = "bytes"
        key = self.new_key(path)
        self.tensors[key] = data
        if ident is not None:
            self._views[ident] = key
        node["key"] = key
        return node

    def store(self, data: torch.Tensor) -> torch.Tensor:
        if self.copy:
            pinned = data.is_cuda
            out = self.pool.take(data.shape, data.dtype, pinned=pinned) if self.pool is not None else None
            if out is None:
                out = torch.empty(data.shape, dtype=data.dtype, pin_memory=pinned)
            if pinned:
                out.copy_(data, non_blocking=True)
                self._devices.add(data.device)
            elif data.device.type == "cpu":
                self._host_copies.append((out, data))
            else:
                out.copy_(data)
            self.owned.append(out)
            return out
        data = data.to("cpu")
        if data.numel() == 0:
            return data.contiguous()
        storage = (str(data.device), data.untyped_storage().data_ptr())
        if not data.is_contiguous() or storage in self._storages:
            # safetensors refuses tensors sharing memory; overlapping views are stored as copies.
            return data.clone(memory_format=torch.contiguous_format)
        self._storages.add(storage)
        return data

    def ndarray(self, value: np.ndarray | np.generic, path: tuple[Any, ...]) -> dict[str, Any]:
        where = self.where(path)
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.fields is not None or array.dtype.kind in "SUVMm":
            raise InvalidArgument(f"{where}: numpy arrays of dtype {array.dtype} cannot be stored in a checkpoint")
        native = array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
        if not native.flags.c_contiguous:
            native = np.ascontiguousarray(native)
        try:
            tensor = torch.from_numpy(native)
        except TypeError as exc:
            raise InvalidArgument(f"{where}: numpy dtype {array.dtype} has no torch equivalent ({exc})") from exc
        # No aliasing detection for arrays: ``native`` may be a temporary whose address gets reused.
        node = self.tensor(tensor, path, dedupe=False)
        node.update({"$": "ndarray", "numpy_dtype": array.dtype.str})
        if isinstance(value, np.generic):
            node["scalar"] = True
        return node


# -- reading --------------------------------------------------------------------------------------


class _Decoder:
    """Rebuilds a tree from its structure, accepting only the nodes :class:`_Flattener` writes."""

    def __init__(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        self.tensors = tensors
        self.where = where
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def fail(self, message: str) -> CheckpointCorrupt:
        return CheckpointCorrupt(f"{self.where}: {message}")

    def node(self, node: Any, depth: int = 0) -> Any:
        if node is None or type(node) in (str, bool, int, float):
            return node
        if not isinstance(node, dict) or not isinstance(node.get("$"), str):
            raise self.fail(f"unexpected structure node {node!r:.80}")
        kind = node["$"]
        if kind in _CONTAINERS:
            if depth >= MAX_DEPTH:
                raise self.fail(f"containers nested more than {MAX_DEPTH} deep")
            return self.container(node, kind, depth + 1)
        if kind == "float":
            value = node.get("value")
            if value not in ("nan", "inf", "-inf"):
                raise self.fail(f"bad float {value!r:.40}")
            return float(value)
        if kind == "tensor":
            return self.tensor(node)
        if kind == "ndarray":
            return self.ndarray(node)
        if kind == "dtype":
            return _dtype_from_name(node.get("value"), self.where)
        if kind == "device":
            return self.device(node.get("value"))
        raise self.fail(f"unknown node type {kind!r:.40}")

    def container(self, node: dict[str, Any], kind: str, depth: int) -> Any:
        items = node.get("items")
        if not isinstance(items, list):
            raise self.fail(f"{kind} node without items")
        if kind in ("dict", "odict"):
            return self.mapping(node, items, kind, depth)
        values = [self.node(item, depth) for item in items]
        if kind == "size":
            if not all(type(v) is int and v >= 0 for v in values):
                raise self.fail(f"torch.Size of {values!r:.80}: its items must be integers >= 0")
            return torch.Size(values)
        return values if kind == "list" else tuple(values)

    def mapping(self, node: dict[str, Any], items: list[Any], kind: str, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = OrderedDict() if kind == "odict" else {}
        for pair in items:
            if not isinstance(pair, list) or len(pair) != 2:
                raise self.fail("malformed dict item")
            key = self.node(pair[0], depth)
            if not _is_key(key):
                raise self.fail(f"dict key {key!r:.80} is not a str, int, float, bool, None or a tuple of those")
            result[key] = self.node(pair[1], depth)
        if "metadata" in node:
            if kind != "odict":
                raise self.fail("metadata on a plain dict (only an OrderedDict state dict carries it)")
            result._metadata = self.module_metadata(self.node(node["metadata"], depth))  # type: ignore[attr-defined]
        return result

    def module_metadata(self, metadata: Any) -> Any:
        """``nn.Module.state_dict()``'s ``_metadata``: submodule prefix -> {"version": int, ...}."""
        fine = isinstance(metadata, dict) and all(
            isinstance(prefix, str)
            and isinstance(entry, dict)
            and all(isinstance(name, str) for name in entry)
            and (entry.get("version") is None or type(entry.get("version")) is int)
            for prefix, entry in metadata.items()
        )
        if not fine:
            raise self.fail(f"state dict metadata {metadata!r:.80} is not a mapping of prefix to version info")
        return metadata

    def device(self, value: Any) -> torch.device:
        if not isinstance(value, str):
            raise self.fail(f"bad device {value!r:.40}")
        try:
            return torch.device(value)
        except (RuntimeError, ValueError) as exc:
            raise self.fail(f"bad device {value!r:.40}") from exc

    def raw(self, node: dict[str, Any]) -> torch.Tensor:
        """The stored tensor ``node`` refers to, checked against the dtype and shape the node claims."""
        key = node.get("key")
        if not isinstance(key, str) or key not in self.tensors:
            raise self.fail(f"tensor {key!r:.80} is missing from the tensors file")
        tensor = self.tensors[key]
        dtype = _dtype_from_name(node.get("dtype"), self.where)
        shape = node.get("shape")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise self.fail(f"tensor {key!r:.80} has no valid shape (a list of integers >= 0): {shape!r:.80}")
        encoding = node.get("encoding")
        if encoding is None:
            if tensor.dtype != dtype or list(tensor.shape) != shape:
                raise self.fail(
                    f"tensor {key!r:.80} is {tensor.dtype} {list(tensor.shape)} but the structure says "
                    f"{dtype} {shape!r:.80}"
                )
            return tensor
        if encoding != "bytes":
            raise self.fail(f"tensor {key!r:.80} has an unknown encoding {encoding!r:.40}")
        nbytes = math.prod(shape) * dtype.itemsize
        if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.numel() != nbytes:
            raise self.fail(f"tensor {key!r:.80} should hold the {nbytes} raw bytes of a {dtype} {shape!r:.80}")
        return tensor.view(dtype).reshape(shape)

    def tensor(self, node: dict[str, Any]) -> torch.Tensor:
        parameter, grad = node.get("parameter", False), node.get("requires_grad", False)
        if type(parameter) is not bool or type(grad) is not bool:
            raise self.fail(f"tensor {node.get('key')!r:.80}: parameter and requires_grad must be booleans")
        tensor = self.raw(node)
        if grad and not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
            raise self.fail(f"tensor {node.get('key')!r:.80} of dtype {tensor.dtype} cannot require gradients")
        cache_key = (node["key"], tensor.dtype, tuple(tensor.shape), parameter, grad)
        if cache_key not in self._cache:
            if parameter:
                tensor = torch.nn.Parameter(tensor, requires_grad=grad)
            elif grad:
                tensor = tensor.detach().requires_grad_(True)
            self._cache[cache_key] = tensor
        return self._cache[cache_key]

    def ndarray(self, node: dict[str, Any]) -> np.ndarray | np.generic:
        try:
            array = self.raw(node).detach().cpu().numpy()
        except TypeError as exc:  # a torch dtype numpy lacks (bfloat16): the writer never stores one as ndarray
            raise self.fail(f"array {node.get('key')!r:.80} has a dtype numpy cannot hold") from exc
        dtype = self.numpy_dtype(node.get("numpy_dtype"), array.dtype)
        if array.dtype != dtype:
            array = array.astype(dtype)
        scalar = node.get("scalar", False)
        if type(scalar) is not bool or (scalar and array.ndim != 0):
            raise self.fail(f"numpy scalar flag {scalar!r:.20} does not fit an array of shape {list(array.shape)}")
        return array[()] if scalar else array

    def numpy_dtype(self, name: Any, stored: np.dtype[Any]) -> np.dtype[Any]:
        """The dtype named in the structure: a plain numeric dtype of the stored array's kind and size."""
        try:
            dtype = np.dtype(name) if isinstance(name, str) else None
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in _NUMPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise self.fail(f"bad numpy dtype {name!r:.40}")
        if dtype.newbyteorder("=") != stored:
            raise self.fail(f"numpy dtype {name!r:.40} does not match the stored {stored}")
        return dtype


_CONTAINERS = frozenset({"dict", "odict", "list", "tuple", "size"})
_NUMPY_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex: what the writer stores


def _is_key(key: Any) -> bool:
    """Whether ``key`` is a dict key the writer accepts (see ``_Flattener.key``)."""
    return type(key) in _KEY_SCALARS or (type(key) is tuple and all(type(k) in _KEY_SCALARS for k in key))
