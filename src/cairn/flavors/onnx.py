"""The ONNX flavor: ONNX models, conversion from torch and scikit-learn, prediction through onnxruntime.

Layout (MLflow's ``onnx`` flavor keys, so ``mlflow.onnx.load_model`` reads the file)::

    MLmodel                 onnx: {data: onnx/model.onnx, onnx_version, providers, onnx_session_options,
                                   opset, ir_version, external_data: [...], converted_from, code}
                            python_function: {loader_module: cairn.flavors.onnx, ...}
                            metadata: {onnx_parity: {max_abs_diff, max_rel_diff, rtol, atol, ...}}  # conversions
    onnx/model.onnx         the graph (and the weights, below the 2 GB protobuf limit)
    onnx/model.onnx.data    the weights as ONNX external data, for large models or on request

What ``save_model`` takes: an ``onnx.ModelProto``, a path to a ``.onnx`` file (with its external
data), a ``torch.nn.Module`` or a scikit-learn estimator; the last two are converted
(:mod:`cairn.flavors._onnx_convert`) and must reproduce the source model on the input example
within ``rtol``/``atol``, or nothing is saved (:class:`OnnxParityError`).

External data is read only from files inside the directory of the ``.onnx`` file: a location that
is absolute, climbs out with ``..`` or resolves outside through a symlink is refused with
:class:`~cairn.errors.UnsafePath` before onnx or onnxruntime opens anything.

Pyfunc ``predict`` runs an onnxruntime ``InferenceSession`` (providers recorded at save time or
given at load, CPU by default) and takes a numpy array or tensor (models with one input), a dict
of arrays keyed by input name, or a DataFrame (its values for a one-input model, else one column
per input). Inputs are cast to the types the graph declares: widening casts, integers whose
values fit, and narrower floats (float64 -> float32, what ONNX float models take; the signature
decides whether float64 is accepted at all). It returns a DataFrame for DataFrame input (a
``(n, k)`` output becomes columns ``name_0 .. name_{k-1}``), else the array of a model with one
output and a dict of arrays (by output name) for several outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cairn.errors import InvalidArgument, ResourceAlreadyExists, SchemaMismatch, UnsafePath
from cairn.flavors._onnx_convert import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Conversion,
    OnnxParityError,
    check_parity,
    convert,
    source_kind,
)
from cairn.models.model import MLMODEL_FILE_NAME, Model, ModelInfo
from cairn.models.schema import ModelSignature, Schema, TensorSpec

if TYPE_CHECKING:
    import onnx

    from cairn.models.loading import PyFuncModel

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_PROVIDERS",
    "DEFAULT_RTOL",
    "FLAVOR_NAME",
    "OnnxParityError",
    "OnnxPyfunc",
    "add_onnx_flavor",
    "check_external_data",
    "load_model",
    "load_pyfunc",
    "log_model",
    "save_model",
]

FLAVOR_NAME = "onnx"
LOADER_MODULE = "cairn.flavors.onnx"
ONNX_DIR = "onnx"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
#: Above this many bytes, ``save_as_external_data=None`` stores the weights as external data
#: (protobuf cannot serialize a message of 2 GiB or more; the margin covers the graph itself).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
#: Tensors smaller than this stay inside model.onnx when the weights go to external data.
EXTERNAL_TENSOR_MIN_BYTES = 1024
_PACKAGES = ("onnx", "onnxruntime")
_METHODS_KEY = "sklearn_methods"

# onnxruntime's type strings -> numpy dtype names ("object" for strings).
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}
_EXACT_INT_LIMIT = {2: 2**11, 4: 2**24, 8: 2**53}

# Session options cairn records and applies (MLflow's keys and value conventions).
_EXECUTION_MODES = ("sequential", "parallel")
_OPTIMIZATION_LEVELS = (0, 1, 2, 99)
_INT_OPTIONS = ("intra_op_num_threads", "inter_op_num_threads", "log_severity_level")
_BOOL_OPTIONS = ("enable_mem_pattern", "enable_cpu_mem_arena")


def _module_root(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


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


# -- providers and session options ---------------------------------------------------------------------


def _provider_name(entry: Any) -> str:
    return str(entry[0]) if isinstance(entry, (list, tuple)) else str(entry)


def normalize_providers(providers: Any) -> list[Any]:
    """Providers as recorded in MLmodel: names, or ``[name, {option: value}]`` pairs; CPU by default.

    Raises:
        InvalidArgument: not a list, or a name onnxruntime does not know.
    """
    import onnxruntime as ort

    if providers is None:
        return list(DEFAULT_PROVIDERS)
    if isinstance(providers, str):
        providers = [providers]
    if not isinstance(providers, (list, tuple)) or not providers:
        raise InvalidArgument(f"providers must be a non-empty list of onnxruntime provider names, got {providers!r}")
    known = set(ort.get_all_providers())
    result: list[Any] = []
    for entry in providers:
        if isinstance(entry, (list, tuple)):
            if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], Mapping):
                raise InvalidArgument(f"a provider with options must be (name, {{option: value}}), got {entry!r}")
            result.append([entry[0], {str(k): v for k, v in entry[1].items()}])
        elif isinstance(entry, str):
            result.append(entry)
        else:
            raise InvalidArgument(f"a provider must be a name or (name, options), got {entry!r}")
        if _provider_name(entry) not in known:
            raise InvalidArgument(
                f"unknown onnxruntime execution provider {_provider_name(entry)!r}; known: {', '.join(sorted(known))}"
            )
    return result


def normalize_session_options(options: Any) -> dict[str, Any]:
    """Session options as recorded in MLmodel (plain YAML values, MLflow's conventions).

    Accepts a dict or an ``onnxruntime.SessionOptions``. Keys: ``intra_op_num_threads``,
    ``inter_op_num_threads``, ``log_severity_level`` (ints >= 0), ``execution_mode``
    (``"sequential"``/``"parallel"``), ``graph_optimization_level`` (0, 1, 2 or 99),
    ``enable_mem_pattern``, ``enable_cpu_mem_arena`` (bools) and ``extra_session_config``
    (str -> str, passed to ``add_session_config_entry``).

    Raises:
        InvalidArgument: an unknown key or a value of the wrong kind.
    """
    if options is None:
        return {}
    if _module_root(options) == "onnxruntime":
        return _from_session_options(options)
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"onnx_session_options must be a dict or onnxruntime.SessionOptions, got {options!r}")
    result: dict[str, Any] = {}
    for key, value in options.items():
        if key in _INT_OPTIONS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"session option {key} must be an int >= 0, got {value!r}")
            result[key] = value
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise InvalidArgument(f"session option {key} must be True or False, got {value!r}")
            result[key] = value
        elif key == "execution_mode":
            mode = _execution_mode(value)
            if mode not in _EXECUTION_MODES:
                raise InvalidArgument(
                    f"session option execution_mode must be 'sequential' or 'parallel', got {value!r}"
                )
            result[key] = mode
        elif key == "graph_optimization_level":
            level = int(value) if _module_root(value) == "onnxruntime" else value
            if level not in _OPTIMIZATION_LEVELS or isinstance(level, bool):
                raise InvalidArgument(f"session option graph_optimization_level must be 0, 1, 2 or 99, got {value!r}")
            result[key] = int(level)
        elif key == "extra_session_config":
            if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                raise InvalidArgument(f"session option extra_session_config must map strings to strings, got {value!r}")
            result[key] = {str(k): v for k, v in value.items()}
        else:
            allowed = sorted({*_INT_OPTIONS, *_BOOL_OPTIONS, "execution_mode", "graph_optimization_level"})
            raise InvalidArgument(
                f"unknown onnxruntime session option {key!r}; "
                f"cairn records {', '.join(allowed)} and extra_session_config"
            )
    return result


def _execution_mode(value: Any) -> str:
    if _module_root(value) == "onnxruntime":
        return _EXECUTION_MODES[int(value)] if int(value) in (0, 1) else str(value)
    return str(value).lower().removeprefix("ort_")


def _from_session_options(options: Any) -> dict[str, Any]:
    import onnxruntime as ort

    default = ort.SessionOptions()
    result: dict[str, Any] = {}
    for key in (*_INT_OPTIONS, *_BOOL_OPTIONS):
        value = getattr(options, key)
        if value != getattr(default, key) and not (key == "log_severity_level" and value < 0):
            result[key] = value
    if options.execution_mode != default.execution_mode:
        result["execution_mode"] = _execution_mode(options.execution_mode)
    if options.graph_optimization_level != default.graph_optimization_level:
        result["graph_optimization_level"] = int(options.graph_optimization_level)
    return result


def _session_options(options: Mapping[str, Any]) -> Any:
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    for key, value in options.items():
        if key == "execution_mode":
            session_options.execution_mode = ort.ExecutionMode(_EXECUTION_MODES.index(value))
        elif key == "graph_optimization_level":
            session_options.graph_optimization_level = ort.GraphOptimizationLevel(value)
        elif key == "extra_session_config":
            for name, setting in value.items():
                session_options.add_session_config_entry(name, setting)
        else:
            setattr(session_options, key, value)
    return session_options


def open_session(
    path: str | os.PathLike[str], *, providers: Sequence[Any] | None = None, session_options: Any = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` on an ``.onnx`` file whose external data was checked first.

    Providers that this onnxruntime build does not offer are dropped with a warning (CPU if none
    is left); if a provider fails to start, the session falls back to CPU with a warning.

    Raises:
        InvalidArgument: the file is not a valid ONNX model, or onnxruntime cannot load it.
        UnsafePath: external data outside the file's directory.
    """
    import onnxruntime as ort

    target = Path(path)
    label = f"the ONNX model {target.name}"
    check_external_data(_parse(target, what=label), target.parent, what=label)
    requested = normalize_providers(list(providers) if providers is not None else None)
    options = normalize_session_options(session_options)
    available = set(ort.get_available_providers())
    usable = [p for p in requested if _provider_name(p) in available]
    if len(usable) < len(requested):
        dropped = [_provider_name(p) for p in requested if _provider_name(p) not in available]
        warnings.warn(
            f"onnxruntime here does not offer execution provider(s) {dropped}; "
            f"using {[_provider_name(p) for p in usable] or ['CPUExecutionProvider']}",
            UserWarning,
            stacklevel=2,
        )
    chosen = [tuple(p) if isinstance(p, list) else p for p in usable] or ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(target), sess_options=_session_options(options), providers=chosen)
    except Exception as exc:
        if chosen != ["CPUExecutionProvider"]:
            warnings.warn(
                f"onnxruntime could not start providers {chosen} ({type(exc).__name__}: {exc}); falling back to CPU",
                UserWarning,
                stacklevel=2,
            )
            try:
                return ort.InferenceSession(
                    str(target), sess_options=_session_options(options), providers=["CPUExecutionProvider"]
                )
            except Exception as retry:
                exc = retry
        raise InvalidArgument(f"onnxruntime cannot load {label} ({target}): {type(exc).__name__}: {exc}") from exc


