"""onnxruntime sessions (providers and session options) and the pyfunc implementation of the ONNX flavor
(see :mod:`cairn.flavors.onnx`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cairn.errors import InvalidArgument, SchemaMismatch
from cairn.flavors._onnx_external_data import _parse, check_external_data

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

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
