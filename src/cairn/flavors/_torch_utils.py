"""A module's weights as one safetensors file plus a JSON index, and back into a module, ties included.

Saving walks every parameter and buffer *slot* of the module tree (``named_modules(remove_duplicate=False)``,
so a shared submodule is seen under each of its names). A tensor object met in several slots (tied
weights, a shared submodule) is written once, under its first name; the others are recorded in the
index as aliases of it and get the very same tensor object back on load. safetensors refuses tensors
that share memory, so distinct tensors that are views of one storage are written as independent copies
(the values survive, the memory sharing does not). Non-contiguous tensors are written contiguous.

The weights file is written by :func:`safetensors.torch.save_file` while a second thread computes its
sha256 from the tensors in memory (the file layout is predicted, then checked against the header
actually written), so the file is not read back to hash it.

Index (``weights.json``)::

    {"format": "cairn.torch_weights", "version": 1, "weights_file": "model.safetensors",
     "slots": [{"name": "fc.weight", "kind": "parameter", "requires_grad": true, "shape": [3, 4]},
               {"name": "head.weight", "kind": "parameter", "alias_of": "emb.weight", ...},
               {"name": "bn.running_mean", "kind": "buffer", "persistent": true, ...}]}
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import struct
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from cairn import safety
from cairn.errors import InvalidArgument, ModelIntegrityError, StateMismatch, UnsafeModel

__all__ = [
    "INDEX_FORMAT",
    "Slot",
    "WeightsDigest",
    "WeightsIndex",
    "as_written",
    "build_on_meta",
    "collect_weights",
    "decode_arguments",
    "encode_arguments",
    "import_target",
    "meta_stub",
    "meta_tensors_left",
    "read_index",
    "restore_weights",
    "slots_of",
    "structure_mismatch",
    "target_name",
    "write_weights",
]

INDEX_FORMAT = "cairn.torch_weights"
INDEX_VERSION = 1

# safetensors writes tensors sorted by dtype (this order) and then by name; see _predict_layout.
_DTYPE_ORDER: list[tuple[str, torch.dtype]] = [
    (name, getattr(torch, attr))
    for name, attr in (
        ("U64", "uint64"),
        ("I64", "int64"),
        ("F64", "float64"),
        ("C64", "complex64"),
        ("F32", "float32"),
        ("U32", "uint32"),
        ("I32", "int32"),
        ("BF16", "bfloat16"),
        ("F16", "float16"),
        ("U16", "uint16"),
        ("I16", "int16"),
        ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
        ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2"),
        ("I8", "int8"),
        ("U8", "uint8"),
        ("BOOL", "bool"),
    )
    if hasattr(torch, attr)
]
_DTYPE_RANK = {dtype: (rank, name) for rank, (name, dtype) in enumerate(_DTYPE_ORDER)}
_SAFETENSORS_DTYPES = frozenset(dtype for dtype in safetensors.torch._TYPES.values() if dtype is not None)
_METADATA = {"format": "pt"}


# -- the index ----------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One parameter or buffer slot of the module tree, by its dotted name."""

    name: str
    kind: str  # "parameter" or "buffer"
    shape: list[int]
    dtype: str
    requires_grad: bool = False
    persistent: bool = True
    alias_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind, "shape": self.shape, "dtype": self.dtype}
        if self.kind == "parameter":
            entry["requires_grad"] = self.requires_grad
        else:
            entry["persistent"] = self.persistent
        if self.alias_of is not None:
            entry["alias_of"] = self.alias_of
        return entry


@dataclass
class WeightsIndex:
    """Every slot in module order; ``tensors`` (only when saving) maps stored names to CPU tensors."""

    slots: list[Slot]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_json(self, weights_file: str) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "weights_file": weights_file,
            "slots": [slot.to_json() for slot in self.slots],
        }

    @property
    def aliases(self) -> dict[str, str]:
        return {slot.name: slot.alias_of for slot in self.slots if slot.alias_of is not None}