# -- pyfunc ---------------------------------------------------------------------------------------------


def _as_numpy(value: Any, label: str) -> Any:
    import numpy as np

    if _module_root(value) == "torch":
        return value.detach().cpu().numpy()
    if _module_root(value) == "pandas":
        items = value.tolist()
        if items and all(isinstance(v, (list, tuple, np.ndarray)) for v in items):
            return np.stack([np.asarray(v) for v in items])
        return value.to_numpy()
    try:
        return np.asarray(value)
    except ValueError as exc:
        raise SchemaMismatch(f"{label}: cannot make an array of the input ({exc})") from None


def _cast_feed(label: str, array: Any, ort_type: str) -> Any:
    """``array`` as the dtype the ONNX input declares, if that keeps its values' meaning."""
    import numpy as np

    target_name = _ORT_DTYPES.get(ort_type)
    if target_name is None:
        return array
    actual = array.dtype
    if target_name == "object":
        if actual.kind in "OUS":
            return array.astype(object)
        raise SchemaMismatch(f"{label}: the model takes strings ({ort_type}), got {actual}")
    target = np.dtype(target_name)
    if actual == target:
        return array
    if actual.kind not in "biuf":
        raise SchemaMismatch(f"{label}: the model takes {target} ({ort_type}), got {actual}")
    if np.can_cast(actual, target, "safe") or (actual.kind == "f" and target.kind == "f"):
        return array.astype(target)  # widening, or float64 -> float32 (what ONNX float models take)
    if actual.kind in "iu" and array.size:
        low, high = int(array.min()), int(array.max())
        if target.kind == "f" and max(abs(low), abs(high)) <= _EXACT_INT_LIMIT.get(target.itemsize, 2**53):
            return array.astype(target)
        if target.kind in "iu" and np.iinfo(target).min <= low and high <= np.iinfo(target).max:
            return array.astype(target)
    elif actual.kind in "iu":
        return array.astype(target)
    raise SchemaMismatch(
        f"{label}: the model takes {target} ({ort_type}); cannot convert {actual} without changing values"
    )


