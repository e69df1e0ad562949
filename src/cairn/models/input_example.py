"""Save an input example next to a model, in MLflow's file formats, and read it back.

``input_example.json`` holds what ``predict`` takes; ``serving_input_example.json`` holds the body a
scoring server takes. The MLmodel file records how to read them in ``saved_input_example_info``::

    DataFrame        {"columns": [...], "data": [[...]]}    type: dataframe, pandas_orient: split
                     (``{"data": ...}`` only and orient ``values`` when the columns are 0..n-1)
    ndarray / tensor [[...]]  or, for a dict of arrays, {"x": [[...]]}       type: ndarray
    dict, list, scalar  the value itself                                      type: json_object

An example given as ``(data, params)`` is stored as ``{"inputs": data, "params": params}`` and the
info gets ``params: "true"``. Bytes are base64-encoded, NaN becomes null, dates become ISO strings.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import os
from pathlib import Path
from typing import Any

from cairn.errors import InvalidArgument
from cairn.models.schema import COLUMN_TYPES, ColSpec, Schema, TensorSpec

__all__ = [
    "EXAMPLE_FILENAME",
    "SERVING_INPUT_FILENAME",
    "load_input_example",
    "load_input_example_params",
    "load_serving_input_example",
    "save_input_example",
]

EXAMPLE_FILENAME = "input_example.json"
SERVING_INPUT_FILENAME = "serving_input_example.json"
_TYPES = ("dataframe", "ndarray", "json_object", "sparse_matrix_csc", "sparse_matrix_csr")


def _module(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _json_default(obj: Any) -> Any:
    """JSON for what ``json`` cannot encode itself, as MLflow's NumpyEncoder does."""
    if isinstance(obj, (bytes, bytearray)):
        return base64.encodebytes(bytes(obj)).decode("ascii")
    if isinstance(obj, (dt.date, dt.time)):  # includes datetime and pandas.Timestamp
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        return float(obj)
    if _module(obj) == "numpy":
        import numpy as np

        if isinstance(obj, np.datetime64):
            return str(np.datetime_as_string(obj))
        if isinstance(obj, np.ndarray):
            return _array_to_list(obj)
        if isinstance(obj, np.generic):
            return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _clean(value: Any) -> Any:
    """NaN to None, recursively, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _array_to_list(array: Any) -> Any:
    if _module(array) == "torch":
        array = array.detach().cpu().numpy()
    return _clean(array.tolist())


def _is_array(obj: Any) -> bool:
    return _module(obj) in ("numpy", "torch") and hasattr(obj, "shape") and hasattr(obj, "dtype") and len(obj.shape) > 0


def _encode(example: Any) -> tuple[Any, Any, dict[str, str]]:
    """(file content, serving body, info fields) for one example without params."""
    if _module(example) == "pandas":
        import pandas as pd

        if isinstance(example, pd.Series):
            example = example.to_frame()
        if isinstance(example, pd.DataFrame):
            split = example.astype(object).where(example.notna(), None).to_dict(orient="split")
            del split["index"]
            orient = "split"
            if list(example.columns) == list(range(example.shape[1])):
                del split["columns"]
                orient = "values"
            split["data"] = _clean([list(row) for row in split["data"]])
            return split, {"dataframe_split": split}, {"type": "dataframe", "pandas_orient": orient}
    if _is_array(example):
        data = _array_to_list(example)
        return data, {"inputs": data}, {"type": "ndarray"}
    if isinstance(example, dict):
        if example and any(_is_array(v) for v in example.values()):
            if not all(_is_array(v) for v in example.values()):
                raise InvalidArgument("an input example dict must hold only arrays, or no arrays at all")
            data = {str(k): _array_to_list(v) for k, v in example.items()}
            return data, {"inputs": data}, {"type": "ndarray"}
        return _clean(example), {"inputs": _clean(example)}, {"type": "json_object"}
    if isinstance(example, list):
        if any(_is_array(v) and len(v.shape) > 1 for v in example):
            raise InvalidArgument("an input example list cannot hold multi-dimensional arrays; stack them into one")
        return _clean(example), {"inputs": _clean(example)}, {"type": "json_object"}
    if isinstance(example, (str, bytes, bool, int, float, dt.date)) or _module(example) == "numpy":
        return example, {"inputs": example}, {"type": "json_object"}
    raise InvalidArgument(
        f"unsupported input example type {type(example).__name__}; expected a pandas DataFrame, numpy array, "
        "torch tensor, dict of arrays, dict, list or scalar (optionally as a (data, params) tuple)"
    )


def save_input_example(model_dir: str | os.PathLike[str], input_example: Any) -> dict[str, str]:
    """Write ``input_example.json`` and ``serving_input_example.json`` into ``model_dir``.

    Args:
        model_dir: the model directory (must exist).
        input_example: the example, or ``(example, params)`` with a dict of inference params.

    Returns:
        The ``saved_input_example_info`` to store in the MLmodel file.
    """
    params = None
    if isinstance(input_example, tuple) and len(input_example) == 2 and isinstance(input_example[1], dict):
        input_example, params = input_example
    content, serving, fields = _encode(input_example)
    info = {"artifact_path": EXAMPLE_FILENAME, **fields}
    if params is not None:
        info["params"] = "true"
        content = {"inputs": content, "params": params}
        serving = {**serving, "params": params}
    directory = Path(model_dir)
    try:
        (directory / EXAMPLE_FILENAME).write_text(json.dumps(content, default=_json_default))
        (directory / SERVING_INPUT_FILENAME).write_text(json.dumps(serving, default=_json_default, indent=2))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"the input example cannot be written as JSON: {exc}") from exc
    info["serving_input_path"] = SERVING_INPUT_FILENAME
    return info


def _info_and_schema(
    model_dir: Path, info: dict[str, Any] | None, schema: Schema | None
) -> tuple[dict[str, Any] | None, Schema | None]:
    if info is not None:
        return info, schema
    from cairn.models.model import Model

    model = Model.load(model_dir)
    if schema is None and model.signature is not None:
        schema = model.signature.inputs
    return model.saved_input_example_info, schema


def _read_raw(model_dir: Path, info: dict[str, Any]) -> Any:
    path = model_dir / str(info.get("artifact_path", EXAMPLE_FILENAME))
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        from cairn.errors import ArtifactNotFound

        raise ArtifactNotFound(f"the MLmodel file lists an input example at {path}, but the file is missing") from None
    except ValueError as exc:
        raise InvalidArgument(f"input example {path} is not valid JSON: {exc}") from exc


def load_input_example(
    model_dir: str | os.PathLike[str], *, info: dict[str, Any] | None = None, schema: Schema | None = None
) -> Any:
    """The input example saved with a model, as the kind of object it was saved from.

    DataFrames come back as DataFrames and arrays as numpy arrays; with a signature, columns and
    tensors get the signature's dtypes back (JSON alone would turn float32 into float64).

    Args:
        model_dir: the model directory.
        info: ``saved_input_example_info``; read from the directory's MLmodel file when omitted.
        schema: the input schema used to restore dtypes; the MLmodel signature's when omitted.

    Returns:
        The example, or ``None`` if the model has none.
    """
    directory = Path(model_dir)
    info, schema = _info_and_schema(directory, info, schema)
    if info is None:
        return None
    kind = info.get("type")
    if kind not in _TYPES:
        raise InvalidArgument(f"unknown input example type {kind!r}; expected one of {list(_TYPES)}")
    data = _read_raw(directory, info)
    if info.get("params"):
        data = data["inputs"]
    if kind == "json_object":
        return data
    if kind == "dataframe":
        return _to_dataframe(data, schema)
    if kind == "ndarray":
        if isinstance(data, dict) and set(data) <= {"inputs", "instances"} and info.get("format") == "tf-serving":
            data = next(iter(data.values()))  # MLflow < 2.17 wrapped tensors as {"inputs": ...}
        return _to_arrays(data, schema)
    return _to_sparse(data, kind)


def load_input_example_params(
    model_dir: str | os.PathLike[str], *, info: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The inference params saved with the input example, or ``None``."""
    directory = Path(model_dir)
    info, _ = _info_and_schema(directory, info, None)
    if not info or not info.get("params"):
        return None
    params = _read_raw(directory, info).get("params")
    return params if isinstance(params, dict) else None


