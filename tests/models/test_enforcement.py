"""enforce_schema / enforce_params: safe conversions are applied, every unsafe input is refused by name."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from cairn.errors import SchemaMismatch
from cairn.models import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec, enforce_params, enforce_schema

COLUMNS = Schema(
    [
        ColSpec("double", "x"),
        ColSpec("long", "n"),
        ColSpec("string", "s"),
        ColSpec("float", "opt", required=False),
    ]
)
TENSOR = Schema([TensorSpec("float32", (-1, 4))])
NAMED = Schema([TensorSpec("float32", (-1, 2), "a"), TensorSpec("int64", (-1,), "b")])


# ----------------------------------------------------------------------------- columns: success


def test_widening_reorder_and_extra_columns_dropped() -> None:
    frame = pd.DataFrame({"s": ["a", "b"], "n": np.array([1, 2], dtype=np.int32), "x": [1, 2], "extra": [0, 0]})
    out = enforce_schema(frame, COLUMNS)
    assert list(out.columns) == ["x", "n", "s"]
    assert out["x"].dtype == np.float64 and out["x"].tolist() == [1.0, 2.0]
    assert out["n"].dtype == np.int64
    assert out["s"].tolist() == ["a", "b"]


def test_optional_column_is_converted_when_present() -> None:
    frame = pd.DataFrame({"x": [1.0], "n": [1], "s": ["a"], "opt": np.array([2], dtype=np.int16)})
    assert enforce_schema(frame, COLUMNS)["opt"].dtype == np.float32


@pytest.mark.parametrize(
    "data",
    [
        {"x": 1.5, "n": 3, "s": "q"},
        [{"x": 1.5, "n": 3, "s": "q"}],
        {"x": [1.5], "n": [3], "s": ["q"]},
    ],
    ids=["dict-row", "records", "dict-columns"],
)
def test_dicts_and_lists_become_dataframes(data: object) -> None:
    out = enforce_schema(data, COLUMNS)
    assert out.to_dict(orient="records") == [{"x": 1.5, "n": 3, "s": "q"}]


def test_numpy_array_of_matching_width_takes_column_names() -> None:
    schema = Schema([ColSpec("double", "a"), ColSpec("double", "b")])
    out = enforce_schema(np.array([[1.0, 2.0], [3.0, 4.0]]), schema)
    assert list(out.columns) == ["a", "b"] and out["b"].tolist() == [2.0, 4.0]
    single = enforce_schema(["hi", "there"], Schema([ColSpec("string", "text")]))
    assert single["text"].tolist() == ["hi", "there"]


def test_unnamed_columns_are_checked_by_position() -> None:
    schema = Schema([ColSpec("double"), ColSpec("string")])
    out = enforce_schema(pd.DataFrame({"p": [1], "q": ["z"]}), schema)
    assert out["p"].dtype == np.float64 and list(out.columns) == ["p", "q"]


def test_other_column_types() -> None:
    schema = Schema([ColSpec("boolean", "b"), ColSpec("binary", "raw"), ColSpec("datetime", "t")])
    frame = pd.DataFrame({"b": [True], "raw": [b"\x00"], "t": ["2024-05-01 12:00:00"]})
    out = enforce_schema(frame, schema)
    assert out["t"].dtype.kind == "M" and out["t"][0] == pd.Timestamp("2024-05-01 12:00:00")
    assert out["raw"].tolist() == [b"\x00"]


# ----------------------------------------------------------------------------- columns: failures


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (
            pd.DataFrame({"x": [1.0], "s": ["a"], "z": [0]}),
            r"input is missing required column\(s\) 'n' \(long\); got columns \['x', 's', 'z'\]",
        ),
        (
            pd.DataFrame({"x": [1.0], "n": [1.5], "s": ["a"]}),
            r"column 'n': expected long \(int64\), got float64 \(floats would be truncated to integers\)$",
        ),
        (
            pd.DataFrame({"x": ["1.0"], "n": [1], "s": ["a"]}),
            r"column 'x': expected double \(float64\), got str",
        ),
        (
            pd.DataFrame({"x": [1.0], "n": [1], "s": [3]}),
            r"column 's': expected string, got int64",
        ),
        (
            pd.DataFrame({"x": [1.0, 2.0], "n": [1, 2], "s": pd.Series(["a", 2], dtype=object)}),
            r"column 's': expected string, got object \(int, str\)",
        ),
        (
            pd.DataFrame({"x": [2**60], "n": [1], "s": ["a"]}),
            r"column 'x': expected double \(float64\), got int64 with values beyond",
        ),
        (
            pd.DataFrame({"x": [1.0], "n": [1], "s": ["a"], "opt": [0.1]}),
            r"column 'opt': expected float \(float32\), got float64 \(narrowing float64 to float32",
        ),
        (
            pd.DataFrame({"x": [True], "n": [1], "s": ["a"]}),
            r"column 'x': expected double \(float64\), got bool",
        ),
    ],
    ids=["missing", "float-to-int", "str-to-number", "number-to-str", "mixed", "big-int", "narrow", "bool"],
)
def test_column_failures_name_column_and_dtypes(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(SchemaMismatch, match=message):
        enforce_schema(frame, COLUMNS)


def test_nan_hint_when_whole_numbers_have_missing_values() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "n": [1.0, np.nan], "s": ["a", "b"]})
    with pytest.raises(SchemaMismatch, match=r"whole numbers, but missing values \(NaN\)"):
        enforce_schema(frame, COLUMNS)


def test_int64_to_int32_is_refused() -> None:
    with pytest.raises(SchemaMismatch, match=r"column 'i': expected integer \(int32\), got int64 \(narrowing"):
        enforce_schema(pd.DataFrame({"i": [1]}), Schema([ColSpec("integer", "i")]))


def test_array_of_wrong_width_or_rank_is_refused() -> None:
    schema = Schema([ColSpec("double", "a"), ColSpec("double", "b")])
    with pytest.raises(
        SchemaMismatch, match=r"takes 2 column\(s\) \['a': double, 'b': double\]; got an array of shape \(2, 3\)"
    ):
        enforce_schema(np.zeros((2, 3)), schema)
    with pytest.raises(SchemaMismatch, match=r"got an array of shape \(1, 2, 2\)"):
        enforce_schema(np.zeros((1, 2, 2)), schema)
    with pytest.raises(SchemaMismatch, match="got a torch tensor"):
        enforce_schema(torch.zeros(2, 2), schema)


def test_too_few_unnamed_columns() -> None:
    with pytest.raises(SchemaMismatch, match=r"takes 2 unnamed column\(s\) \[double, string\]; got 1"):
        enforce_schema(pd.DataFrame({"p": [1.0]}), Schema([ColSpec("double"), ColSpec("string")]))


def test_datetime_refuses_text_that_is_not_a_date() -> None:
    with pytest.raises(SchemaMismatch, match="column 't': expected datetime, got str that are not dates"):
        enforce_schema(pd.DataFrame({"t": ["soon"]}), Schema([ColSpec("datetime", "t")]))


# ----------------------------------------------------------------------------- tensors


def test_tensor_widening() -> None:
    assert enforce_schema(np.zeros((2, 4), dtype=np.float16), TENSOR).dtype == np.float32
    assert enforce_schema(np.arange(8, dtype=np.int32).reshape(2, 4), TENSOR).dtype == np.float32
    assert enforce_schema([[1.0, 2.0, 3.0, 4.0]], Schema([TensorSpec("float64", (-1, 4))])).shape == (1, 4)
    same = np.zeros((3, 4), dtype=np.float32)
    assert enforce_schema(same, TENSOR) is same


def test_torch_tensors_are_checked_and_widened_in_torch() -> None:
    out = enforce_schema(torch.ones(2, 4, dtype=torch.int8), TENSOR)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    with pytest.raises(SchemaMismatch, match="input tensor: expected dtype float32, got bfloat16"):
        enforce_schema(torch.ones(2, 4, dtype=torch.bfloat16), TENSOR)
    with pytest.raises(SchemaMismatch, match=r"input tensor: expected shape \(-1, 4\), got shape \(2, 3\)"):
        enforce_schema(torch.ones(2, 3), TENSOR)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((2, 4)), r"input tensor: expected dtype float32, got float64 \(narrowing float64 to float32"),
        (
            np.zeros((2, 5), dtype=np.float32),
            r"expected shape \(-1, 4\), got shape \(2, 5\) \(dimension 1 is 5, not 4\)",
        ),
        (
            np.zeros((2, 4, 1), dtype=np.float32),
            r"expected shape \(-1, 4\) \(rank 2\), got shape \(2, 4, 1\) \(rank 3\)",
        ),
        (np.full((1, 4), 2**30, dtype=np.int64), r"got int64 with values beyond \+-16777216"),
        (np.array([["a", "b", "c", "d"]]), "expected dtype float32, got str"),
        ({"x": np.zeros((1, 4))}, r"takes one unnamed tensor float32 of shape \(-1, 4\); got a dict"),
    ],
    ids=["narrow", "fixed-dim", "rank", "big-int", "str", "dict"],
)
def test_tensor_failures(data: object, message: str) -> None:
    with pytest.raises(SchemaMismatch, match=message):
        enforce_schema(data, TENSOR)


def test_float_tensor_to_int_spec_is_refused() -> None:
    with pytest.raises(SchemaMismatch, match=r"expected dtype int64, got float32 \(floats would be truncated"):
        enforce_schema(np.zeros(3, dtype=np.float32), Schema([TensorSpec("int64", (-1,))]))


def test_named_tensors() -> None:
    out = enforce_schema({"b": [1, 2], "a": np.zeros((2, 2), dtype=np.float32), "extra": 1}, NAMED)
    assert list(out) == ["a", "b"] and out["b"].dtype == np.int64
    with pytest.raises(SchemaMismatch, match=r"input is missing tensor\(s\) \['b'\]; got \['a'\]"):
        enforce_schema({"a": np.zeros((1, 2), dtype=np.float32)}, NAMED)
    with pytest.raises(SchemaMismatch, match=r"tensor 'b': expected shape \(-1,\) \(rank 1\), got shape \(1, 1\)"):
        enforce_schema({"a": np.zeros((1, 2), dtype=np.float32), "b": np.zeros((1, 1), dtype=np.int64)}, NAMED)
    frame = pd.DataFrame({"a": [[1.0, 2.0]], "b": [7]})
    from_frame = enforce_schema(frame, Schema([TensorSpec("float64", (-1, 2), "a"), TensorSpec("int64", (-1,), "b")]))
    assert from_frame["a"].shape == (1, 2) and from_frame["b"].tolist() == [7]
    with pytest.raises(SchemaMismatch, match=r"takes tensors \['a', 'b'\]; pass a dict of arrays"):
        enforce_schema(np.zeros((1, 2)), NAMED)


def test_object_tensor_accepts_anything() -> None:
    ragged = np.array([np.zeros(2), np.zeros(3)], dtype=object)
    assert enforce_schema(ragged, Schema([TensorSpec("object", (-1,))])) is ragged


# ----------------------------------------------------------------------------- params

PARAMS = ParamSchema(
    [
        ParamSpec("k", "long", 3),
        ParamSpec("t", "double", 0.5),
        ParamSpec("names", "string", ["a"], (-1,)),
        ParamSpec("at", "datetime", None),
    ]
)


def test_params_defaults_and_safe_conversions() -> None:
    out = enforce_params({"t": 1, "at": "2024-05-01T12:00:00"}, PARAMS)
    assert out["k"] == 3 and out["names"] == ["a"]
    assert out["t"] == 1.0 and isinstance(out["t"], float)
    assert out["at"].isoformat() == "2024-05-01T12:00:00"
    assert enforce_params(None, PARAMS)["t"] == 0.5
    assert enforce_params({"names": np.array(["x", "y"])}, PARAMS)["names"] == ["x", "y"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": 1.5}, r"param 'k': expected long, got float \(1.5\)"),
        ({"k": True}, r"param 'k': expected long, got bool"),
        ({"t": "0.1"}, r"param 't': expected double, got str"),
        ({"names": "a"}, r"param 'names': expected a 1-D list of string \(shape \(-1,\)\), got 'a'"),
        ({"names": ["a", 1]}, r"param 'names'\[1\]: expected string, got int"),
        ({"at": "tomorrow"}, r"param 'at': 'tomorrow' is not an ISO 8601 datetime"),
    ],
)
def test_param_failures(params: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaMismatch, match=message):
        enforce_params(params, PARAMS)


def test_undeclared_params_are_ignored_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"params \['nope'\] are not in the model's param schema"):
        out = enforce_params({"nope": 1}, PARAMS)
    assert "nope" not in out
    with pytest.warns(UserWarning, match="the model declares no params"):
        assert enforce_params({"k": 1}, None) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enforce_params(None, None) == {}


def test_pandas_nullable_and_object_columns() -> None:
    schema = Schema([ColSpec("long", "n"), ColSpec("boolean", "b", required=False)])
    out = enforce_schema(
        pd.DataFrame({"n": pd.array([1, 2], dtype="Int64"), "b": pd.Series([True, False], dtype=object)}), schema
    )
    assert out.dtypes.to_dict() == {"n": np.dtype("int64"), "b": np.dtype("bool")}
    with pytest.raises(SchemaMismatch, match=r"column 'n': cannot convert Int64 to long \(int64\)"):
        enforce_schema(pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}), schema)
