"""Check model input and params against a signature at predict time, applying only safe conversions.

Safe (applied): widening ``int32 -> int64`` or ``float32 -> float64``; ``int -> float`` when every
value is exactly representable in the float type (MLflow refuses ``int64 -> double`` unless every
value is 0 or 1); reordering DataFrame columns; dropping extra columns or tensors (as MLflow does);
turning dicts, lists and 2-D arrays of the right width into a DataFrame for column-based signatures.

Unsafe (refused with :class:`~cairn.errors.SchemaMismatch`): ``float -> int``, narrowing
(``float64 -> float32``, ``int64 -> int32``), text to numbers, wrong rank, wrong fixed dimension,
missing required columns or tensors. Every message names the column or tensor, the expected and
the actual dtype or shape.

numpy and pandas are imported inside the functions; torch tensors are handled through their own
methods and torch is imported only to cast a tensor that is already loaded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from cairn.errors import InvalidArgument, SchemaMismatch
from cairn.models.schema import COLUMN_TYPES, ColSpec, ParamSchema, Schema, TensorSpec

__all__ = ["enforce_params", "enforce_schema"]

# Largest integer magnitude a float of this byte size holds exactly (2 ** mantissa bits).
_EXACT_INT_LIMIT = {2: 2**11, 4: 2**24, 8: 2**53}
_NUMERIC_COLUMN_TYPES = ("integer", "long", "float", "double")


def enforce_schema(data: Any, schema: Schema) -> Any:
    """Return ``data`` checked against ``schema`` and converted where that is safe.

    Column-based schemas return a pandas DataFrame with the schema's columns in its order.
    Tensor-based schemas return an array (or torch tensor) for one unnamed tensor, else a dict of
    name -> array in the schema's order.

    Raises:
        SchemaMismatch: a column or tensor is missing, or has a dtype or shape that cannot be
            converted safely.
    """
    if not isinstance(schema, Schema):
        raise InvalidArgument(f"enforce_schema needs a Schema, got {type(schema).__name__}")
    if schema.is_tensor_spec():
        return _enforce_tensors(data, schema)
    return _enforce_columns(data, schema)


def enforce_params(params: dict[str, Any] | None, schema: ParamSchema | None) -> dict[str, Any]:
    """Params for ``predict``: each declared param checked and converted, defaults filled in.

    As in MLflow, params the schema does not declare (or all params, when the model has no param
    schema) are ignored with a warning rather than an error.

    Raises:
        SchemaMismatch: a value does not match its param's type or shape.
    """
    if params is not None and not isinstance(params, dict):
        raise SchemaMismatch(f"params must be a dict, got {type(params).__name__}")
    params = params or {}
    if schema is None:
        if params:
            warnings.warn(
                f"the model declares no params, so these are ignored: {sorted(params)}", UserWarning, stacklevel=2
            )
        return {}
    declared = {spec.name for spec in schema.params}
    unknown = sorted(str(k) for k in params if k not in declared)
    if unknown:
        warnings.warn(
            f"params {unknown} are not in the model's param schema {sorted(declared)} and are ignored",
            UserWarning,
            stacklevel=2,
        )
    return {
        spec.name: spec.validate(params[spec.name]) if params.get(spec.name) is not None else spec.default
        for spec in schema.params
    }


def _module(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _is_scalar(value: Any) -> bool:
    import numpy as np

    return value is None or bool(np.isscalar(value))


def _max_abs(values: Any) -> int:
    """Largest magnitude among integer ``values`` (numpy array, Series or torch tensor), 0 if empty."""
    if math.prod(values.shape) == 0:
        return 0
    return max(abs(int(values.max())), abs(int(values.min())))


def _unsafe_reason(actual: Any, target: Any) -> str:
    if actual.kind == "f" and target.kind in "iu":
        return " (floats would be truncated to integers)"
    if actual.kind == target.kind or (actual.kind in "iu" and target.kind in "iu"):
        return f" (narrowing {actual} to {target} can lose range or precision; cast the input yourself if that is fine)"
    return ""


def _check_cast(
    label: str, actual: Any, target: Any, expected: str, max_abs: Callable[[], int], hint: str = ""
) -> bool:
    """Whether ``actual`` -> ``target`` needs a cast (False when equal); raise if the cast is unsafe."""
    if actual == target:
        return False
    kind, size = getattr(actual, "kind", "?"), getattr(actual, "itemsize", 0)
    if kind == target.kind and kind in "iufc" and size <= target.itemsize:
        return True
    if kind == "u" and target.kind == "i" and size < target.itemsize:
        return True
    if kind in "iu" and target.kind == "f":
        limit = _EXACT_INT_LIMIT.get(target.itemsize, 2**64)
        if max_abs() <= limit:
            return True
        raise SchemaMismatch(
            f"{label}: expected {expected}, got {actual} with values beyond +-{limit}, "
            f"which {target} cannot hold exactly"
        )
    raise SchemaMismatch(f"{label}: expected {expected}, got {actual}{_unsafe_reason(actual, target)}{hint}")


# ----------------------------------------------------------------------------------------- columns


def _schema_columns(schema: Schema) -> str:
    return ", ".join(
        f"{s.name!r}: {s.type_name}" if s.name else s.type_name for s in schema.inputs if isinstance(s, ColSpec)
    )


def _to_dataframe(data: Any, schema: Schema) -> Any:
    import numpy as np
    import pandas as pd

    width = len(schema.inputs)
    if isinstance(data, pd.DataFrame):
        frame = data
    elif isinstance(data, pd.Series):
        frame = data.to_frame() if data.name is not None else pd.DataFrame({0: data})
    elif _module(data) == "torch":
        raise SchemaMismatch(
            f"the model takes columns [{_schema_columns(schema)}]; got a torch tensor, pass a DataFrame or numpy array"
        )
    elif isinstance(data, np.ndarray):
        if data.ndim not in (1, 2) or (data.shape[1] if data.ndim == 2 else 1) != width:
            raise SchemaMismatch(
                f"the model takes {width} column(s) [{_schema_columns(schema)}]; got an array of shape {data.shape}"
            )
        frame = pd.DataFrame(data if data.ndim == 2 else {0: data})
    elif isinstance(data, dict):
        structured = any(isinstance(s.type, dict) for s in schema.inputs)
        if structured or all(_is_scalar(v) for v in data.values()):
            frame = pd.DataFrame([data])  # one row, as MLflow does
        else:
            try:
                frame = pd.DataFrame(data)
            except ValueError as exc:
                raise SchemaMismatch(f"cannot turn the input dict into columns: {exc}") from None
    elif isinstance(data, (list, tuple)):
        try:
            frame = pd.DataFrame(list(data))
        except ValueError as exc:
            raise SchemaMismatch(f"cannot turn the input list into columns: {exc}") from None
    elif _is_scalar(data):
        frame = pd.DataFrame([data])
    else:
        raise SchemaMismatch(
            f"the model takes columns [{_schema_columns(schema)}]; cannot use an input of type {type(data).__name__}"
        )
    # Positional columns (from an array, a list or a Series without a name) take the schema's names.
    if schema.has_input_names() and isinstance(frame.columns, pd.RangeIndex) and frame.shape[1] == width:
        frame = frame.set_axis([s.name for s in schema.inputs], axis=1)
    return frame


def _enforce_columns(data: Any, schema: Schema) -> Any:
    import pandas as pd

    frame = _to_dataframe(data, schema)
    specs = [s for s in schema.inputs if isinstance(s, ColSpec)]
    out: dict[Any, Any] = {}
    if not schema.has_input_names():
        if frame.shape[1] < len(specs):
            raise SchemaMismatch(
                f"the model takes {len(specs)} unnamed column(s) [{_schema_columns(schema)}]; got {frame.shape[1]}"
            )
        for i, spec in enumerate(specs):
            out[frame.columns[i]] = _enforce_column(f"column {i}", frame.iloc[:, i], spec)
        return pd.DataFrame(out, index=frame.index)
    by_name = {str(c): c for c in frame.columns}
    missing = [s for s in specs if s.required and s.name not in by_name]
    if missing:
        wanted = ", ".join(f"{s.name!r} ({s.type_name})" for s in missing)
        raise SchemaMismatch(f"input is missing required column(s) {wanted}; got columns {list(by_name)}")
    unchanged = list(frame.columns) == [s.name for s in specs]
    for spec in specs:
        if spec.name in by_name:
            column = frame[by_name[spec.name]]
            out[spec.name] = checked = _enforce_column(f"column {spec.name!r}", column, spec)
            unchanged = unchanged and checked is column
    if unchanged:  # every column already has its schema's name, place and dtype: no new frame needed
        return frame
    return pd.DataFrame(out, index=frame.index)


def _describe(series: Any) -> str:
    """``int64``, or for object columns the Python types they hold: ``object (str, int)``."""
    if series.dtype.kind != "O" or _is_string_dtype(series.dtype):
        return str(series.dtype)
    kinds = sorted({type(v).__name__ for v in series.dropna().head(100)})
    return f"object ({', '.join(kinds)})" if kinds else "object"


def _is_string_dtype(dtype: Any) -> bool:
    import pandas as pd

    return isinstance(dtype, pd.StringDtype)


def _enforce_column(label: str, series: Any, spec: ColSpec) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(spec.type, dict):
        return series  # MLflow's structured types (array/object/map/any) are passed through unchecked
    target = spec.type
    if target in _NUMERIC_COLUMN_TYPES and series.dtype == COLUMN_TYPES[target]:
        return series  # already the exact numeric dtype: nothing to check or convert
    expected = f"{target} ({COLUMN_TYPES[target]})"
    if series.dtype.kind == "O" and not _is_string_dtype(series.dtype) and target not in ("string", "binary"):
        inferred = series.infer_objects()
        if inferred.dtype.kind != "O":
            series = inferred
    kind = series.dtype.kind
    present = series.dropna()
    if target in ("string", "binary"):
        wanted: tuple[type, ...] = (str,) if target == "string" else (bytes, bytearray)
        if target == "string" and (_is_string_dtype(series.dtype) or kind == "U"):
            return series
        if kind == "S" and target == "binary":
            return series
        if kind == "O" and all(isinstance(v, wanted) for v in present):
            return series
        raise SchemaMismatch(f"{label}: expected {target}, got {_describe(series)}")
    if target == "boolean":
        if kind == "b":
            return series
        if kind == "O" and len(present) and all(isinstance(v, (bool, np.bool_)) for v in present):
            return series.astype(bool) if len(present) == len(series) else series  # None cannot be a numpy bool
        raise SchemaMismatch(f"{label}: expected {expected}, got {_describe(series)}")
    if target == "datetime":
        if kind == "M":
            return series if getattr(series.dtype, "tz", None) is not None else series.astype("datetime64[ns]")
        if kind == "O" or _is_string_dtype(series.dtype):
            try:
                return pd.to_datetime(series, errors="raise")
            except (ValueError, TypeError):
                raise SchemaMismatch(
                    f"{label}: expected datetime, got {_describe(series)} that are not dates"
                ) from None
        raise SchemaMismatch(f"{label}: expected {expected}, got {_describe(series)}")
    numpy_target = np.dtype(COLUMN_TYPES[target])
    if kind not in "iuf" or _is_string_dtype(series.dtype):
        raise SchemaMismatch(f"{label}: expected {expected}, got {_describe(series)}")
    hint = ""
    if kind == "f" and numpy_target.kind in "iu" and series.isna().any() and bool((present % 1 == 0).all()):
        hint = (
            ". Hint: the values are whole numbers, but missing values (NaN) make the column float; "
            "declare it as double in the signature or fill the missing values"
        )
    if not _check_cast(label, series.dtype, numpy_target, expected, lambda: _max_abs(present), hint):
        return series
    try:
        return series.astype(numpy_target)
    except (ValueError, TypeError) as exc:  # e.g. pandas nullable Int64 holding <NA>
        raise SchemaMismatch(f"{label}: cannot convert {series.dtype} to {expected}: {exc}") from None


# ----------------------------------------------------------------------------------------- tensors


def _as_array(value: Any, label: str) -> Any:
    import numpy as np
    import pandas as pd

    if _module(value) == "torch" or isinstance(value, np.ndarray):
        return value
    if isinstance(value, pd.Series):
        items = value.tolist()
        if items and all(isinstance(v, (list, tuple, np.ndarray)) for v in items):
            return _as_array(items, label)
        return value.to_numpy()
    if isinstance(value, pd.DataFrame):
        return value.to_numpy()
    try:
        return np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise SchemaMismatch(f"{label}: cannot make an array of the input: {exc}") from None


def _enforce_tensors(data: Any, schema: Schema) -> Any:
    import pandas as pd

    specs = [s for s in schema.inputs if isinstance(s, TensorSpec)]
    if not schema.has_input_names():
        if isinstance(data, dict):
            raise SchemaMismatch(
                f"the model takes one unnamed tensor {_spec_text(specs[0])}; got a dict with keys {list(data)}"
            )
        return _enforce_tensor("input tensor", _as_array(data, "input tensor"), specs[0])
    if isinstance(data, pd.DataFrame):
        values = {str(c): data[c] for c in data.columns}
    elif isinstance(data, dict):
        values = {str(k): v for k, v in data.items()}
    elif len(specs) == 1:
        values = {str(specs[0].name): data}
    else:
        names = [s.name for s in specs]
        raise SchemaMismatch(f"the model takes tensors {names}; pass a dict of arrays, got {type(data).__name__}")
    missing = [s.name for s in specs if s.name not in values]
    if missing:
        raise SchemaMismatch(f"input is missing tensor(s) {missing}; got {list(values)}")
    result = {}
    for spec in specs:
        label = f"tensor {spec.name!r}"
        result[spec.name] = _enforce_tensor(label, _as_array(values[str(spec.name)], label), spec)
    return result


def _spec_text(spec: TensorSpec) -> str:
    return f"{spec.dtype} of shape {spec.shape}"


def _enforce_tensor(label: str, array: Any, spec: TensorSpec) -> Any:
    shape = tuple(int(d) for d in array.shape)
    if spec.dtype == "object" and spec.shape == (-1,):
        return array  # MLflow: a ragged object tensor takes any input
    if len(shape) != len(spec.shape):
        raise SchemaMismatch(
            f"{label}: expected shape {spec.shape} (rank {len(spec.shape)}), got shape {shape} (rank {len(shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if want != -1 and want != got:
            raise SchemaMismatch(
                f"{label}: expected shape {spec.shape}, got shape {shape} (dimension {axis} is {got}, not {want})"
            )
    return _cast_tensor(label, array, spec.dtype)


def _cast_tensor(label: str, array: Any, dtype_name: str) -> Any:
    import numpy as np

    is_torch = _module(array) == "torch"
    if is_torch:
        actual_name = str(array.dtype).removeprefix("torch.")
    else:
        actual_name = {"U": "str", "S": "bytes"}.get(array.dtype.kind, array.dtype.name)
    if actual_name == dtype_name or dtype_name == "object":
        return array
    if dtype_name in ("str", "bytes"):
        wanted: tuple[type, ...] = (str,) if dtype_name == "str" else (bytes, bytearray)
        if not is_torch and array.dtype.kind == "O" and all(isinstance(v, wanted) for v in array.ravel()):
            return array
        raise SchemaMismatch(f"{label}: expected dtype {dtype_name}, got {actual_name}")
    try:
        actual = np.dtype(actual_name)
    except TypeError:  # e.g. torch.bfloat16, which numpy has no dtype for
        raise SchemaMismatch(f"{label}: expected dtype {dtype_name}, got {actual_name}") from None
    target = np.dtype(dtype_name)
    if actual.kind not in "biufc" or target.kind not in "biufc":
        raise SchemaMismatch(f"{label}: expected dtype {dtype_name}, got {actual_name}")
    if not _check_cast(label, actual, target, f"dtype {dtype_name}", lambda: _max_abs(array)):
        return array
    if is_torch:
        import torch

        return array.to(getattr(torch, dtype_name))
    return array.astype(target)
