"""Input examples are written in MLflow's formats and read back as the same kind of object."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cairn.errors import ArtifactNotFound, InvalidArgument
from cairn.models import (
    ColSpec,
    Model,
    ModelSignature,
    Schema,
    TensorSpec,
    infer_signature,
    load_input_example,
    load_input_example_params,
    load_serving_input_example,
    save_input_example,
)


def _save_model(directory: Path, example: object) -> Model:
    """A model directory holding ``example``, with the signature inferred from it."""
    data = example[0] if isinstance(example, tuple) else example
    model = Model(signature=infer_signature(data))
    model.saved_input_example_info = save_input_example(directory, example)
    model.save(directory)
    return model


def test_dataframe_round_trip_in_split_orient(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "x": np.array([1.5, np.nan], dtype=np.float32),
            "n": np.array([1, 2], dtype=np.int32),
            "s": ["a", None],
            "raw": [b"\x00\xff", b"z"],
        }
    )
    model = _save_model(tmp_path, frame)
    assert model.saved_input_example_info == {
        "artifact_path": "input_example.json",
        "type": "dataframe",
        "pandas_orient": "split",
        "serving_input_path": "serving_input_example.json",
    }
    stored = json.loads((tmp_path / "input_example.json").read_text())
    assert stored == {"columns": ["x", "n", "s", "raw"], "data": [[1.5, 1, "a", "AP8=\n"], [None, 2, None, "eg==\n"]]}
    serving = json.loads((tmp_path / "serving_input_example.json").read_text())
    assert serving == {"dataframe_split": stored}

    back = load_input_example(tmp_path)
    assert isinstance(back, pd.DataFrame)
    assert back["x"].dtype == np.float32 and back["n"].dtype == np.int32  # dtypes restored from the signature
    assert back["raw"].tolist() == [b"\x00\xff", b"z"]
    assert back["s"][0] == "a" and pd.isna(back["s"][1])
    assert back["x"][0] == 1.5 and np.isnan(back["x"][1])


def test_dataframe_without_column_names_uses_values_orient(tmp_path: Path) -> None:
    info = save_input_example(tmp_path, pd.DataFrame([[1, 2], [3, 4]]))
    assert info["pandas_orient"] == "values"
    assert json.loads((tmp_path / "input_example.json").read_text()) == {"data": [[1, 2], [3, 4]]}
    back = load_input_example(tmp_path, info=info)
    assert back.values.tolist() == [[1, 2], [3, 4]]


def test_ndarray_round_trip_restores_dtype(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = _save_model(tmp_path, array)
    assert model.saved_input_example_info is not None
    assert model.saved_input_example_info["type"] == "ndarray"
    assert json.loads((tmp_path / "input_example.json").read_text()) == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert json.loads((tmp_path / "serving_input_example.json").read_text()) == {"inputs": array.tolist()}
    back = load_input_example(tmp_path)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, array)


def test_dict_of_arrays_and_torch_tensors(tmp_path: Path) -> None:
    example = {"ids": np.array([[1, 2]], dtype=np.int64), "mask": torch.tensor([[True, False]])}
    model = Model(
        signature=ModelSignature(Schema([TensorSpec("int64", (-1, 2), "ids"), TensorSpec("bool", (-1, 2), "mask")]))
    )
    model.saved_input_example_info = save_input_example(tmp_path, example)
    model.save(tmp_path)
    back = load_input_example(tmp_path)
    assert set(back) == {"ids", "mask"}
    assert back["ids"].dtype == np.int64 and back["mask"].dtype == np.bool_
    assert back["mask"].tolist() == [[True, False]]

    tensor_dir = tmp_path / "tensor"
    tensor_dir.mkdir()
    _save_model(tensor_dir, torch.ones(2, 2))
    assert load_input_example(tensor_dir).tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_json_objects_come_back_unchanged(tmp_path: Path) -> None:
    for i, example in enumerate([["hello", "world"], {"question": "why?", "context": ["a"]}, "just text"]):
        directory = tmp_path / str(i)
        directory.mkdir()
        model = _save_model(directory, example)
        assert model.saved_input_example_info is not None
        assert model.saved_input_example_info["type"] == "json_object"
        assert load_input_example(directory) == example
        assert json.loads(load_serving_input_example(directory) or "") == {"inputs": example}


def test_example_with_params(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.0]})
    model = _save_model(tmp_path, (frame, {"top_k": 2}))
    assert model.saved_input_example_info is not None and model.saved_input_example_info["params"] == "true"
    assert json.loads((tmp_path / "input_example.json").read_text()) == {
        "inputs": {"columns": ["x"], "data": [[1.0]]},
        "params": {"top_k": 2},
    }
    assert json.loads((tmp_path / "serving_input_example.json").read_text())["params"] == {"top_k": 2}
    pd.testing.assert_frame_equal(load_input_example(tmp_path), frame)
    assert load_input_example_params(tmp_path) == {"top_k": 2}


def test_mlflow_legacy_tf_serving_example_loads(tmp_path: Path) -> None:
    (tmp_path / "input_example.json").write_text('{"inputs": [[1.0, 2.0]]}')
    info = {"artifact_path": "input_example.json", "type": "ndarray", "format": "tf-serving"}
    model = Model.from_dict({"flavors": {}, "saved_input_example_info": info})
    back = model.load_input_example(tmp_path)
    assert isinstance(back, np.ndarray) and back.tolist() == [[1.0, 2.0]]


def test_mlflow_written_dataframe_example_loads(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(
        "flavors: {}\n"
        "saved_input_example_info:\n  artifact_path: input_example.json\n  pandas_orient: split\n  type: dataframe\n"
        'signature:\n  inputs: \'[{"type": "double", "name": "a", "required": true}, '
        '{"type": "long", "name": "b", "required": true}]\'\n  outputs: null\n  params: null\n'
    )
    (tmp_path / "input_example.json").write_text('{"columns": ["a", "b"], "data": [[1, 2]]}')
    back = load_input_example(tmp_path)
    assert back.dtypes.to_dict() == {"a": np.dtype("float64"), "b": np.dtype("int64")}
    assert load_serving_input_example(tmp_path) is None  # MLflow < 2.17 wrote no serving example


def test_no_example_and_missing_file(tmp_path: Path) -> None:
    Model().save(tmp_path)
    assert load_input_example(tmp_path) is None
    assert load_input_example_params(tmp_path) is None
    assert Model.load(tmp_path).load_input_example(tmp_path) is None
    info = {"artifact_path": "input_example.json", "type": "ndarray"}
    with pytest.raises(ArtifactNotFound, match=r"input example at .*input_example.json, but the file is missing"):
        load_input_example(tmp_path, info=info)
    with pytest.raises(InvalidArgument, match="unknown input example type 'tensorflow'"):
        load_input_example(tmp_path, info={**info, "type": "tensorflow"})


def test_unsupported_examples_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unsupported input example type set"):
        save_input_example(tmp_path, {1, 2})
    with pytest.raises(InvalidArgument, match="only arrays, or no arrays"):
        save_input_example(tmp_path, {"a": np.zeros(2), "b": 1})
    with pytest.raises(InvalidArgument, match="cannot be written as JSON"):
        save_input_example(tmp_path, {"a": object()})


def test_string_column_schema_is_left_alone(tmp_path: Path) -> None:
    info = save_input_example(tmp_path, pd.DataFrame({"s": ["1", "2"]}))
    back = load_input_example(tmp_path, info=info, schema=Schema([ColSpec("string", "s")]))
    assert back["s"].tolist() == ["1", "2"]
