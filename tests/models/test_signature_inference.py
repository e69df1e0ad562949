"""infer_signature for every supported kind of example data, with MLflow's type rules."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch

from cairn.errors import InvalidArgument
from cairn.models import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec, infer_signature


def test_dataframe_columns() -> None:
    frame = pd.DataFrame(
        {
            "x": [1.0, 2.0],
            "f": np.array([1, 2], dtype=np.float32),
            "n": [1, 2],
            "i": np.array([1, 2], dtype=np.int32),
            "s": ["a", "b"],
            "o": pd.Series(["a", "b"], dtype=object),
            "b": [True, False],
            "raw": [b"a", b"b"],
            "t": pd.to_datetime(["2024-01-01", "2024-01-02"]),
            "gap": [1.0, None],
            "tokens": [["a"], ["b", "c"]],
        }
    )
    inputs = infer_signature(frame).inputs
    assert inputs == Schema(
        [
            ColSpec("double", "x"),
            ColSpec("float", "f"),
            ColSpec("long", "n"),
            ColSpec("integer", "i"),
            ColSpec("string", "s"),
            ColSpec("string", "o"),
            ColSpec("boolean", "b"),
            ColSpec("binary", "raw"),
            ColSpec("datetime", "t"),
            ColSpec("double", "gap", required=False),
            ColSpec({"type": "array", "items": {"type": "string"}}, "tokens"),
        ]
    )


def test_numpy_array_gives_tensor_with_free_batch_dimension() -> None:
    signature = infer_signature(np.zeros((5, 3, 2), dtype=np.float32), np.zeros(5))
    assert signature.inputs == Schema([TensorSpec("float32", (-1, 3, 2))])
    assert signature.outputs == Schema([TensorSpec("float64", (-1,))])
    assert infer_signature(np.array(["a", "bcd"])).inputs == Schema([TensorSpec("str", (-1,))])


def test_dict_of_arrays_gives_named_tensors() -> None:
    inputs = infer_signature({"ids": np.zeros((2, 8), dtype=np.int64), "mask": np.ones((2, 8), dtype=bool)}).inputs
    assert inputs == Schema([TensorSpec("int64", (-1, 8), "ids"), TensorSpec("bool", (-1, 8), "mask")])


def test_torch_tensors() -> None:
    signature = infer_signature(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    assert signature.inputs == Schema([TensorSpec("float32", (-1, 3))])
    assert signature.outputs == Schema([TensorSpec("int64", (-1,))])
    named = infer_signature({"x": torch.zeros(2, 5, dtype=torch.float16)}).inputs
    assert named == Schema([TensorSpec("float16", (-1, 5), "x")])
    with pytest.raises(InvalidArgument, match="bfloat16"):
        infer_signature(torch.zeros(2, 2, dtype=torch.bfloat16))


def test_list_of_strings_is_one_string_column() -> None:
    assert infer_signature(["a", "b"]).inputs == Schema([ColSpec("string")])
    assert infer_signature([1, 2.5]).inputs == Schema([ColSpec("double")])


def test_dicts_and_records() -> None:
    assert infer_signature({"question": "why?", "context": ["a", "b"]}).inputs == Schema(
        [ColSpec("string", "question"), ColSpec({"type": "array", "items": {"type": "string"}}, "context")]
    )
    records = infer_signature([{"a": 1, "b": "x"}, {"a": 2}]).inputs
    assert records == Schema([ColSpec("long", "a"), ColSpec("string", "b", required=False)])


def test_series_and_scalar() -> None:
    assert infer_signature(pd.Series([1, 2], name="y")).inputs == Schema([ColSpec("long", "y")])
    assert infer_signature(pd.Series([0.5])).inputs == Schema([ColSpec("double")])
    assert infer_signature("text").inputs == Schema([ColSpec("string")])


def test_params() -> None:
    params = infer_signature(
        np.zeros((1, 1)),
        params={"k": 3, "t": 0.5, "on": True, "name": "x", "ids": [1, 2], "at": dt.datetime(2024, 1, 1)},
    ).params
    assert params == ParamSchema(
        [
            ParamSpec("k", "long", 3),
            ParamSpec("t", "double", 0.5),
            ParamSpec("on", "boolean", True),
            ParamSpec("name", "string", "x"),
            ParamSpec("ids", "long", [1, 2], (-1,)),
            ParamSpec("at", "datetime", dt.datetime(2024, 1, 1)),
        ]
    )
    assert infer_signature(params={"n": np.float32(1.5)}).params == ParamSchema([ParamSpec("n", "float", 1.5)])


def test_uninferable_data_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="gap: every value is missing"):
        infer_signature(pd.DataFrame({"gap": [None, None]}))
    with pytest.raises(InvalidArgument, match="values of several types"):
        infer_signature(["a", 1])
    with pytest.raises(InvalidArgument, match="cannot infer a schema from set"):
        infer_signature({1, 2})
    with pytest.raises(InvalidArgument, match=r"params: 'bad': .*nested list"):
        infer_signature(params={"bad": [[1]]})
