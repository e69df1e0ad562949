"""MLflow's scoring protocol without a server: request bodies in, model input out; predictions to JSON.

Shared by ``cairn models serve`` (per request) and ``cairn models predict`` (per file). A JSON body is
a dict with exactly one of ``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs`` and
optionally ``params``; CSV and Parquet bodies are one DataFrame. The result is what
:meth:`cairn.models.loading.PyFuncModel.predict` takes; the model's signature is then enforced there.

JSON numbers have no width, so parsed columns and tensors take the signature's numeric type when the
values fit (``float64`` -> a ``float`` column or ``float32`` tensor, ``int64`` -> ``int32`` within
range), as MLflow's server does. Anything else (text for numbers, floats for integers, wrong shapes)
is left as parsed, for the signature check to refuse with a message naming the column or tensor.
numpy and pandas are imported inside the functions.
"""

from __future__ import annotations

import base64
import datetime
import functools
import io
import json
from typing import Any, NamedTuple

from cairn.errors import InvalidArgument
from cairn.models.schema import COLUMN_TYPES, ColSpec, Schema, TensorSpec

__all__ = [
    "INPUT_FORMATS",
    "BadRequest",
    "ParsedInput",
    "parse_csv",
    "parse_json",
    "parse_json_payload",
    "parse_parquet",
    "predictions_payload",
    "to_jsonable",
]

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
INPUT_FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
PARAMS = "params"


class BadRequest(InvalidArgument):
    """The request body is not one of the scoring protocol's shapes (an HTTP 400 on the server)."""


class ParsedInput(NamedTuple):
    """The model input of one request and its ``params`` (``None`` when not given)."""

    data: Any
    params: dict[str, Any] | None


def _format_list() -> str:
    return ", ".join(repr(f) for f in INPUT_FORMATS)


def parse_json(body: bytes | str, schema: Schema | None) -> ParsedInput:
    """Parse a JSON request body.

    Raises:
        BadRequest: the body is not JSON, or not a dict with exactly one input format.
    """
    try:
        payload = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        ) from None
    except RecursionError:
        raise BadRequest("the request body nests JSON arrays or objects too deeply to read") from None
    return parse_json_payload(payload, schema)


def parse_json_payload(payload: Any, schema: Schema | None) -> ParsedInput:
    """A decoded JSON request (a dict with one input format and optional ``params``) as model input.

    Raises:
        BadRequest: not a dict, no or several input formats, a format's value of the wrong shape,
            ``params`` not an object.
    """
    if not isinstance(payload, dict):
        got = "a list" if isinstance(payload, list) else f"a JSON {type(payload).__name__}"
        raise BadRequest(
            f"the request must be a JSON object with exactly one of {_format_list()} (and optionally 'params'); "
            f"got {got}"
        )
    formats = [key for key in INPUT_FORMATS if key in payload]
    if len(formats) != 1:
        found = "none of them" if not formats else f"{len(formats)} of them ({', '.join(formats)})"
        raise BadRequest(
            f"the request must have exactly one of {_format_list()} (and optionally 'params'); "
            f"it has {found}; its keys are {sorted(str(k) for k in payload)}"
        )
    unknown = sorted(str(k) for k in payload if k not in INPUT_FORMATS and k != PARAMS)
    if unknown:
        raise BadRequest(f"unknown request field(s) {unknown}: use one of {_format_list()} and optionally 'params'")
    params = payload.get(PARAMS)
    if params is not None and not isinstance(params, dict):
        raise BadRequest(f"'params' must be a JSON object of name -> value, got {type(params).__name__}")
    key = formats[0]
    value = payload[key]
    if key == DF_SPLIT:
        data = _from_split(value, schema)
    elif key == DF_RECORDS:
        data = _from_records(value, schema)
    elif key == INSTANCES:
        data = _from_instances(value, schema)
    else:
        data = _from_inputs(value, schema)
    return ParsedInput(data, params)


def parse_csv(body: bytes | str, schema: Schema | None) -> ParsedInput:
    """A CSV body (a header line, then rows) as a DataFrame; string columns of the signature stay text.

    Raises:
        BadRequest: pandas cannot read the CSV.
    """
    import pandas as pd

    dtype = None
    if schema is not None and not schema.is_tensor_spec() and schema.has_input_names():
        dtype = {s.name: str for s in schema.inputs if isinstance(s, ColSpec) and s.type == "string"} or None
    source = io.BytesIO(body) if isinstance(body, bytes) else io.StringIO(body)
    try:
        frame = pd.read_csv(source, dtype=dtype)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise BadRequest(f"the request body is not a CSV table with a header line: {exc}") from None
    return ParsedInput(_coerce_frame(frame, schema), None)