def read_index(path: Path) -> WeightsIndex:
    """Read ``weights.json``.

    Raises:
        ModelIntegrityError: the file is not a cairn weights index.
    """
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"cannot read the weights index {path}: {exc}") from exc
    if not isinstance(content, dict) or content.get("format") != INDEX_FORMAT:
        raise ModelIntegrityError(f"{path} is not a {INDEX_FORMAT} file")
    if content.get("version") != INDEX_VERSION:
        raise ModelIntegrityError(f"{path} has version {content.get('version')!r}; this cairn reads {INDEX_VERSION}")
    slots = []
    for entry in content.get("slots") or []:
        try:
            slots.append(
                Slot(
                    name=str(entry["name"]),
                    kind="parameter" if entry["kind"] == "parameter" else "buffer",
                    shape=[int(d) for d in entry["shape"]],
                    dtype=str(entry["dtype"]),
                    requires_grad=bool(entry.get("requires_grad", False)),
                    persistent=bool(entry.get("persistent", True)),
                    alias_of=str(entry["alias_of"]) if entry.get("alias_of") is not None else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelIntegrityError(f"{path}: malformed slot entry {entry!r:.120}") from exc
    return WeightsIndex(slots)


# -- collecting -----------------------------------------------------------------------------------------


def slots_of(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, str, torch.Tensor]]:
    """(dotted name, owning module, local name, kind, tensor) of every non-None parameter and buffer slot."""
    for prefix, module in model.named_modules(remove_duplicate=False):
        base = f"{prefix}." if prefix else ""
        for local, param in module._parameters.items():
            if param is not None:
                yield base + local, module, local, "parameter", param
        for local, buffer in module._buffers.items():
            if buffer is not None:
                yield base + local, module, local, "buffer", buffer


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _storage_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def _view_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (*_storage_key(tensor), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _check_storable(name: str, kind: str, tensor: torch.Tensor) -> None:
    if isinstance(tensor, nn.parameter.UninitializedTensorMixin):  # type: ignore[attr-defined]
        raise InvalidArgument(
            f"{kind} {name!r} is not initialized yet (a lazy module); run the model once on real input before saving it"
        )
    if tensor.is_meta:
        raise InvalidArgument(
            f"cannot save the model: {kind} {name!r} is on the 'meta' device and holds no data. "
            "Materialise the model first (e.g. model.to_empty(device='cpu') and load real weights, or "
            "build it outside a torch.device('meta') context)"
        )
    if type(tensor) not in (torch.Tensor, nn.Parameter) and not isinstance(tensor, nn.Parameter):
        raise InvalidArgument(
            f"{kind} {name!r} is a {type(tensor).__qualname__}, a tensor subclass cairn cannot store as "
            "safetensors; convert it to a plain tensor first"
        )
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise InvalidArgument(f"{kind} {name!r} is not a dense tensor (layout {tensor.layout}); use .to_dense()")
    if tensor.dtype not in _SAFETENSORS_DTYPES:
        raise InvalidArgument(f"{kind} {name!r} has dtype {tensor.dtype}, which safetensors cannot store")


def collect_weights(model: nn.Module) -> WeightsIndex:
    """Every parameter and buffer of ``model`` (tied ones as aliases), with CPU tensors ready to write.

    Raises:
        InvalidArgument: ``model`` is not an ``nn.Module``, or a tensor is on the ``meta`` device, not
            initialised (lazy modules), a sparse/quantized tensor, a tensor subclass, or of a dtype
            safetensors lacks; the message names it.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgument(f"expected a torch.nn.Module, got {type(model).__name__}")
    slots: list[Slot] = []
    tensors: dict[str, torch.Tensor] = {}
    by_object: dict[int, str] = {}
    by_view: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[Any, ...]] = set()
    for name, module, local, kind, tensor in slots_of(model):
        _check_storable(name, kind, tensor)
        slot = Slot(
            name=name,
            kind=kind,
            shape=list(tensor.shape),
            dtype=_dtype_name(tensor.dtype),
            requires_grad=bool(tensor.requires_grad) if kind == "parameter" else False,
            persistent=local not in module._non_persistent_buffers_set if kind == "buffer" else True,
        )
        owner = by_object.get(id(tensor))
        if owner is None and tensor.numel() > 0:
            owner = by_view.get(_view_key(tensor))
        if owner is not None:
            slot.alias_of = owner
            slots.append(slot)
            continue
        data = tensor.detach()
        if data.device.type != "cpu":
            data = data.to("cpu")
        if data.numel() > 0:
            key = _storage_key(data)
            if not data.is_contiguous() or key in storages:
                data = data.contiguous() if not data.is_contiguous() else data.clone()
            storages.add(_storage_key(data))
        tensors[name] = data
        by_object[id(tensor)] = name
        if tensor.numel() > 0:
            by_view[_view_key(tensor)] = name
        slots.append(slot)
    return WeightsIndex(slots, tensors)


# -- writing (sha256 computed alongside) --------------------------------------------------------------


def _bytes_of(tensor: torch.Tensor) -> Any:
    """A zero-copy byte view of a contiguous CPU tensor, for hashing."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _predict_layout(tensors: dict[str, torch.Tensor]) -> tuple[bytes, list[torch.Tensor]] | None:
    """The header bytes safetensors will write and the tensors in file order, or ``None`` if unsure."""
    if sys.byteorder != "little" or any(t.dtype not in _DTYPE_RANK for t in tensors.values()):
        return None
    ordered = sorted(tensors.items(), key=lambda item: (_DTYPE_RANK[item[1].dtype][0], item[0]))
    header: dict[str, Any] = {"__metadata__": _METADATA}
    offset = 0
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_RANK[tensor.dtype][1],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, [t for _, t in ordered]


def _written_header(path: Path, length: int) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(length)


class WeightsDigest:
    """The sha256 of the safetensors file ``tensors`` will make, computed from memory in a background thread.

    Started as soon as the tensors are known (before the signature's forward pass, the export, the
    write), so hashing overlaps all of that: ``sha256`` and the write both release the GIL. The file
    layout is predicted (see :func:`_predict_layout`) and checked against the header actually written;
    :meth:`result` falls back to hashing the file if they differ, so it always returns the digest of
    the file on disk. The tensors must not change until :meth:`result` returns.

    While hashing, it is a worker of the background service (:mod:`cairn.background`), so the exit drain
    waits for it. (Not a task of :func:`cairn.background.submit`: that thread runs tasks one after the other,
    and a task that logs a model would wait for its own digest queued behind it.)
    """

    name = "weights sha256"

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        from cairn import background

        self.phase = background.Phase.CHECKPOINTS
        self._predicted = _predict_layout(tensors)
        self._outcome: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        if self._predicted is not None:
            self._thread = threading.Thread(target=self._run, name="cairn-weights-sha256", daemon=True)
            self._thread.start()
            background.register(self)

    def _run(self) -> None:
        assert self._predicted is not None
        header, ordered = self._predicted
        try:
            hasher = hashlib.sha256(header)
            for tensor in ordered:
                if tensor.numel():
                    hasher.update(_bytes_of(tensor))
            self._outcome["sha256"] = hasher.hexdigest()
        except Exception as exc:  # result() falls back to hashing the file
            self._outcome["error"] = exc

    @property
    def done(self) -> bool:
        """Whether hashing has finished (or never started)."""
        return self._thread is None or not self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            from cairn import background

            background.unregister(self)

    def drain(self, timeout: float | None) -> bool:
        """As a worker of the background service: wait for the hash, at most ``timeout`` seconds."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    def close(self) -> None:
        self.wait()

    def raise_errors(self) -> None:
        """A failed hash is not an error: :meth:`result` hashes the file instead."""

    def result(self, path: Path, file_sha256: Callable[[Path], str]) -> str:
        """The sha256 of the file ``path`` written from the tensors (waits for the thread)."""
        self.wait()
        predicted = self._predicted
        trusted = predicted is not None and "sha256" in self._outcome
        if trusted and predicted is not None and _written_header(path, len(predicted[0])) == predicted[0]:
            return str(self._outcome["sha256"])
        return file_sha256(path)


def write_weights(
    tensors: dict[str, torch.Tensor],
    path: Path,
    *,
    file_sha256: Callable[[Path], str],
    digest: WeightsDigest | None = None,
) -> str:
    """Write ``tensors`` with :func:`safetensors.torch.save_file`; return the file's sha256 (hex).

    Args:
        tensors: contiguous CPU tensors by name (from :func:`collect_weights`).
        path: the file to write.
        file_sha256: hashes a file; used only if the digest computed from memory cannot be trusted.
        digest: a :class:`WeightsDigest` of ``tensors`` started earlier; one is started now if omitted,
            so hashing runs alongside the write either way.
    """
    digest = digest if digest is not None else WeightsDigest(tensors)
    try:
        safetensors.torch.save_file(tensors, str(path), metadata=_METADATA)
    finally:
        digest.wait()
    return digest.result(path, file_sha256)


# -- restoring ----------------------------------------------------------------------------------------------


def _describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing from the saved weights: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
        more = " ..." if len(unexpected) > 20 else ""
        parts.append(f"saved but not in the module: {', '.join(unexpected[:20])}{more}")
    if shapes:
        parts.append(f"shape differs: {'; '.join(shapes[:20])}{' ...' if len(shapes) > 20 else ''}")
    return "; ".join(parts)


def structure_mismatch(model: nn.Module, index: WeightsIndex) -> str | None:
    """What differs between ``model``'s slots and the saved ones (names and shapes), or ``None``."""
    saved = {slot.name: slot for slot in index.slots}
    present = {name: tensor for name, _m, _l, _k, tensor in slots_of(model)}
    missing = sorted(set(present) - set(saved))
    unexpected = sorted(set(saved) - set(present))
    shapes = [
        f"{name}: saved {saved[name].shape}, module {list(present[name].shape)}"
        for name in sorted(set(saved) & set(present))
        if list(present[name].shape) != saved[name].shape
    ]
    if missing or unexpected or shapes:
        return _describe_mismatch(missing, unexpected, shapes)
    return None


def restore_weights(
    model: nn.Module,
    index: WeightsIndex,
    tensors: dict[str, torch.Tensor],
    *,
    where: str,
    strict: bool = True,
) -> None:
    """Put the saved tensors into ``model``'s slots, assigning (not copying) them; aliases get the same object.

    Args:
        model: the module, typically built on the ``meta`` device.
        index: the saved slots.
        tensors: the stored tensors by name (as read from the safetensors file).
        where: the model's location, for messages.
        strict: every slot of ``model`` must be in the index and vice versa. Without it, only
            slots present in both are assigned (an exported program's module may register fewer).

    Raises:
        StateMismatch: the module's slots and the saved ones differ (names or shapes); the message lists them.
        ModelIntegrityError: the weights file lacks a tensor the index names.
    """
    saved = {slot.name: slot for slot in index.slots}
    present = list(slots_of(model))
    if strict:
        problem = structure_mismatch(model, index)
        if problem is not None:
            raise StateMismatch(f"the saved weights do not fit the module built for the model at {where}: {problem}")
    objects: dict[str, torch.Tensor] = {}

    def build(slot: Slot) -> torch.Tensor:
        if slot.name in objects:
            return objects[slot.name]
        if slot.alias_of is not None:
            owner = saved.get(slot.alias_of)
            if owner is None:
                raise ModelIntegrityError(f"{where}: {slot.name!r} is an alias of unknown slot {slot.alias_of!r}")
            value = build(owner)
        else:
            data = tensors.get(slot.name)
            if data is None:
                raise ModelIntegrityError(f"{where}: the weights file has no tensor {slot.name!r}")
            if list(data.shape) != slot.shape:
                raise ModelIntegrityError(
                    f"{where}: tensor {slot.name!r} is {list(data.shape)} in the weights file, "
                    f"{slot.shape} in the index"
                )
            value = data
            if slot.kind == "parameter":
                value = nn.Parameter(data, requires_grad=slot.requires_grad)
        objects[slot.name] = value
        return value

    for name, module, local, kind, _tensor in present:
        slot = saved.get(name)
        if slot is None:
            continue
        value = build(slot)
        if kind == "parameter":
            if not isinstance(value, nn.Parameter):
                value = nn.Parameter(value, requires_grad=slot.requires_grad)
            module._parameters[local] = value
        else:
            module._buffers[local] = value


def meta_tensors_left(model: nn.Module) -> list[str]:
    """Names of tensors still on the ``meta`` device: slots, and plain tensor attributes of submodules."""
    left = [name for name, _m, _l, _k, tensor in slots_of(model) if tensor.is_meta]
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                left.append(f"{prefix}.{attr}" if prefix else attr)
    return left


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Call ``build`` with ``meta`` as the default device, so no memory is allocated or initialised."""
    with torch.device("meta"):
        return build()


# -- importable classes and factories ------------------------------------------------------------------------


def target_name(obj: Any) -> str | None:
    """``"pkg.mod:Qual.name"`` if ``obj`` (a class or function) can be found back by that name, else ``None``.

    Only already-imported modules are consulted (``obj``'s own module is, since ``obj`` exists).
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module == "__main__" or module.split(".")[-1] == "__main__" or "<" in qualname:
        return None
    loaded = sys.modules.get(module)
    if loaded is None:
        return None
    try:
        found = _static_lookup(loaded, qualname)
    except AttributeError:
        return None
    return f"{module}:{qualname}" if found is obj else None


def _static_lookup(module: types.ModuleType, qualname: str) -> Any:
    """``module.<qualname>`` without running code: no module ``__getattr__``, descriptors or metaclass hooks."""
    obj: Any = module
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part)
    return obj


def _split_target(text: object, what: str) -> tuple[str, str]:
    if not isinstance(text, str) or text.count(":") != 1:
        raise InvalidArgument(f"{what} must look like 'package.module:Name', got {text!r}")
    module, qualname = text.split(":")
    identifiers = [*module.split("."), *qualname.split(".")]
    if not all(part.isidentifier() and not part.startswith("__") for part in identifiers):
        raise InvalidArgument(f"{what} {text!r} must name a module and an attribute with plain Python identifiers")
    return module, qualname


def _module_of_target(module_name: str, what: str, *, caller_named: bool, allow_pickle: bool | None) -> Any:
    if caller_named:  # the caller passed this name (or the object itself) to a save call
        return importlib.import_module(module_name)
    return safety.import_named_module(module_name, what=what, allow_pickle=allow_pickle)


def _check_class(obj: Any, text: str) -> None:
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UnsafeModel(f"refusing module_class {text!r}: it is not a torch.nn.Module subclass")


def _check_factory(obj: Any, text: str, module_name: str, qualname: str) -> None:
    if not isinstance(obj, types.FunctionType) or obj.__module__ != module_name or obj.__qualname__ != qualname:
        raise UnsafeModel(
            f"refusing model_factory {text!r}: it must be a plain Python function defined in {module_name!r} "
            "itself (not a builtin, class, method or a function imported from elsewhere)"
        )


def import_target(text: object, *, kind: str, caller_named: bool = False, allow_pickle: bool | None = None) -> Any:
    """The module class (``kind="class"``) or factory function (``kind="factory"``) named ``"pkg.mod:Name"``.

    The rule for a name read from a model file (``caller_named=False``), checked before anything is called:

    - the module is imported only as :func:`cairn.safety.import_named_module` allows: already imported,
      trusted by the caller (``trusted_modules``), or under the pickle opt-in;
    - the name is looked up without running code (no module ``__getattr__``, no descriptors);
    - a class must be a ``torch.nn.Module`` subclass (calling it runs a module constructor);
    - a factory must be a plain Python function defined in that module, and the caller must trust the
      module (:func:`cairn.safety.module_trusted`): a factory is called with keyword arguments from the
      file, and an arbitrary function can do anything with them (``sympy.sympify`` evaluates a string).

    With ``caller_named=True`` (a save call: the caller chose the name) only the shape checks apply.

    Raises:
        InvalidArgument: the name is malformed.
        UnsafeModel: the module may not be imported, or the target is refused; the message says how to allow it.
        ImportError: the module cannot be imported or has no such attribute.
    """
    what = "module_class" if kind == "class" else "model_factory"
    module_name, qualname = _split_target(text, what)
    described = f"the {what} {text!r}"
    module = _module_of_target(module_name, described, caller_named=caller_named, allow_pickle=allow_pickle)
    try:
        obj = _static_lookup(module, qualname)
    except AttributeError:
        raise ImportError(f"{what} {text!r}: module {module_name!r} has no attribute {qualname!r}") from None
    if kind == "class":
        _check_class(obj, str(text))
        return obj
    _check_factory(obj, str(text), module_name, qualname)
    if not caller_named and not safety.module_trusted(module_name, allow_pickle):
        raise UnsafeModel(
            f"refusing model_factory {text!r}: cairn calls a function named by a model file (with keyword "
            f"arguments from that file) only from a module the caller trusts. {safety.how_to_trust(module_name)}"
        )
    return obj


#: The key of a constructor argument recorded as a typed dataclass (see :func:`encode_arguments`).
DATACLASS_KEY = "__dataclass__"
_MAX_DEPTH = 32


def encode_arguments(value: Any, owner: str, *, where: str = "init_kwargs", depth: int = 0) -> Any:
    """``value`` with every dataclass instance as ``{"__dataclass__": "mod:Qual", "fields": {...}}``.

    Only dataclasses defined in ``owner`` (the module of the model class or factory) are accepted, since
    only those are rebuilt at load (:func:`decode_arguments`); ``init=False`` fields are left out.

    Raises:
        InvalidArgument: a dataclass from another module, or one that cannot be found by its name.
    """
    import dataclasses

    if depth > _MAX_DEPTH:
        raise InvalidArgument(f"{where} nest deeper than {_MAX_DEPTH} levels")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = target_name(type(value))
        if name is None or name.split(":")[0] != owner:
            raise InvalidArgument(
                f"{where} holds a {type(value).__qualname__} dataclass from {type(value).__module__!r}; a dataclass "
                f"argument is recorded by name and rebuilt at load only if it is defined in the model's own module "
                f"{owner!r}. Pass its fields as a dict, or define it there"
            )
        fields = {
            f.name: encode_arguments(getattr(value, f.name), owner, where=f"{where}.{f.name}", depth=depth + 1)
            for f in dataclasses.fields(value)
            if f.init
        }
        return {DATACLASS_KEY: name, "fields": fields}
    if isinstance(value, Mapping):
        return {k: encode_arguments(v, owner, where=f"{where}[{k!r}]", depth=depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_arguments(v, owner, where=f"{where}[{i}]", depth=depth + 1) for i, v in enumerate(value)]
    return value


def _rebuild_dataclass(node: dict[str, Any], owner: str, where: str, depth: int) -> Any:
    import dataclasses

    name, fields = node.get(DATACLASS_KEY), node.get("fields")
    if (
        set(node) != {DATACLASS_KEY, "fields"}
        or not isinstance(fields, dict)
        or not all(isinstance(k, str) for k in fields)
    ):
        raise InvalidArgument(
            f"{where}: a typed argument must be {{{DATACLASS_KEY!r}: 'mod:Class', 'fields': {{...}}}}"
        )
    module_name, qualname = _split_target(name, "a dataclass argument")
    module = sys.modules.get(module_name)
    cls = None
    if module_name == owner and module is not None:
        with contextlib.suppress(AttributeError):
            cls = _static_lookup(module, qualname)
    if not (
        isinstance(cls, type)
        and dataclasses.is_dataclass(cls)
        and cls.__module__ == owner
        and cls.__qualname__ == qualname
        and "__dataclass_fields__" in vars(cls)
    ):
        raise UnsafeModel(
            f"refusing the constructor argument {where} typed {name!r}: cairn rebuilds only dataclasses defined "
            f"in the model's own module {owner!r}"
        )
    values = {k: decode_arguments(v, owner, where=f"{where}.{k}", depth=depth + 1) for k, v in fields.items()}
    try:
        return cls(**values)
    except Exception as exc:
        raise InvalidArgument(f"{where}: {name}(**fields) failed: {type(exc).__name__}: {exc}") from exc


def decode_arguments(value: Any, owner: str, *, where: str = "init_kwargs", depth: int = 0) -> Any:
    """JSON constructor arguments with each typed dataclass node rebuilt (the inverse of :func:`encode_arguments`).

    A node ``{"__dataclass__": "mod:Qual", "fields": {...}}`` from a model file is rebuilt only if
    ``mod`` is ``owner`` (the module of the model class or factory, already imported and allowed under
    the same rule as the class, :func:`import_target`) and ``Qual``, looked up without running code, is a
    dataclass defined in that very module. Nothing else is called. Call it after :func:`import_target`.

    Raises:
        UnsafeModel: a typed node names anything else.
        InvalidArgument: a malformed node, or the dataclass refuses its fields.
    """
    if depth > _MAX_DEPTH:
        raise InvalidArgument(f"{where} nest deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        if DATACLASS_KEY in value:
            return _rebuild_dataclass(value, owner, where, depth)
        return {k: decode_arguments(v, owner, where=f"{where}[{k!r}]", depth=depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_arguments(v, owner, where=f"{where}[{i}]", depth=depth + 1) for i, v in enumerate(value)]
    return value


_GLOBAL_HOOK_DICTS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
)
_MODULE_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_always_called",
    "_forward_hooks_with_kwargs",
)


def _cairn_hook(hook: Any) -> bool:
    """Whether ``hook`` (a function, bound method or ``functools.partial``) is defined in cairn."""
    target = getattr(hook, "func", hook)
    module = getattr(target, "__module__", None)
    return isinstance(module, str) and (module == "cairn" or module.startswith("cairn."))


@contextlib.contextmanager
def as_written(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as its author wrote it inside the block: without instrumentation hooks.

    Suspended: torch's *global* module hooks (``register_module_forward_pre_hook`` and friends: they
    apply to every module in the process, so they are instrumentation such as cairn's autolog, never part
    of a model) and hooks that cairn registered on ``model``'s submodules. The model's own hooks (weight
    norm, user pre-hooks) stay. Used around ``torch.export`` and the forward pass that infers a
    signature, so that autolog's hooks neither run (example capture, checkpoints) nor end up traced into
    the exported program. Everything is put back afterwards, hooks added meanwhile included. The global
    hooks are process-wide: a forward on another thread during the block does not see them either.
    """
    from torch.nn.modules import module as module_module

    saved: list[tuple[dict[Any, Any], dict[Any, Any]]] = []
    try:
        for name in _GLOBAL_HOOK_DICTS:
            hooks = getattr(module_module, name, None)
            if isinstance(hooks, dict) and hooks:
                saved.append((hooks, dict(hooks)))
                hooks.clear()
        for module in model.modules():
            own = getattr(module, "_forward_pre_hooks", {}), getattr(module, "_forward_hooks", {})
            ids = {key for hooks in own for key, hook in hooks.items() if _cairn_hook(hook)}
            if not ids:
                continue
            for name in _MODULE_HOOK_DICTS:
                hooks = getattr(module, name, None)
                if isinstance(hooks, dict) and ids & hooks.keys():
                    saved.append((hooks, dict(hooks)))
                    for key in ids & hooks.keys():
                        del hooks[key]
        yield model
    finally:
        for hooks, before in reversed(saved):
            added = {key: value for key, value in hooks.items() if key not in before}
            hooks.clear()
            hooks.update(before)
            hooks.update(added)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; its previous train/eval flags are restored after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def meta_stub(shape: list[int], dtype: str, parameter: bool, requires_grad: bool) -> torch.Tensor:
    """A data-less stand-in for a tensor of a pickled skeleton (called by the unpickler)."""
    kind = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(kind, torch.dtype):
        raise InvalidArgument(f"unknown dtype {dtype!r} in a model skeleton")
    tensor = torch.empty([int(d) for d in shape], dtype=kind, device="meta")
    return nn.Parameter(tensor, requires_grad=bool(requires_grad)) if parameter else tensor
