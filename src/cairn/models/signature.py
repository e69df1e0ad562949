"""Infer a :class:`ModelSignature` from example data, with MLflow's rules.

- pandas DataFrame: one :class:`ColSpec` per column; a column is ``required`` if it has no missing value.
- pandas Series: one column named after the series.
- numpy array or torch tensor: one :class:`TensorSpec`, batch dimension ``-1``.
- dict of arrays/tensors: one named :class:`TensorSpec` per key.
- other dict: one named column per key (values: scalars, lists, dicts).
- list of dicts: one column per key; list of scalars (e.g. strings): one unnamed column.
- a scalar: one unnamed column.

numpy and pandas are imported only when the data is of their types; torch is never imported
(tensors are read through their ``dtype`` and ``shape`` attributes).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

from cairn.errors import InvalidArgument
from cairn.models.schema import ColSpec, ColumnType, ModelSignature, ParamSchema, ParamSpec, Schema, TensorSpec

__all__ = ["infer_param_schema", "infer_schema", "infer_signature"]


def infer_signature(
    model_input: Any = None, model_output: Any = None, params: dict[str, Any] | None = None
) -> ModelSignature:
    """Signature of a model from an input example, optionally its prediction and inference params.

    Raises:
        InvalidArgument: the data is of an unsupported kind or holds values whose type cannot be
            told (mixed types, all missing).
    """
    inputs = infer_schema(model_input) if model_input is not None else None
    outputs = infer_schema(model_output) if model_output is not None else None
    param_schema = infer_param_schema(params) if params else None
    return ModelSignature(inputs, outputs, param_schema)


def _module(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _is_array(obj: Any) -> bool:
    """A numpy array or torch tensor with at least one dimension (numpy scalars are not arrays)."""
    shape = getattr(obj, "shape", None)
    return _module(obj) in ("numpy", "torch") and hasattr(obj, "dtype") and shape is not None and len(shape) > 0


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return _module(value) == "pandas" and type(value).__name__ in ("NAType", "NaTType")


def _tensor_spec(array: Any, name: str | None) -> TensorSpec:
    shape = tuple(int(d) for d in array.shape)
    if not shape:
        raise InvalidArgument(f"cannot infer a tensor spec from a 0-d array{f' {name!r}' if name else ''}")
    return TensorSpec(array.dtype, (-1, *shape[1:]), name)


def infer_schema(data: Any) -> Schema:
    """The :class:`Schema` of one piece of example data (see the module docstring for the rules)."""
    if _is_array(data):
        return Schema([_tensor_spec(data, None)])
    if _module(data) == "pandas":
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            return Schema([_column_spec(data[col], str(col)) for col in data.columns])
        if isinstance(data, pd.Series):
            return Schema([_column_spec(data, None if data.name is None else str(data.name))])
    if isinstance(data, dict):
        if data and all(_is_array(v) for v in data.values()):
            return Schema([_tensor_spec(v, str(k)) for k, v in data.items()])
        if not data or not all(isinstance(k, str) for k in data):
            raise InvalidArgument("cannot infer a schema from a dict unless it is non-empty with string keys")
        return Schema([_value_spec(v, k) for k, v in data.items()])
    if isinstance(data, list):
        if not data:
            return Schema([ColSpec("string")])
        if all(isinstance(item, dict) for item in data):
            names = list(dict.fromkeys(k for item in data for k in item))
            return Schema(
                [
                    ColSpec(
                        _infer_type([item.get(k) for item in data], k),
                        str(k),
                        all(not _is_null(item.get(k)) for item in data),
                    )
                    for k in names
                ]
            )
        if any(_is_array(item) and len(item.shape) > 1 for item in data):
            raise InvalidArgument("a list of multi-dimensional arrays has no schema; stack them into one array")
        return Schema([ColSpec(_infer_type(data, "list"))])
    if _is_scalar(data):
        return Schema([ColSpec(_infer_type([data], "value"))])
    raise InvalidArgument(
        f"cannot infer a schema from {type(data).__name__}; expected a pandas DataFrame or Series, a numpy "
        "array, a torch tensor, a dict of arrays, a dict, a list or a scalar"
    )


def _value_spec(value: Any, name: str) -> ColSpec:
    """A dict entry: a scalar makes a scalar column, a list makes an array column (MLflow's rule)."""
    required = all(not _is_null(v) for v in value) if isinstance(value, list) else not _is_null(value)
    return ColSpec(_infer_type([value], name), name, required)


def _column_spec(series: Any, name: str | None) -> ColSpec:
    label = name if name is not None else "series"
    required = not bool(series.isna().any())
    if series.dtype.kind in "biufM":
        return ColSpec(_numpy_type(series.dtype, label), name, required)
    import pandas as pd

    if isinstance(series.dtype, pd.StringDtype):  # pandas >= 3 stores text as "str", not object
        return ColSpec("string", name, required)
    return ColSpec(_infer_type(series.tolist(), label), name, required)


def _numpy_type(dtype: Any, label: str) -> str:
    """MLflow's mapping of a numpy (or pandas extension) dtype to a column type."""
    kind, size = dtype.kind, dtype.itemsize
    if kind == "b":
        return "boolean"
    if kind in "iu":
        if size < 4 or (kind == "i" and size == 4):
            return "integer"
        if size < 8 or (kind == "i" and size == 8):
            return "long"
    if kind == "f":
        if size <= 4:
            return "float"
        if size <= 8:
            return "double"
    if kind == "U":
        return "string"
    if kind == "S":
        return "binary"
    if kind == "M":
        return "datetime"
    raise InvalidArgument(f"{label}: dtype {dtype} has no MLflow column type")


def _is_scalar(value: Any) -> bool:
    if isinstance(value, (str, bytes, bytearray, bool, int, float, decimal.Decimal, dt.date)):
        return True
    return _module(value) == "numpy" and getattr(value, "ndim", None) == 0


def _scalar_type(value: Any, label: str) -> str:
    if _module(value) == "numpy":
        return _numpy_type(value.dtype, label)
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, (float, decimal.Decimal)):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    if isinstance(value, dt.date):
        return "datetime"
    raise InvalidArgument(f"{label}: cannot infer a type for a value of type {type(value).__name__} ({value!r})")


