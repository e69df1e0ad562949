"""Schema types serialize to MLflow's exact JSON strings and reject invalid combinations."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import torch

from cairn.errors import InvalidArgument, SchemaMismatch
from cairn.models import ColSpec, ModelSignature, ParamSchema, ParamSpec, Schema, TensorSpec


def test_column_spec_json_matches_mlflow() -> None:
    schema = Schema([ColSpec("double", "x"), ColSpec("string", "s", required=False)])
    assert schema.to_json() == (
        '[{"type": "double", "name": "x", "required": true}, {"type": "string", "name": "s", "required": false}]'
    )
    assert Schema([ColSpec("long")]).to_json() == '[{"type": "long", "required": true}]'


def test_tensor_spec_json_matches_mlflow() -> None:
    assert Schema([TensorSpec("float32", (-1, 4))]).to_json() == (
        '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]'
    )
    assert Schema([TensorSpec("int64", [-1], "ids")]).to_json() == (
        '[{"name": "ids", "type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'
    )


def test_param_spec_json_matches_mlflow() -> None:
    schema = ParamSchema(
        [
            ParamSpec("k", "long", 3),
            ParamSpec("tags", "string", ["a", "b"], (-1,)),
            ParamSpec("at", "datetime", dt.datetime(2024, 5, 1, 12, 0)),
        ]
    )
    assert schema.to_json() == (
        '[{"name": "k", "default": 3, "shape": null, "type": "long"}, '
        '{"name": "tags", "default": ["a", "b"], "shape": [-1], "type": "string"}, '
        '{"name": "at", "default": "2024-05-01T12:00:00", "shape": null, "type": "datetime"}]'
    )
    assert ParamSchema.from_json(schema.to_json()) == schema


def test_structured_column_types_are_kept_verbatim() -> None:
    text = (
        '[{"type": "array", "items": {"type": "string"}, "name": "tokens", "required": true}, '
        '{"type": "object", "properties": {"a": {"type": "long", "required": true}}, '
        '"name": "meta", "required": false}]'
    )
    schema = Schema.from_json(text)
    first = schema.inputs[0]
    assert isinstance(first, ColSpec) and first.type_name == "array"
    assert schema.to_json() == text


def test_all_mlflow_column_types_are_accepted() -> None:
    types = ["boolean", "integer", "long", "float", "double", "string", "binary", "datetime"]
    schema = Schema([ColSpec(t, t) for t in types])
    assert Schema.from_json(schema.to_json()) == schema
    assert schema.input_types() == types


def test_tensor_dtypes_normalize_like_mlflow() -> None:
    assert TensorSpec(np.dtype("<U7"), (-1,)).dtype == "str"
    assert TensorSpec(np.dtype("S3"), (-1,)).dtype == "bytes"
    assert TensorSpec(np.dtype("float16"), (-1,)).dtype == "float16"
    assert TensorSpec(torch.float32, (-1, 2)).dtype == "float32"
    assert TensorSpec("float32", (-1,)).type == "float32"  # MLflow's attribute name
    with pytest.raises(InvalidArgument, match="bfloat16 has no numpy equivalent"):
        TensorSpec(torch.bfloat16, (-1,))
    with pytest.raises(InvalidArgument, match="unsupported tensor dtype 'str160'"):
        TensorSpec("str160", (-1,))
    with pytest.raises(InvalidArgument, match="below -1"):
        TensorSpec("float32", (-2,))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "non-empty list"),
        ([ColSpec("double", "x"), TensorSpec("float32", (-1,), "t")], "cannot mix ColSpec and TensorSpec"),
        ([ColSpec("double", "x"), ColSpec("double")], "cannot mix named and unnamed"),
        ([ColSpec("double", "x"), ColSpec("long", "x")], r"duplicate input names in Schema: \['x'\]"),
        ([ColSpec("double", required=False)], "unnamed inputs cannot be optional"),
    ],
)
def test_invalid_schemas_are_refused(inputs: list[ColSpec | TensorSpec], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Schema(inputs)


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="unsupported column type 'decimal'"):
        ColSpec("decimal", "x")
    with pytest.raises(InvalidArgument, match="unsupported type 'binary'"):
        ParamSpec("p", "binary", b"x")
    with pytest.raises(InvalidArgument, match=r"shape must be None or \(-1,\)"):
        ParamSpec("p", "long", [1], (2,))
    with pytest.raises(SchemaMismatch, match="param 'p': expected long, got str"):
        ParamSpec("p", "long", "three")
    with pytest.raises(InvalidArgument, match=r"duplicate params in ParamSchema: \['p'\]"):
        ParamSchema([ParamSpec("p", "long", 1), ParamSpec("p", "long", 2)])
    with pytest.raises(InvalidArgument, match="at least one of inputs, outputs or params"):
        ModelSignature()


def test_signature_dict_round_trip_and_legacy_param_key() -> None:
    signature = ModelSignature(
        Schema([ColSpec("double", "x")]),
        Schema([TensorSpec("float32", (-1,))]),
        ParamSchema([ParamSpec("t", "double", 0.5)]),
    )
    assert ModelSignature.from_dict(signature.to_dict()) == signature
    legacy = '[{"name": "t", "dtype": "double", "default": 0.5}]'  # MLflow 2.6 wrote "dtype"
    assert ParamSchema.from_json(legacy) == ParamSchema([ParamSpec("t", "double", 0.5)])
    assert json.loads(signature.to_dict()["inputs"] or "") == [{"type": "double", "name": "x", "required": True}]


def test_schema_helpers() -> None:
    schema = Schema([ColSpec("double", "a"), ColSpec("long", "b", required=False)])
    assert schema.input_names() == ["a", "b"]
    assert schema.required_input_names() == ["a"]
    assert schema.optional_input_names() == ["b"]
    assert schema.has_input_names() and not schema.is_tensor_spec()
    assert len(schema) == 2 and [s.name for s in schema] == ["a", "b"]
    assert Schema([ColSpec("double"), ColSpec("double")]).input_names() == [0, 1]