def load_serving_input_example(model_dir: str | os.PathLike[str], *, info: dict[str, Any] | None = None) -> str | None:
    """The serving request body saved with the model (a JSON string), or ``None``."""
    directory = Path(model_dir)
    info, _ = _info_and_schema(directory, info, None)
    if not info or not info.get("serving_input_path"):
        return None
    return (directory / str(info["serving_input_path"])).read_text()


def _to_dataframe(data: Any, schema: Schema | None) -> Any:
    import pandas as pd

    if not isinstance(data, dict) or "data" not in data:
        raise InvalidArgument("a dataframe input example must be a JSON object with 'data' (and 'columns')")
    frame = pd.DataFrame(data["data"], columns=data.get("columns"))
    if schema is None or schema.is_tensor_spec():
        return frame
    specs = [s for s in schema.inputs if isinstance(s, ColSpec)]
    for position, spec in enumerate(specs):
        column = (
            spec.name if spec.name is not None else (frame.columns[position] if position < frame.shape[1] else None)
        )
        if column is None or column not in frame.columns:
            continue
        frame[column] = _restore_column(frame[column], spec)
    return frame


def _restore_column(series: Any, spec: ColSpec) -> Any:
    import pandas as pd

    if isinstance(spec.type, dict) or spec.type == "string":
        return series
    if spec.type == "binary":
        return series.map(lambda v: base64.decodebytes(v.encode("ascii")) if isinstance(v, str) else v)
    if spec.type == "datetime":
        return pd.to_datetime(series)
    if series.isna().any() and spec.type in ("integer", "long", "boolean"):
        return series  # missing values cannot live in a numpy int or bool column
    try:
        return series.astype(COLUMN_TYPES[spec.type])
    except (TypeError, ValueError):
        return series


def _to_arrays(data: Any, schema: Schema | None) -> Any:
    import numpy as np

    dtypes: dict[str | None, str] = {}
    if schema is not None and schema.is_tensor_spec():
        dtypes = {s.name: s.dtype for s in schema.inputs if isinstance(s, TensorSpec)}

    def to_array(values: Any, name: str | None) -> Any:
        dtype = dtypes.get(name)
        return np.asarray(values, dtype=dtype if dtype not in (None, "bytes") else None)

    if isinstance(data, dict):
        return {k: to_array(v, k) for k, v in data.items()}
    return to_array(data, None)


def _to_sparse(data: Any, kind: str) -> Any:
    try:
        from scipy.sparse import csc_matrix, csr_matrix
    except ImportError:
        raise InvalidArgument(f"reading a {kind} input example needs scipy (pip install scipy)") from None
    matrix = csc_matrix if kind == "sparse_matrix_csc" else csr_matrix
    return matrix((data["data"], data["indices"], data["indptr"]), shape=tuple(data["shape"]))