def parse_parquet(body: bytes | Any, schema: Schema | None) -> ParsedInput:
    """A Parquet body (bytes or a path) as a DataFrame.

    Raises:
        BadRequest: pyarrow is not installed, or the body is not a Parquet file.
    """
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise BadRequest("reading Parquet needs pyarrow: pip install pyarrow") from None
    source = io.BytesIO(body) if isinstance(body, bytes) else body
    try:
        frame = pd.read_parquet(source)
    except (ValueError, OSError) as exc:
        raise BadRequest(f"the input is not a Parquet file: {exc}") from None
    return ParsedInput(_coerce_frame(frame, schema), None)


# ------------------------------------------------------------------------------------- input shapes


def _from_split(value: Any, schema: Schema | None) -> Any:
    import numpy as np
    import pandas as pd

    if not isinstance(value, dict):
        raise BadRequest(
            f"'dataframe_split' must be an object with 'data' and optionally 'columns' and 'index', "
            f"got {type(value).__name__}"
        )
    extra = sorted(set(value) - {"columns", "data", "index"})
    if "data" not in value or extra:
        raise BadRequest(
            f"'dataframe_split' must have 'data' and optionally 'columns' and 'index'; got keys {sorted(value)}"
        )
    rows, columns, index = value["data"], value.get("columns"), value.get("index")
    if not isinstance(rows, list):
        raise BadRequest(f"'dataframe_split.data' must be a list of rows, got {type(rows).__name__}")
    if columns is not None and not isinstance(columns, list):
        raise BadRequest(f"'dataframe_split.columns' must be a list of names, got {type(columns).__name__}")
    targets = _numeric_targets(schema, columns) if rows and columns is not None else None
    if targets is not None and columns is not None:
        # Every column is a numeric column of the signature: numpy builds the block far faster than pandas
        # builds a frame from row lists. Anything else (text, null, bool, ragged rows) goes through pandas.
        try:
            block = np.array(rows)
        except ValueError:
            block = None
        if (
            block is not None
            and block.ndim == 2
            and block.dtype.kind in "iuf"
            and block.shape[1] == len(targets)
            and not (block.dtype.kind == "f" and any(t.kind in "iu" for t in targets))  # ints would become floats
        ):
            if len(set(targets)) == 1:  # one dtype for every column: coerce the block once
                block = _coerce_array(block, targets[0])
                return pd.DataFrame(block, columns=_column_index(columns), index=index, copy=False)
            frame = pd.DataFrame(block, columns=_column_index(columns), index=index, copy=False)
            return _coerce_frame(frame, schema)
    try:
        frame = pd.DataFrame(data=rows, columns=columns, index=index)
    except (ValueError, TypeError, AssertionError) as exc:
        raise BadRequest(f"'dataframe_split' is not a table: {exc}") from None
    return _coerce_frame(frame, schema)


def _column_index(columns: list[Any]) -> Any:
    """The pandas Index of these column names, reused across requests (pandas takes longer to make it than
    a small frame)."""
    import pandas as pd

    if all(isinstance(c, str) for c in columns):
        return _string_index(tuple(columns))
    return pd.Index(columns)


@functools.lru_cache(maxsize=64)
def _string_index(columns: tuple[str, ...]) -> Any:
    import pandas as pd

    return pd.Index(columns)


def _numeric_targets(schema: Schema | None, columns: list[Any]) -> list[Any] | None:
    """The numpy dtype of each of ``columns`` when every one is a distinct numeric column of the signature."""
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names() or not columns:
        return None
    if len(set(map(str, columns))) != len(columns):
        return None
    specs = _specs_by_name(schema)
    targets = []
    for name in columns:
        target = _numpy_target(specs.get(name)) if isinstance(name, str) else None
        if target is None or target.kind not in "iuf":
            return None
        targets.append(target)
    return targets


def _from_records(value: Any, schema: Schema | None) -> Any:
    import pandas as pd

    if not isinstance(value, list):
        raise BadRequest(f"'dataframe_records' must be a list of records (objects), got {type(value).__name__}")
    try:
        frame = pd.DataFrame(data=value)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"'dataframe_records' is not a list of records: {exc}") from None
    return _coerce_frame(frame, schema)