class OnnxPyfunc:
    """The pyfunc implementation: ``predict(data, params=None)`` on an onnxruntime session.

    Args:
        session: the ``onnxruntime.InferenceSession``.
        methods: for models converted from scikit-learn, estimator method -> ``{"output": name,
            "ndim": n}``; ``params={"method": "predict_proba"}`` then returns that one output as
            the estimator would (so the ONNX model is a drop-in for the scikit-learn pyfunc).
    """

    def __init__(self, session: Any, *, methods: Mapping[str, Any] | None = None) -> None:
        self.session = session
        self.inputs = [(i.name, i.type, list(i.shape or [])) for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.methods = dict(methods or {})

    def get_raw_model(self) -> Any:
        """The ``onnxruntime.InferenceSession``."""
        return self.session

    def _feeds(self, data: Any) -> dict[str, Any]:
        import numpy as np

        names = [name for name, _, _ in self.inputs]
        values: dict[str, Any]
        if _module_root(data) == "pandas":
            import pandas as pd

            frame = data.to_frame() if isinstance(data, pd.Series) else data
            columns = {str(c): c for c in frame.columns}
            if len(names) == 1 and not (frame.shape[1] == 1 and names[0] in columns):
                values = {names[0]: frame.to_numpy()}
            else:
                missing = [n for n in names if n not in columns]
                if missing:
                    raise SchemaMismatch(
                        f"the ONNX model takes inputs {names}; the DataFrame has no column(s) {missing} "
                        f"(columns: {list(columns)})"
                    )
                values = {n: frame[columns[n]] for n in names}
        elif isinstance(data, Mapping):
            values = {str(k): v for k, v in data.items()}
            missing = [n for n in names if n not in values]
            extra = [k for k in values if k not in names]
            if missing or extra:
                raise SchemaMismatch(
                    f"the ONNX model takes inputs {names}; got {list(values)}"
                    + (f" (missing {missing})" if missing else "")
                    + (f" (unknown {extra})" if extra else "")
                )
        else:
            if len(names) != 1:
                raise SchemaMismatch(
                    f"the ONNX model takes {len(names)} inputs {names}; pass a dict of arrays or a DataFrame "
                    f"with those columns, not a {type(data).__name__}"
                )
            values = {names[0]: data}
        feeds = {}
        for name, ort_type, shape in self.inputs:
            label = f"ONNX input {name!r}"
            array = _as_numpy(values[name], label)
            if shape and array.ndim == len(shape) - 1 and (shape[-1] == 1 or not isinstance(shape[-1], int)):
                array = array[..., None]  # a column for an input of shape (n, 1)
            if shape and array.ndim != len(shape):
                raise SchemaMismatch(f"{label}: expected rank {len(shape)} (shape {shape}), got shape {array.shape}")
            feeds[name] = np.ascontiguousarray(_cast_feed(label, array, ort_type))
        return feeds

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Run the model on ``data``; see the module docstring for the accepted and returned types.

        Raises:
            SchemaMismatch: an input is missing, has the wrong rank or a dtype that cannot be cast.
            InvalidArgument: ``params["method"]`` names a method this model has no output for.
        """
        feeds = self._feeds(data)
        method = (params or {}).get("method")
        if method is not None:
            spec = self.methods.get(str(method))
            if spec is None:
                raise InvalidArgument(
                    f"params['method']={method!r}: this ONNX model has outputs for methods {sorted(self.methods)}"
                    if self.methods
                    else f"params['method']={method!r}: this ONNX model was not converted from scikit-learn"
                )
            (value,) = self.session.run([spec["output"]], feeds)
            if spec.get("ndim") == 1 and getattr(value, "ndim", 0) == 2 and value.shape[1] == 1:
                value = value[:, 0]
            return value
        results = self.session.run(self.output_names, feeds)
        if _module_root(data) == "pandas":
            return self._frame(results, data)
        if len(results) > 1:
            return dict(zip(self.output_names, results, strict=True))
        return results[0]

    def _frame(self, results: list[Any], data: Any) -> Any:
        import numpy as np
        import pandas as pd

        columns: dict[str, Any] = {}
        for name, value in zip(self.output_names, results, strict=True):
            if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] != 1:
                for j in range(value.shape[1]):
                    columns[f"{name}_{j}"] = value[:, j]
            elif isinstance(value, np.ndarray) and value.ndim == 2:
                columns[name] = value[:, 0]
            elif isinstance(value, np.ndarray) and value.ndim == 1:
                columns[name] = value
            else:
                columns[name] = list(value)
        lengths = {len(v) for v in columns.values()}
        index = data.index if lengths == {len(data)} else None
        return pd.DataFrame(columns, index=index)


# -- signature -----------------------------------------------------------------------------------------


def signature_from_graph(proto: onnx.ModelProto) -> ModelSignature | None:
    """Named tensor specs for the graph's inputs and outputs (a dynamic dimension is ``-1``).

    Used when there is no input example. ``None`` for a part holding something other than tensors
    (sequences, maps) or tensors of unknown rank.
    """
    import onnx.helper

    initializers = {t.name for t in proto.graph.initializer}

    def schema(values: Any) -> Schema | None:
        specs = []
        for value in values:
            if value.name in initializers:
                continue  # old exporters list the weights as inputs too
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
                return None
            tensor = value.type.tensor_type
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
                shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
                specs.append(TensorSpec(dtype, shape, value.name))
            except (KeyError, ValueError, TypeError, InvalidArgument):
                return None
        return Schema(list(specs)) if specs else None

    inputs = schema(proto.graph.input)
    if inputs is None:
        return None
    return ModelSignature(inputs, schema(proto.graph.output))


# -- writing --------------------------------------------------------------------------------------------


def _byte_size(proto: onnx.ModelProto) -> int:
    try:
        return int(proto.ByteSize())
    except Exception:  # a message too large to measure is too large to serialize
        return 2**31


def _write_proto(proto: onnx.ModelProto, directory: Path, save_as_external_data: bool | None) -> None:
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / MODEL_FILE
    size = _byte_size(proto)
    external = size > EXTERNAL_DATA_THRESHOLD if save_as_external_data is None else bool(save_as_external_data)
    if not external and size >= 2**31 - 1:
        raise InvalidArgument(
            f"the ONNX model is {size / 2**30:.1f} GiB, beyond protobuf's 2 GiB limit; "
            "save it with save_as_external_data=True (or None, the default)"
        )
    if not external:
        onnx.save_model(proto, str(target))
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # onnx.save_model moves the weights out of the proto it is given
    onnx.save_model(
        copy,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=EXTERNAL_TENSOR_MIN_BYTES,
        convert_attribute=False,
    )


def _check_model(path: Path) -> None:
    import onnx.checker

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx.checker.ValidationError, or a protobuf error
        raise InvalidArgument(f"the ONNX model is not valid: {type(exc).__name__}: {exc}") from exc


def _materialize(
    proto: onnx.ModelProto,
    onnx_dir: Path,
    *,
    conversion: Conversion | None,
    save_as_external_data: bool | None,
    session_options: dict[str, Any],
    rtol: float,
    atol: float,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Write ``proto`` into ``onnx_dir``, validate it, run the parity check for a conversion.

    Returns:
        The flavor fields describing the files, and the parity report (``None`` without a conversion).
    """
    import onnx

    _write_proto(proto, onnx_dir, save_as_external_data)
    path = onnx_dir / MODEL_FILE
    _check_model(path)
    external = check_external_data(_parse(path, what="the ONNX model"), onnx_dir, what="the ONNX model")
    report = None
    if conversion is not None:
        session = open_session(path, providers=DEFAULT_PROVIDERS, session_options=session_options)
        report = check_parity(session, conversion, rtol=rtol, atol=atol)
        del session
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    fields: dict[str, Any] = {
        "data": f"{ONNX_DIR}/{MODEL_FILE}",
        "onnx_version": onnx.__version__,
        "opset": int(opset) if opset is not None else None,
        "ir_version": int(proto.ir_version),
        "external_data": [f"{ONNX_DIR}/{rel}" for rel in external],
        "converted_from": conversion.source if conversion is not None else None,
    }
    if conversion is not None and conversion.methods:
        fields[_METHODS_KEY] = conversion.methods
    return fields, report


def _prepare(onnx_model: Any, input_example: Any, opset: int | None) -> tuple[onnx.ModelProto, Conversion | None, Any]:
    """(ModelProto, conversion or None, the input example to save) for whatever ``save_model`` got."""
    if source_kind(onnx_model) is not None:
        conversion = convert(onnx_model, input_example, opset=opset)
        return conversion.proto, conversion, conversion.example
    if opset is not None:
        raise InvalidArgument("opset applies to conversions from torch or scikit-learn, not to an ONNX model")
    if isinstance(onnx_model, (str, os.PathLike)):
        path = Path(onnx_model)
        if path.is_dir():
            raise InvalidArgument(f"{path} is a directory; pass the path of a .onnx file or an onnx.ModelProto")
        return read_onnx_file(path), None, input_example
    if type(onnx_model).__name__ == "ModelProto" and _module_root(onnx_model) == "onnx":
        _check_in_memory(onnx_model)
        return onnx_model, None, input_example
    raise InvalidArgument(
        f"cannot save a {type(onnx_model).__name__} as an ONNX model: pass an onnx.ModelProto, a path to a .onnx "
        "file, a torch.nn.Module or a scikit-learn estimator"
    )


# -- save / log -----------------------------------------------------------------------------------------


def save_model(
    onnx_model: Any,
    path: str | os.PathLike[str],
    *,
    input_example: Any = None,
    signature: ModelSignature | Literal[False] | None = None,
    metadata: dict[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    onnx_execution_providers: Sequence[Any] | None = None,
    onnx_session_options: Any = None,
    save_as_external_data: bool | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    opset: int | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
) -> Model:
    """Save an ONNX model (or convert a torch module / scikit-learn estimator) to the new directory ``path``.

    Args:
        onnx_model: an ``onnx.ModelProto``, a path to a ``.onnx`` file, a ``torch.nn.Module`` or a
            scikit-learn estimator (the last two are converted; ``input_example`` is then required).
        path: the model directory to create (must not exist or be empty).
        input_example: example input, saved with the model; for a conversion also what the model
            is traced on and what the parity check compares on. A torch example is a tensor, a
            tuple of tensors (positional arguments) or a dict (keyword arguments).
        signature: the signature; ``None`` infers it from the input example and one prediction
            (through onnxruntime), or without an example from the graph's inputs and outputs;
            ``False`` records none.
        metadata: free-form metadata for the MLmodel file; a conversion adds ``onnx_parity``.
        pip_requirements: the packages the model needs (default: onnx and onnxruntime).
        extra_pip_requirements: packages added to the defaults.
        code_paths: local files or directories stored with the model.
        onnx_execution_providers: onnxruntime providers to record (names or ``(name, options)``);
            default ``["CPUExecutionProvider"]``.
        onnx_session_options: a dict or ``onnxruntime.SessionOptions``, recorded and applied at load
            (see :func:`normalize_session_options`).
        save_as_external_data: ``True`` stores the weights in ``onnx/model.onnx.data``; ``False``
            inside ``model.onnx``; ``None`` (default) uses external data only near the 2 GiB limit.
        rtol: relative tolerance of the parity check of a conversion.
        atol: absolute tolerance of the parity check of a conversion.
        opset: the ONNX opset a conversion targets (default: the converter's choice).
        run_id: recorded in the MLmodel file (set by :func:`log_model`).
        artifact_path: recorded in the MLmodel file (set by :func:`log_model`).

    Returns:
        The saved :class:`~cairn.models.Model`.

    Raises:
        OnnxParityError: the converted model differs from the source beyond ``rtol``/``atol``;
            nothing is saved.
        InvalidArgument: a malformed ``.onnx`` file, a failed conversion, bad providers or options.
        UnsafePath: the ``.onnx`` file's external data lies outside its directory.
        ResourceAlreadyExists: ``path`` exists and is not empty.
    """
    from cairn.models.packaging import save_model_dir

    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):  # before a costly conversion
        raise ResourceAlreadyExists(f"cannot save a model to {target}: it exists and is not an empty directory")
    providers = normalize_providers(onnx_execution_providers)
    session_options = normalize_session_options(onnx_session_options)
    proto, conversion, example = _prepare(onnx_model, input_example, opset)
    if signature is None and example is None:
        signature = signature_from_graph(proto) or None
    meta = dict(metadata or {})
    packages = list(pip_requirements) if pip_requirements is not None else list(_PACKAGES)
    packages += list(extra_pip_requirements or ())
    flavor_conf: dict[str, Any] = {"providers": providers, "onnx_session_options": session_options, "code": None}
    with tempfile.TemporaryDirectory(prefix="cairn-onnx-") as staging:
        staged = Path(staging) / ONNX_DIR
        fields, report = _materialize(
            proto,
            staged,
            conversion=conversion,
            save_as_external_data=save_as_external_data,
            session_options=session_options,
            rtol=rtol,
            atol=atol,
        )
        flavor_conf.update(fields)
        if report is not None:
            meta["onnx_parity"] = report
        pyfunc: list[OnnxPyfunc] = []

        def write_data(directory: Path) -> None:
            shutil.move(str(staged), str(directory / ONNX_DIR))

        def predict_fn(data: Any) -> Any:
            if not pyfunc:
                session = open_session(
                    target / ONNX_DIR / MODEL_FILE, providers=DEFAULT_PROVIDERS, session_options=session_options
                )
                pyfunc.append(OnnxPyfunc(session, methods=fields.get(_METHODS_KEY)))
            return pyfunc[0].predict(data)

        return save_model_dir(
            target,
            flavor_name=FLAVOR_NAME,
            flavor_conf=flavor_conf,
            loader_module=LOADER_MODULE,
            write_data=write_data,
            predict_fn=predict_fn,
            signature=signature,
            input_example=example,
            metadata=meta,
            pip_packages=packages,
            code_paths=code_paths,
            run_id=run_id,
            artifact_path=artifact_path,
        )


def log_model(
    onnx_model: Any,
    name: str | None = None,
    *,
    artifact_path: str | None = None,
    input_example: Any = None,
    signature: ModelSignature | Literal[False] | None = None,
    metadata: dict[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    onnx_execution_providers: Sequence[Any] | None = None,
    onnx_session_options: Any = None,
    save_as_external_data: bool | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    opset: int | None = None,
    registered_model_name: str | None = None,
    run_id: str | None = None,
) -> ModelInfo:
    """Save ``onnx_model`` (see :func:`save_model`) into a run's artifacts at ``name`` (default ``"model"``).

    A failed conversion or parity check raises before anything is uploaded.

    Args:
        onnx_model: an ``onnx.ModelProto``, a ``.onnx`` path, a torch module or a scikit-learn estimator.
        name: the model's artifact path in the run.
        artifact_path: MLflow's older name for ``name``.
        registered_model_name: also register the model under this name.
        run_id: log into this run instead of the active one (a run is started if none is active).
        input_example, signature, metadata, pip_requirements, extra_pip_requirements, code_paths,
            onnx_execution_providers, onnx_session_options, save_as_external_data, rtol, atol, opset:
            as in :func:`save_model`.

    Returns:
        The :class:`~cairn.models.ModelInfo` (``model_uri`` is ``runs:/<run_id>/<name>``).
    """
    from cairn.models import packaging
    from cairn.models.packaging import model_artifact_name

    target = model_artifact_name(name, artifact_path)

    def save(path: Path, **kwargs: Any) -> Model:
        return save_model(onnx_model, path, **kwargs)

    return packaging.log_model(
        save,
        target,
        registered_model_name=registered_model_name,
        run_id=run_id,
        input_example=input_example,
        signature=signature,
        metadata=metadata,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        code_paths=code_paths,
        onnx_execution_providers=onnx_execution_providers,
        onnx_session_options=onnx_session_options,
        save_as_external_data=save_as_external_data,
        rtol=rtol,
        atol=atol,
        opset=opset,
    )


def add_onnx_flavor(
    model_dir: str | os.PathLike[str],
    model: Model,
    source_model: Any,
    input_example: Any,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    opset: int | None = None,
    providers: Sequence[Any] | None = None,
    session_options: Any = None,
    remove_model_on_failure: bool = True,
) -> Model:
    """Add an ``onnx`` flavor, converted from ``source_model``, to a model directory just saved.

    For flavors' ``also_onnx=True``: call it right after :func:`cairn.models.packaging.save_model_dir`
    returned ``model``. It converts the torch module or scikit-learn estimator, writes
    ``onnx/model.onnx``, checks parity on ``input_example``, adds the ``onnx`` flavor and
    ``metadata.onnx_parity`` to ``model``, adds onnx and onnxruntime to ``requirements.txt``, then
    rewrites ``cairn_files.json`` and, last, ``MLmodel``.

    Args:
        model_dir: the model directory ``save_model_dir`` wrote.
        model: the :class:`Model` it returned; updated in place (and returned).
        source_model: the torch module or scikit-learn estimator that was saved.
        input_example: the example to convert and check on.
        rtol: relative tolerance of the parity check.
        atol: absolute tolerance of the parity check.
        opset: the ONNX opset to target.
        providers: onnxruntime providers to record (default CPU).
        session_options: session options to record (see :func:`normalize_session_options`).
        remove_model_on_failure: on any error remove the whole ``model_dir``, as a failed
            ``save_model_dir`` does, so a failed conversion leaves no model behind (pass ``False``
            to keep an existing model and only undo the ONNX files).

    Raises:
        OnnxParityError: the conversion differs from the source beyond ``rtol``/``atol``.
        InvalidArgument: the conversion failed, or the directory already has an ONNX flavor.
    """
    from cairn.models.hashes import MANIFEST_SHA256_KEY, write_files_manifest
    from cairn.models.model import directory_size
    from cairn.models.requirements import read_requirements, write_requirements

    directory = Path(model_dir)
    onnx_dir = directory / ONNX_DIR
    if FLAVOR_NAME in model.flavors or onnx_dir.exists():
        raise InvalidArgument(f"the model at {directory} already has an ONNX flavor (or an {ONNX_DIR}/ directory)")
    mlmodel = directory / MLMODEL_FILE_NAME
    try:
        recorded = normalize_providers(providers)
        options = normalize_session_options(session_options)
        conversion = convert(source_model, input_example, opset=opset)
        fields, report = _materialize(
            conversion.proto,
            onnx_dir,
            conversion=conversion,
            save_as_external_data=None,
            session_options=options,
            rtol=rtol,
            atol=atol,
        )
        try:
            previous = [line for line in read_requirements(directory) if not line.startswith("cairn==")]
        except FileNotFoundError:
            previous = []
        write_requirements(directory, [*previous, *_PACKAGES])
        model.add_flavor(FLAVOR_NAME, providers=recorded, onnx_session_options=options, code=None, **fields)
        assert model.metadata is not None  # Model.__post_init__ sets it
        model.metadata["onnx_parity"] = report
        model.metadata[MANIFEST_SHA256_KEY] = write_files_manifest(directory)
        model.model_size_bytes = directory_size(directory) - (mlmodel.stat().st_size if mlmodel.exists() else 0)
        model.save(mlmodel)
    except BaseException:
        if remove_model_on_failure:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            shutil.rmtree(onnx_dir, ignore_errors=True)
        raise
    return model


# -- load -----------------------------------------------------------------------------------------------


def _flavor_conf(meta: Model, where: object) -> dict[str, Any]:
    conf = meta.flavors.get(FLAVOR_NAME)
    if conf is None:
        raise InvalidArgument(f"the model at {where} has no {FLAVOR_NAME!r} flavor; it has {sorted(meta.flavors)}")
    return conf


def _model_file(model_dir: Path, conf: Mapping[str, Any]) -> Path:
    from cairn.models.loading import model_subpath

    return model_subpath(model_dir, conf.get("data") or f"{ONNX_DIR}/{MODEL_FILE}", "ONNX model file")


def load_model(model_uri: str | os.PathLike[str], *, dst_path: str | os.PathLike[str] | None = None) -> onnx.ModelProto:
    """Load an ONNX model (cairn's or MLflow's) as an ``onnx.ModelProto``, external data included.

    Args:
        model_uri: a local path, ``runs:/``, ``models:/`` or artifact-store URI.
        dst_path: where to download a remote model.

    Raises:
        InvalidArgument: the model has no onnx flavor, or its file is not a valid ONNX model.
        UnsafePath: its external data lies outside the directory of the ``.onnx`` file.
        ModelIntegrityError: a model file does not match its recorded sha256.
    """
    from cairn.models.loading import open_model_dir

    local = open_model_dir(model_uri, dst=dst_path)
    conf = _flavor_conf(local.model, model_uri)
    return read_onnx_file(_model_file(local.path, conf), what=f"the ONNX model at {model_uri}")


def _pyfunc_from_dir(model_dir: Path, meta: Model, model_config: Mapping[str, Any] | None) -> OnnxPyfunc:
    conf = _flavor_conf(meta, model_dir)
    config = dict(model_config or {})
    unknown = set(config) - {"providers", "onnx_session_options"}
    if unknown:
        raise InvalidArgument(
            f"unknown ONNX model_config key(s) {sorted(unknown)}; use providers and onnx_session_options"
        )
    providers = config.get("providers") if config.get("providers") is not None else conf.get("providers")
    options = config.get("onnx_session_options")
    if options is None:
        options = conf.get("onnx_session_options")
    session = open_session(_model_file(model_dir, conf), providers=providers, session_options=options)
    return OnnxPyfunc(session, methods=conf.get(_METHODS_KEY))


def load_pyfunc(
    model_uri: str | os.PathLike[str],
    *,
    providers: Sequence[Any] | None = None,
    session_options: Any = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> PyFuncModel:
    """Load a model's ``onnx`` flavor as a :class:`~cairn.models.loading.PyFuncModel` running onnxruntime.

    Unlike ``cairn.pyfunc.load_model``, this uses the onnx flavor even when the model's
    ``python_function`` belongs to another flavor (a torch or scikit-learn model logged with
    ``also_onnx=True``); the model's signature is enforced as usual.

    Args:
        model_uri: a local path, ``runs:/``, ``models:/`` or artifact-store URI.
        providers: onnxruntime providers to use instead of the recorded ones.
        session_options: session options to use instead of the recorded ones.
        dst_path: where to download a remote model.
    """
    from cairn.models.loading import PyFuncModel, open_model_dir

    local = open_model_dir(model_uri, dst=dst_path)
    config = {"providers": providers, "onnx_session_options": session_options}
    impl = _pyfunc_from_dir(local.path, local.model, {k: v for k, v in config.items() if v is not None})
    return PyFuncModel(local.model, impl, loader_module=LOADER_MODULE, model_dir=local.path)


def _model_dir_of(data_path: Path) -> Path:
    if data_path.is_dir():
        return data_path
    for parent in (data_path.parent, data_path.parent.parent):
        if (parent / MLMODEL_FILE_NAME).is_file():
            return parent
    raise InvalidArgument(f"no {MLMODEL_FILE_NAME} file next to or above {data_path}")


def _load_pyfunc(data_path: str | os.PathLike[str], model_config: dict[str, Any] | None = None) -> OnnxPyfunc:
    """MLflow's pyfunc loader hook: ``data_path`` is the model directory (or its ``.onnx`` file).

    ``model_config`` may override ``providers`` and ``onnx_session_options``.
    """
    from cairn.models.hashes import verify_model_files

    model_dir = _model_dir_of(Path(data_path))
    meta = Model.load(model_dir)
    verify_model_files(model_dir, meta)
    return _pyfunc_from_dir(model_dir, meta, model_config)
