"""The MLmodel file: cairn's own round trip, and MLflow-written files read and written back unchanged."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from cairn.errors import ArtifactNotFound, InvalidArgument
from cairn.models import (
    FORMAT_VERSION,
    ColSpec,
    Model,
    ModelSignature,
    ParamSchema,
    ParamSpec,
    Schema,
    TensorSpec,
    directory_size,
)

# Structure of a real MLflow 3.4 sklearn model (tensor signature, MLflow 3 keys model_id/prompts).
MLFLOW_3_MLMODEL = textwrap.dedent(
    """\
    artifact_path: mlflow-artifacts:/2/models/m-0112ba8babe744e9b9c2e4a61086b08e/artifacts
    flavors:
      python_function:
        env:
          conda: conda.yaml
          virtualenv: python_env.yaml
        loader_module: mlflow.sklearn
        model_path: model.pkl
        predict_fn: predict
        python_version: 3.10.19
      sklearn:
        code: null
        pickled_model: model.pkl
        serialization_format: cloudpickle
        sklearn_version: 1.7.2
    is_signature_from_type_hint: false
    mlflow_version: 3.4.0
    model_id: m-0112ba8babe744e9b9c2e4a61086b08e
    model_size_bytes: 46571
    model_uuid: m-0112ba8babe744e9b9c2e4a61086b08e
    prompts: null
    run_id: 0d099223a0aa4e05976741242b1fb931
    signature:
      inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 1]}}]'
      outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}]'
      params: null
    type_hint_from_example: false
    utc_time_created: '2025-11-06 03:46:33.071805'
    """
)

# MLflow 2.x layout: column signature with optional column, params, input example info, metadata.
MLFLOW_2_MLMODEL = textwrap.dedent(
    """\
    artifact_path: model
    flavors:
      python_function:
        env:
          conda: conda.yaml
          virtualenv: python_env.yaml
        loader_module: mlflow.sklearn
        model_path: model.pkl
        predict_fn: predict
        python_version: 3.10.12
      sklearn:
        code: null
        pickled_model: model.pkl
        serialization_format: cloudpickle
        sklearn_version: 1.3.2
    metadata:
      owner: team-a
    mlflow_version: 2.14.2
    model_size_bytes: 35040
    model_uuid: 516954aae7c94e91adeed9df76cb4052
    run_id: bf212703d1874eee9dcb37c8a92a6de6
    saved_input_example_info:
      artifact_path: input_example.json
      pandas_orient: split
      serving_input_path: serving_input_example.json
      type: dataframe
    signature:
      inputs: '[{"type": "double", "name": "sepal length (cm)", "required": true}, {"type":
        "double", "name": "sepal width (cm)", "required": true}, {"type": "string", "name":
        "species", "required": false}]'
      outputs: '[{"type": "long", "required": true}]'
      params: '[{"name": "threshold", "default": 0.5, "shape": null, "type": "double"}]'
    utc_time_created: '2024-07-10 08:01:02.345678'
    """
)

# MLflow 1.x layout: name before type, no "required", no params key.
MLFLOW_1_MLMODEL = textwrap.dedent(
    """\
    artifact_path: model
    flavors:
      python_function:
        env: conda.yaml
        loader_module: mlflow.sklearn
        model_path: model.pkl
        python_version: 3.8.10
      sklearn:
        pickled_model: model.pkl
        serialization_format: cloudpickle
        sklearn_version: 0.24.1
    run_id: 8ede7df408dd42ed9fc39019ef7df309
    signature:
      inputs: '[{"name": "x", "type": "double"}, {"name": "y", "type": "long"}]'
      outputs: '[{"type": "double"}]'
    utc_time_created: '2021-03-01 10:00:00.000001'
    """
)


@pytest.mark.parametrize(
    "text", [MLFLOW_3_MLMODEL, MLFLOW_2_MLMODEL, MLFLOW_1_MLMODEL], ids=["mlflow3", "mlflow2", "mlflow1"]
)
def test_mlflow_written_file_is_written_back_unchanged(tmp_path: Path, text: str) -> None:
    assert yaml.safe_dump(yaml.safe_load(text), default_flow_style=False) == text  # the fixture is canonical
    (tmp_path / "MLmodel").write_text(text)
    model = Model.load(tmp_path)
    out = tmp_path / "copy"
    out.mkdir()
    model.save(out)
    assert (out / "MLmodel").read_text() == text


def test_mlflow_2_file_is_parsed_into_typed_fields(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(MLFLOW_2_MLMODEL)
    model = Model.load(tmp_path / "MLmodel")
    assert model.run_id == "bf212703d1874eee9dcb37c8a92a6de6"
    assert model.flavors["python_function"]["loader_module"] == "mlflow.sklearn"
    assert model.model_size_bytes == 35040
    assert model.cairn_format is None  # MLflow wrote it
    assert model.extra == {"mlflow_version": "2.14.2"}
    assert model.get_input_schema() == Schema(
        [
            ColSpec("double", "sepal length (cm)"),
            ColSpec("double", "sepal width (cm)"),
            ColSpec("string", "species", required=False),
        ]
    )
    assert model.get_output_schema() == Schema([ColSpec("long")])
    assert model.get_params_schema() == ParamSchema([ParamSpec("threshold", "double", 0.5)])
    assert model.saved_input_example_info is not None
    assert model.saved_input_example_info["type"] == "dataframe"


def test_mlflow_3_file_keeps_its_extra_keys(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(MLFLOW_3_MLMODEL)
    model = Model.load(tmp_path)
    assert model.extra["model_id"] == "m-0112ba8babe744e9b9c2e4a61086b08e"
    assert model.extra["prompts"] is None
    assert model.extra["is_signature_from_type_hint"] is False
    assert model.get_input_schema() == Schema([TensorSpec("float64", (-1, 1))])


def test_changed_signature_of_loaded_model_is_rewritten(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(MLFLOW_1_MLMODEL)
    model = Model.load(tmp_path)
    model.signature = ModelSignature(Schema([ColSpec("double", "x")]))
    written = yaml.safe_load(model.to_yaml())
    assert written["signature"] == {
        "inputs": '[{"type": "double", "name": "x", "required": true}]',
        "outputs": None,
        "params": None,
    }


def test_new_model_round_trips_with_mlflow_formats(tmp_path: Path) -> None:
    signature = ModelSignature(
        inputs=Schema([TensorSpec("float32", (-1, 4))]),
        outputs=Schema([ColSpec("double", "score")]),
        params=ParamSchema([ParamSpec("top_k", "long", 3)]),
    )
    model = Model(artifact_path="model", run_id="0123456789abcdef0123456789abcdef", signature=signature)
    model.add_flavor("python_function", loader_module="cairn.flavors.pytorch", data="data").add_flavor(
        "pytorch", pytorch_version="2.13.0"
    )
    (tmp_path / "weights.bin").write_bytes(b"x" * 100)
    model.model_size_bytes = directory_size(tmp_path)
    path = model.save(tmp_path)

    assert path == tmp_path / "MLmodel"
    text = path.read_text()
    raw = yaml.safe_load(text)
    assert list(raw) == sorted(raw)  # MLflow's key order: sorted
    assert re.fullmatch(r"[0-9a-f]{32}", raw["model_uuid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", raw["utc_time_created"])
    assert f"utc_time_created: '{raw['utc_time_created']}'" in text  # quoted string, as MLflow writes it
    assert raw["metadata"] == {"cairn_format": FORMAT_VERSION}
    assert raw["model_size_bytes"] == 100
    assert raw["signature"] == {
        "inputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]',
        "outputs": '[{"type": "double", "name": "score", "required": true}]',
        "params": '[{"name": "top_k", "default": 3, "shape": null, "type": "long"}]',
    }
    assert raw["flavors"]["python_function"] == {"loader_module": "cairn.flavors.pytorch", "data": "data"}
    assert "mlflow_version" not in raw and "extra" not in raw

    loaded = Model.load(path)
    assert loaded == model
    assert loaded.cairn_format == FORMAT_VERSION


def test_user_metadata_is_kept_next_to_the_format_version() -> None:
    model = Model(metadata={"owner": "ml-team"})
    assert model.to_dict()["metadata"] == {"owner": "ml-team", "cairn_format": FORMAT_VERSION}
    assert "run_id" not in model.to_dict()  # None fields are left out, as MLflow does
    assert "artifact_path" not in model.to_dict()


def test_model_info_points_at_the_run() -> None:
    model = Model(artifact_path="model", run_id="r1", signature=ModelSignature(Schema([ColSpec("double")])))
    info = model.get_model_info()
    assert info.model_uri == "runs:/r1/model"
    assert info.registered_model_version is None
    assert info.signature == model.signature
    assert info.model_uuid == model.model_uuid
    assert model.get_model_info("models:/churn/1").model_uri == "models:/churn/1"


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match='no "MLmodel" file'):
        Model.load(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors: [unclosed\n")
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        Model.load(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function: 3\n")
    with pytest.raises(InvalidArgument, match="'flavors' must map"):
        Model.load(tmp_path)
    (tmp_path / "MLmodel").write_text('signature:\n  inputs: \'[{"type": "complex"}]\'\n')
    with pytest.raises(InvalidArgument, match="unsupported column type 'complex'"):
        Model.load(tmp_path)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    model = Model(metadata={"cairn_format": FORMAT_VERSION + 1})
    model.save(tmp_path)
    with pytest.raises(InvalidArgument, match=f"format {FORMAT_VERSION + 1}.*upgrade cairn"):
        Model.load(tmp_path)


def test_unquoted_timestamp_in_hand_written_file_stays_a_string(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {}\nutc_time_created: 2024-05-01 12:00:00.123456\n")
    assert Model.load(tmp_path).utc_time_created == "2024-05-01 12:00:00.123456"


def test_unserializable_metadata_is_a_clear_error() -> None:
    model = Model(metadata={"thing": object()})
    with pytest.raises(InvalidArgument, match="plain YAML values"):
        model.to_yaml()