def _from_instances(value: Any, schema: Schema | None) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        if not all(isinstance(row, dict) for row in value):
            raise BadRequest("'instances' mixes objects and other values: give a list of objects or a list of rows")
        names: dict[str, None] = {}
        for row in value:
            names.update(dict.fromkeys(row))
        lengths_differ = any(len(row) != len(names) for row in value)
        if lengths_differ:
            missing = next(sorted(set(names) - set(row)) for row in value if len(row) != len(names))
            raise BadRequest(f"every 'instances' object must have the same fields; one lacks {missing}")
        return _from_inputs({name: [row[name] for row in value] for name in names}, schema)
    return _from_inputs(value, schema)


def _from_inputs(value: Any, schema: Schema | None) -> Any:
    if isinstance(value, dict):
        specs = _specs_by_name(schema)
        return {str(k): _array(v, specs.get(str(k)), f"input {k!r}") for k, v in value.items()}
    if schema is not None and not schema.is_tensor_spec() and schema.has_input_names() and len(schema.inputs) == 1:
        column = schema.inputs[0]
        if isinstance(value, list) and not any(isinstance(v, (list, dict)) for v in value):
            return {str(column.name): _array(value, column, f"input {column.name!r}")}
    only = schema.inputs[0] if schema is not None and len(schema.inputs) == 1 else None
    return _array(value, only, "input")


def _specs_by_name(schema: Schema | None) -> dict[str, Any]:
    if schema is None or not schema.has_input_names():
        return {}
    return {str(s.name): s for s in schema.inputs}


def _array(value: Any, spec: Any, label: str) -> Any:
    import numpy as np

    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        if isinstance(spec, TensorSpec) and spec.dtype == "object":
            return np.asarray(value, dtype=object)
        raise BadRequest(f"{label}: not a rectangular array: {exc}") from None
    array = _coerce_array(array, _numpy_target(spec))
    return array[()] if array.ndim == 0 else array  # a JSON scalar stays a scalar (one row of a column)


def _numpy_target(spec: Any) -> Any:
    import numpy as np

    if isinstance(spec, TensorSpec):
        try:
            return np.dtype(spec.dtype)
        except TypeError:
            return None
    if isinstance(spec, ColSpec) and isinstance(spec.type, str) and spec.type in COLUMN_TYPES:
        try:
            return np.dtype(COLUMN_TYPES[spec.type])
        except TypeError:
            return None
    return None


def _coerce_array(array: Any, target: Any) -> Any:
    """``array`` in ``target``'s numeric width when JSON's int64/float64 only stand for "a number"."""
    import numpy as np

    if target is None or array.dtype == target:
        return array
    kind, want = array.dtype.kind, target.kind
    if kind == "f" and want == "f":
        return array.astype(target)
    if kind in "iu" and want in "iu":
        info = np.iinfo(target)
        if array.size == 0 or (int(array.min()) >= info.min and int(array.max()) <= info.max):
            return array.astype(target)
    return array


def _coerce_frame(frame: Any, schema: Schema | None) -> Any:
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return frame
    for spec in schema.inputs:
        if isinstance(spec, ColSpec) and spec.name in frame.columns:
            target = _numpy_target(spec)
            if target is not None and target.kind in "iuf":
                column = frame[spec.name]
                coerced = _coerce_array(column.to_numpy(), target) if column.dtype.kind in "iuf" else None
                if coerced is not None and coerced.dtype != column.dtype:
                    frame[spec.name] = coerced
    return frame


# ------------------------------------------------------------------------------------------ output


def to_jsonable(value: Any) -> Any:
    """Predictions as plain JSON values, shaped as MLflow's server shapes them.

    Arrays become (nested) lists, a DataFrame a list of records, a Series a list of one-field records
    (``pd.DataFrame(series)`` records, as MLflow), a dict of arrays a dict of lists.
    """
    module = type(value).__module__.split(".", 1)[0]
    if module == "numpy":
        return value.tolist()
    if module == "pandas":
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            return value.to_dict(orient="records")
        if isinstance(value, pd.Series):
            return pd.DataFrame(value).to_dict(orient="records")
    if module == "torch":
        return value.detach().cpu().numpy().tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def _default(value: Any) -> Any:
    """``json.dumps`` fallback for what :func:`to_jsonable` left inside lists and records."""
    module = type(value).__module__.split(".", 1)[0]
    if module == "numpy":
        return value.tolist() if hasattr(value, "tolist") else value.item()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time)) or hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"the model returned a {type(value).__name__}, which cannot be written as JSON")


def predictions_payload(predictions: Any) -> bytes:
    """``{"predictions": ...}`` as UTF-8 JSON bytes.

    Raises:
        InvalidArgument: the predictions hold values that cannot be written as JSON.
    """
    try:
        return json.dumps({"predictions": to_jsonable(predictions)}, default=_default).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(str(exc)) from None