def _as_type_dict(type_: ColumnType) -> dict[str, Any]:
    return dict(type_) if isinstance(type_, dict) else {"type": type_}


def _infer_type(values: list[Any], label: str) -> ColumnType:
    """The one type shared by ``values`` (missing values skipped): a scalar type name or array/object dict."""
    present = [v for v in values if not _is_null(v)]
    if not present:
        raise InvalidArgument(f"{label}: every value is missing, so its type cannot be inferred")
    if all(isinstance(v, (list, tuple)) or (_is_array(v) and len(v.shape) == 1) for v in present):
        flat = [x for v in present for x in (v.tolist() if _is_array(v) else v)]
        return {"type": "array", "items": _as_type_dict(_infer_type(flat, f"{label}[]"))}
    if all(isinstance(v, dict) for v in present):
        keys = sorted({k for v in present for k in v})
        properties = {}
        for key in keys:
            column = [v.get(key) for v in present]
            properties[str(key)] = {
                **_as_type_dict(_infer_type(column, f"{label}.{key}")),
                "required": all(not _is_null(x) for x in column),
            }
        return {"type": "object", "properties": properties}
    types = {_scalar_type(v, label) for v in present}
    if types == {"long", "double"}:  # ints and floats mixed in one column: the floats win
        return "double"
    if len(types) > 1:
        raise InvalidArgument(f"{label}: values of several types {sorted(types)}; use one type per column")
    return types.pop()


def infer_param_schema(params: dict[str, Any]) -> ParamSchema:
    """A :class:`ParamSchema` from example params: each value becomes the param's default.

    Scalars give shape ``None``; lists (or 1-D arrays) give shape ``(-1,)``; dicts give an object type.
    """
    if not isinstance(params, dict):
        raise InvalidArgument(f"params must be a dict, got {type(params).__name__}")
    specs, errors = [], []
    for name, value in params.items():
        try:
            specs.append(_param_spec(str(name), value))
        except InvalidArgument as exc:
            errors.append(f"{name!r}: {exc}")
    if errors:
        raise InvalidArgument(f"cannot infer a schema for params: {'; '.join(errors)}")
    return ParamSchema(specs)


def _param_spec(name: str, value: Any) -> ParamSpec:
    if isinstance(value, dict):
        return ParamSpec(name, _as_type_dict(_infer_type([value], name)), value)
    if _is_array(value):
        if len(value.shape) != 1:
            raise InvalidArgument(f"expected a scalar or 1-D list, got a {len(value.shape)}-D array")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple, dict)) or _is_array(v) for v in value):
            raise InvalidArgument("expected a scalar or 1-D list, got a nested list")
        if not value:
            raise InvalidArgument("an empty list has no element type")
        element = _infer_type(list(value), name)
        return ParamSpec(name, element, list(value), (-1,))
    if not _is_scalar(value):
        raise InvalidArgument(f"expected a scalar, list or dict, got {type(value).__name__}")
    return ParamSpec(name, _scalar_type(value, name), value)
