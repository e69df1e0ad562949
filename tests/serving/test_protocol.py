"""Request bodies to model input (cairn.serving.protocol), checked through the real signature enforcement."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cairn.errors import SchemaMismatch
from cairn.models.enforcement import enforce_schema
from cairn.models.schema import ColSpec, Schema, TensorSpec
from cairn.serving import protocol

MIXED = Schema([ColSpec("double", "x"), ColSpec("boolean", "flag"), ColSpec("long", "n"), ColSpec("string", "s")])
FLOATS = Schema([ColSpec("float", "a"), ColSpec("float", "b")])


def _split(columns: list[str], data: list[list[object]], schema: Schema) -> pd.DataFrame:
    body = json.dumps({"dataframe_split": {"columns": columns, "data": data}})
    frame = protocol.parse_json(body, schema).data
    assert isinstance(frame, pd.DataFrame)
    return frame


def test_mixed_columns_keep_their_types() -> None:
    frame = _split(["x", "flag", "n", "s"], [[1.5, True, 3, "u"], [2.0, False, 4, "v"]], MIXED)
    checked = enforce_schema(frame, MIXED)
    assert checked.dtypes.astype(str).tolist()[:3] == ["float64", "bool", "int64"]
    assert checked["s"].tolist() == ["u", "v"]


def test_json_numbers_take_the_signature_width() -> None:
    frame = _split(["a", "b"], [[1.5, 2.0], [0.1, 3.25]], FLOATS)
    assert frame.dtypes.astype(str).tolist() == ["float32", "float32"]
    assert enforce_schema(frame, FLOATS)["a"].tolist() == pytest.approx([1.5, 0.1])


def test_a_float_in_an_integer_column_is_named() -> None:
    frame = _split(["x", "flag", "n", "s"], [[1.5, True, 3.5, "u"]], MIXED)
    with pytest.raises(SchemaMismatch, match=r"column 'n'.*long"):
        enforce_schema(frame, MIXED)


def test_nulls_go_through_pandas() -> None:
    schema = Schema([ColSpec("double", "a"), ColSpec("double", "b", required=False)])
    frame = _split(["a", "b"], [[1.0, None], [2.0, 3.0]], schema)
    assert np.isnan(enforce_schema(frame, schema)["b"].iloc[0])


def test_tensor_inputs_take_the_signature_dtype() -> None:
    schema = Schema([TensorSpec("float32", (-1, 2))])
    data = protocol.parse_json(json.dumps({"inputs": [[1, 2], [3.5, 4]]}), schema).data
    assert data.dtype == np.float32
    named = Schema([TensorSpec("int32", (-1,), "ids"), TensorSpec("float64", (-1, 2), "x")])
    parsed = protocol.parse_json(json.dumps({"inputs": {"ids": [1, 2], "x": [[1, 2], [3, 4]]}}), named).data
    assert parsed["ids"].dtype == np.int32
    assert enforce_schema(parsed, named)["x"].dtype == np.float64  # JSON ints, exactly representable
    too_big = protocol.parse_json(json.dumps({"inputs": {"ids": [2**40], "x": [[1, 2]]}}), named).data
    with pytest.raises(SchemaMismatch, match="tensor 'ids'"):  # not silently wrapped into int32
        enforce_schema(too_big, named)


def test_instances_of_records_become_columns() -> None:
    data = protocol.parse_json(json.dumps({"instances": [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]}), FLOATS).data
    assert set(data) == {"a", "b"} and data["a"].dtype == np.float32
    with pytest.raises(protocol.BadRequest, match="same fields"):
        protocol.parse_json(json.dumps({"instances": [{"a": 1.0}, {"b": 2.0, "a": 1.0}]}), FLOATS)


def test_predictions_payload_shapes() -> None:
    assert json.loads(protocol.predictions_payload(np.array([1, 2]))) == {"predictions": [1, 2]}
    frame = pd.DataFrame({"p": [0.5]})
    assert json.loads(protocol.predictions_payload(frame)) == {"predictions": [{"p": 0.5}]}
    series = pd.Series([1, 2], name="y")
    assert json.loads(protocol.predictions_payload(series)) == {"predictions": [{"y": 1}, {"y": 2}]}
    both = {"a": np.zeros((1, 2), dtype=np.float32), "b": np.array([True])}
    assert json.loads(protocol.predictions_payload(both)) == {"predictions": {"a": [[0.0, 0.0]], "b": [True]}}


def test_inputs_of_scalars_are_one_row() -> None:
    data = protocol.parse_json(json.dumps({"inputs": {"a": 1.5, "b": 2}}), FLOATS).data
    checked = enforce_schema(data, FLOATS)
    assert checked.shape == (1, 2) and checked["a"].tolist() == [1.5] and checked["b"].tolist() == [2.0]


def test_json_nested_too_deeply_is_a_bad_request() -> None:
    with pytest.raises(protocol.BadRequest, match="too deeply"):
        protocol.parse_json(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", FLOATS)
