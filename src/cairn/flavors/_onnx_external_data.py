"""External data of ONNX models: where a model keeps its weights, checked before anything reads them,
and reading ``.onnx`` files (see :mod:`cairn.flavors.onnx`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn.errors import InvalidArgument, UnsafePath

if TYPE_CHECKING:
    import onnx


# -- external data --------------------------------------------------------------------------------------


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes: Any) -> Iterator[Any]:
    for attribute in attributes:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        for sparse in [attribute.sparse_tensor, *attribute.sparse_tensors]:
            yield sparse.values
            yield sparse.indices
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)


def _all_tensors(proto: onnx.ModelProto) -> Iterator[Any]:
    """Every TensorProto of the model: initializers, sparse initializers, attribute tensors of every
    node, recursively through subgraphs (If/Loop/Scan bodies) and the model's local functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _attribute_tensors(node.attribute)


def _is_external(tensor: Any) -> bool:
    import onnx

    return bool(tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data))


def check_external_data(proto: onnx.ModelProto, base_dir: str | os.PathLike[str], *, what: str) -> list[str]:
    """Check that every external-data location of ``proto`` is a file inside ``base_dir``.

    Called before onnx or onnxruntime reads any external data: a location that is absolute,
    contains ``..``, a backslash or a URL, or resolves (through symlinks) outside ``base_dir`` is
    refused, as is an offset/length beyond the end of the file.

    Args:
        proto: the model, parsed without its external data.
        base_dir: the directory holding the ``.onnx`` file.
        what: the model, for messages.

    Returns:
        The locations used, sorted (``[]`` for a model without external data).

    Raises:
        UnsafePath: a location outside ``base_dir``.
        InvalidArgument: a tensor without a location, a missing file, or a range past its end.
    """
    from cairn.artifacts.paths import safe_relpath

    root = Path(base_dir).resolve()
    sizes: dict[str, int] = {}
    for tensor in _all_tensors(proto):
        if not _is_external(tensor):
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        try:
            rel = safe_relpath(location)
        except UnsafePath as exc:
            raise UnsafePath(
                f"{what}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's directory; "
                f"cairn reads external data only from files next to the .onnx file ({exc})"
            ) from None
        if not rel:
            raise InvalidArgument(f"{what}: tensor {tensor.name!r} is marked as external data but names no file")
        if rel not in sizes:
            target = root.joinpath(*rel.split("/")).resolve()
            if not target.is_relative_to(root):
                raise UnsafePath(
                    f"{what}: tensor {tensor.name!r} keeps its data at {location!r}, which resolves to {target}, "
                    "outside the model's directory (through a symlink); cairn refuses to read it"
                )
            if not target.is_file():
                raise InvalidArgument(
                    f"{what}: the external data file {location!r} of tensor {tensor.name!r} is missing from {root}"
                )
            sizes[rel] = target.stat().st_size
        try:
            offset = int(entries.get("offset") or 0)
            length = int(entries["length"]) if entries.get("length") else None
        except ValueError:
            raise InvalidArgument(
                f"{what}: tensor {tensor.name!r} has a non-numeric external data offset or length"
            ) from None
        if offset < 0 or (length is not None and length < 0) or offset + (length or 0) > sizes[rel]:
            raise InvalidArgument(
                f"{what}: tensor {tensor.name!r} reads bytes {offset}..{offset + (length or 0)} of {location!r}, "
                f"which has {sizes[rel]} bytes"
            )
    return sorted(sizes)


def _parse(path: Path, *, what: str) -> onnx.ModelProto:
    """Parse an .onnx file without its external data; a clear error if it is not an ONNX model."""
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except FileNotFoundError:
        raise InvalidArgument(f"{what}: no file at {path}") from None
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise InvalidArgument(
            f"{what} ({path}) is not a valid ONNX model: its protobuf could not be parsed ({type(exc).__name__}: {exc})"
        ) from exc
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise InvalidArgument(
            f"{what} ({path}) is not a valid ONNX model: it has no IR version or no graph "
            f"(file of {path.stat().st_size} bytes)"
        )
    return proto


def read_onnx_file(path: str | os.PathLike[str], *, what: str | None = None) -> onnx.ModelProto:
    """Read an ``.onnx`` file and its external data, after checking every external-data location.

    Raises:
        InvalidArgument: the file is not a valid ONNX model (the message says why).
        UnsafePath: external data outside the file's directory.
    """
    import onnx.external_data_helper

    target = Path(path)
    label = what or f"the ONNX model {target.name}"
    proto = _parse(target, what=label)
    if check_external_data(proto, target.parent, what=label):
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(target.parent))
        except Exception as exc:
            raise InvalidArgument(f"{label}: cannot read its external data ({type(exc).__name__}: {exc})") from exc
    return proto


def _check_in_memory(proto: onnx.ModelProto) -> None:
    for tensor in _all_tensors(proto):
        if _is_external(tensor) and not tensor.raw_data:
            raise InvalidArgument(
                f"the ModelProto refers to external data (tensor {tensor.name!r}) that is not loaded; load it "
                "with onnx.load(path) (which reads external data) or pass the path of the .onnx file instead"
            )
