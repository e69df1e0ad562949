"""onnxruntime sessions (providers and session options) and the pyfunc implementation of the ONNX flavor
(see :mod:`cairn.flavors.onnx`)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cairn.errors import InvalidArgument, SchemaMismatch, UnsafeModel
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

# What a model file may ask of onnxruntime (an allow-list: anything else recorded in an MLmodel file is
# refused). Options the caller passes at load time are the caller's choice and apply as given.
_MAX_RECORDED_THREADS = 1024
_FLAG = ("0", "1")
_SMALL_NUMBER = r"[0-9]{1,6}"
#: Session config entries (``add_session_config_entry``) that name no file and change only how the
#: model is computed, with the values each may take (a tuple of literals, or a regex of the whole value).
_RECORDABLE_CONFIG: dict[str, tuple[str, ...] | str] = {
    "session.intra_op.allow_spinning": _FLAG,
    "session.inter_op.allow_spinning": _FLAG,
    "session.set_denormal_as_zero": _FLAG,
    "session.disable_prepacking": _FLAG,
    "session.disable_quant_qdq": _FLAG,
    "session.disable_double_qdq_remover": _FLAG,
    "session.enable_quant_qdq_cleanup": _FLAG,
    "session.disable_aot_function_inlining": _FLAG,
    "session.strict_shape_type_inference": _FLAG,
    "session.allow_released_opsets_only": _FLAG,
    "session.disable_cpu_ep_fallback": _FLAG,
    "optimization.enable_gelu_approximation": _FLAG,
    "mlas.enable_gemm_fastmath_arm64_bfloat16": _FLAG,
    "session.dynamic_block_base": _SMALL_NUMBER,
    "session.graph_optimizations_loop_level": _SMALL_NUMBER,
    "session.qdq_matmulnbits_accuracy_level": _SMALL_NUMBER,
}
#: Execution-provider options that name no file and hold no pointer (device choice and memory use).
_RECORDABLE_PROVIDER_OPTIONS = frozenset(
    {"device_id", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search", "do_copy_in_default_stream"}
)
_PROVIDER_OPTION_VALUE = re.compile(r"[A-Za-z0-9_]{1,64}")


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


# -- what a model file may record ---------------------------------------------------------------------


def _config_entry_problem(key: str, value: str) -> str | None:
    allowed = _RECORDABLE_CONFIG.get(key)
    if allowed is None:
        return (
            f"extra_session_config key {key!r} is not one cairn applies from a model file "
            f"(it applies {', '.join(sorted(_RECORDABLE_CONFIG))})"
        )
    fits = value in allowed if isinstance(allowed, tuple) else re.fullmatch(allowed, value) is not None
    if not fits:
        expected = " or ".join(repr(v) for v in allowed) if isinstance(allowed, tuple) else "a small number"
        return f"extra_session_config key {key!r} has the value {value!r}; a model file may set it to {expected}"
    return None


def session_option_problems(options: Mapping[str, Any]) -> list[str]:
    """Why normalized session ``options`` may not come from a model file (``[]`` if they may).

    The top-level keys are already an allow-list (:func:`normalize_session_options`); this bounds the
    thread counts and allows only the path-free ``extra_session_config`` entries of ``_RECORDABLE_CONFIG``.
    """
    problems = [
        f"{key} is {options[key]}; a model file may ask for at most {_MAX_RECORDED_THREADS} threads"
        for key in ("intra_op_num_threads", "inter_op_num_threads")
        if options.get(key, 0) > _MAX_RECORDED_THREADS
    ]
    for key, value in (options.get("extra_session_config") or {}).items():
        problem = _config_entry_problem(key, value)
        if problem is not None:
            problems.append(problem)
    return problems


def provider_problems(providers: Sequence[Any]) -> list[str]:
    """Why normalized ``providers`` may not come from a model file (``[]`` if they may): options outside
    ``_RECORDABLE_PROVIDER_OPTIONS`` (paths, pointers, ...), or values that are not a plain word or number."""
    problems = []
    for entry in providers:
        if not isinstance(entry, list):
            continue
        name, options = entry
        for key, value in options.items():
            if key not in _RECORDABLE_PROVIDER_OPTIONS:
                problems.append(
                    f"execution provider {name} option {key!r} is not one cairn applies from a model file "
                    f"(it applies {', '.join(sorted(_RECORDABLE_PROVIDER_OPTIONS))})"
                )
            elif isinstance(value, float) or not _PROVIDER_OPTION_VALUE.fullmatch(str(value)):
                problems.append(
                    f"execution provider {name} option {key!r} has the value {value!r}; "
                    "a model file may give only a plain word or integer"
                )
    return problems


def recordable_settings(providers: Any, session_options: Any) -> tuple[list[Any], dict[str, Any]]:
    """Providers and session options normalized for an MLmodel file, refused if a load would refuse them.

    Raises:
        InvalidArgument: a malformed setting, or one that cairn does not apply from a model file (the
            message names it; pass such options at load time instead).
    """
    recorded_providers = normalize_providers(providers)
    recorded_options = normalize_session_options(session_options)
    problems = provider_problems(recorded_providers) + session_option_problems(recorded_options)
    if problems:
        raise InvalidArgument(
            "cannot record these onnxruntime settings in the model, since loading it would refuse them: "
            + "; ".join(problems)
            + ". Pass them when loading instead (cairn.onnx.load_pyfunc(uri, providers=..., session_options=...) "
            "or model_config), where they are the caller's choice"
        )
    return recorded_providers, recorded_options


def settings_from_model_file(
    providers: Any, session_options: Any, *, check_providers: bool, check_options: bool, what: str
) -> tuple[list[Any], dict[str, Any]]:
    """Providers and session options for a session, those read from a model file held to the allow-list.

    Args:
        providers: the providers (recorded, or given by the caller).
        session_options: the session options (recorded, or given by the caller).
        check_providers: whether ``providers`` came from the model's files.
        check_options: whether ``session_options`` came from the model's files.
        what: the model, for messages.

    Raises:
        UnsafeModel: the model file asks onnxruntime for something off the allow-list (a path to read
            or write, a provider option with a pointer, thousands of threads); the message names it.
        InvalidArgument: a malformed setting.
    """
    normalized_providers = normalize_providers(providers)
    normalized_options = normalize_session_options(session_options)
    problems = (provider_problems(normalized_providers) if check_providers else []) + (
        session_option_problems(normalized_options) if check_options else []
    )
    if problems:
        raise UnsafeModel(
            f"{what} asks onnxruntime for settings cairn does not take from a model file, since they can make "
            "onnxruntime read or write files outside the model (or worse): "
            + "; ".join(problems)
            + ". If you trust the model, pass the settings you want yourself when loading "
            "(cairn.onnx.load_pyfunc(uri, providers=..., session_options=...) or model_config)"
        )
    return normalized_providers, normalized_options


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
