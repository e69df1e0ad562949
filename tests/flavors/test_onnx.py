"""The ONNX flavor: ModelProto and .onnx files, torch and scikit-learn conversion with a parity check,
external data (and its confinement), onnxruntime pyfunc, providers and session options, registry."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'cairn[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'cairn[onnx]')")
pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (pip install 'cairn[onnx]')")
pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[torch]')")

import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cairn
import cairn.onnx
import cairn.pyfunc
from cairn.errors import InvalidArgument, ResourceAlreadyExists, SchemaMismatch, UnsafePath
from cairn.flavors import _onnx_convert
from cairn.flavors import onnx as flavor
from cairn.models import Model
from cairn.models.loading import load_model as load_native

# -- models --------------------------------------------------------------------------------------------


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(4 * 3 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.proj(a)
        return {"total": z + b, "gap": z - b}


@pytest.fixture(scope="module")
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory, mlp: MLP) -> Path:
    """The MLP converted once (a torch export takes a second or two) and saved."""
    path = tmp_path_factory.mktemp("mlp") / "model"
    cairn.onnx.save_model(mlp, path, input_example=torch.randn(1, 4))
    return path


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y.to_numpy()


@pytest.fixture(scope="module")
def pipeline(iris: tuple[pd.DataFrame, np.ndarray]) -> Any:
    X, y = iris
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)


def add_mul_proto(rows: int | str = "N") -> onnx.ModelProto:
    """A hand-built graph with two named inputs (a, b: float32 [N, 1]) and two outputs (sum, product)."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, 1])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [rows, 1])
    total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [rows, 1])
    product = helper.make_tensor_value_info("product", TensorProto.FLOAT, [rows, 1])
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["product"])],
        "add_mul",
        [a, b],
        [total, product],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_proto(weights: np.ndarray) -> onnx.ModelProto:
    """y = x @ W with W an initializer (big enough to go to external data)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weights.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weights.shape[1]])
    w = numpy_helper.from_array(weights.astype(np.float32), name="W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlmodel(path: Path) -> dict[str, Any]:
    return yaml.safe_load((path / "MLmodel").read_text())


# -- torch -------------------------------------------------------------------------------------------------


def test_torch_mlp_round_trip_with_dynamic_batch_and_parity(mlp_dir: Path, mlp: MLP) -> None:
    content = mlmodel(mlp_dir)
    conf = content["flavors"]["onnx"]
    assert conf["data"] == "onnx/model.onnx" and conf["converted_from"] == "torch"
    assert conf["providers"] == ["CPUExecutionProvider"] and conf["onnx_session_options"] == {}
    assert conf["onnx_version"] == onnx.__version__ and conf["external_data"] == []
    assert content["flavors"]["python_function"]["loader_module"] == "cairn.flavors.onnx"
    parity = content["metadata"]["onnx_parity"]
    assert parity["source"] == "torch" and parity["rows"] == 1
    assert 0 <= parity["max_abs_diff"] <= 1e-5 and parity["max_rel_diff"] >= 0
    assert parity["outputs"]["output"]["mismatches"] == 0
    assert "onnxruntime==" in (mlp_dir / "requirements.txt").read_text()

    proto = cairn.onnx.load_model(mlp_dir)
    assert isinstance(proto, onnx.ModelProto)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # exported with a dynamic batch axis from a batch of 1
    assert isinstance(load_native(mlp_dir), onnx.ModelProto)

    loaded = cairn.pyfunc.load_model(mlp_dir)
    assert isinstance(loaded.get_raw_model(), ort.InferenceSession)
    assert loaded.metadata.get_input_schema().inputs[0].shape == (-1, 4)
    mlp.eval()  # the conversion ran in eval mode (dropout off) and put training mode back
    for rows in (1, 64):
        x = torch.randn(rows, 4)
        with torch.no_grad():
            want = mlp(x).numpy()
        np.testing.assert_allclose(loaded.predict(x.numpy()), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loaded.predict(x), want, rtol=1e-4, atol=1e-5)  # a tensor works too


def test_conversion_restores_training_mode_and_float32_signature_refuses_float64(tmp_path: Path, mlp_dir: Path) -> None:
    torch.manual_seed(1)
    module = MLP().train()
    module.net[2].eval()  # a mixed state must come back exactly
    cairn.onnx.save_model(module, tmp_path / "m", input_example=np.random.rand(3, 4).astype(np.float32))
    assert module.training and module.net[0].training and not module.net[2].training
    loaded = cairn.pyfunc.load_model(mlp_dir)
    with pytest.raises(SchemaMismatch, match="float32"):
        loaded.predict(np.random.rand(2, 4))  # float64: the float32 signature refuses the narrowing


def test_torch_cnn_logged_to_a_run() -> None:
    torch.manual_seed(2)
    cnn = CNN().eval()
    images = torch.randn(2, 1, 8, 8)
    with cairn.start_run() as run:
        info = cairn.onnx.log_model(cnn, "cnn", input_example=images)
    assert info.model_uri == f"runs:/{run.info.run_id}/cnn"
    assert info.flavors["onnx"]["converted_from"] == "torch"
    assert info.metadata is not None and info.metadata["onnx_parity"]["max_abs_diff"] <= 1e-5
    loaded = cairn.pyfunc.load_model(info.model_uri)
    batch = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = cnn(batch).numpy()
    np.testing.assert_allclose(loaded.predict(batch.numpy()), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(SchemaMismatch, match=r"shape \(-1, 1, 8, 8\)"):
        loaded.predict(np.zeros((5, 1, 9, 9), dtype=np.float32))


def test_torch_model_with_two_inputs_and_two_outputs(tmp_path: Path) -> None:
    torch.manual_seed(3)
    module = TwoInputs()
    example = {"a": torch.randn(4, 3), "b": torch.randn(4, 2)}
    cairn.onnx.save_model(module, tmp_path / "m", input_example=example)
    proto = cairn.onnx.load_model(tmp_path / "m")
    assert [i.name for i in proto.graph.input] == ["a", "b"]
    assert [o.name for o in proto.graph.output] == ["total", "gap"]
    loaded = cairn.pyfunc.load_model(tmp_path / "m")
    assert [s.name for s in loaded.metadata.get_input_schema().inputs] == ["a", "b"]
    a, b = np.random.rand(7, 3).astype(np.float32), np.random.rand(7, 2).astype(np.float32)
    out = loaded.predict({"a": a, "b": b})
    with torch.no_grad():
        want = module(torch.from_numpy(a), torch.from_numpy(b))
    assert set(out) == {"total", "gap"}
    np.testing.assert_allclose(out["total"], want["total"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["gap"], want["gap"].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(SchemaMismatch, match="'b'"):
        loaded.predict({"a": a})
    assert mlmodel(tmp_path / "m")["metadata"]["onnx_parity"]["outputs"].keys() == {"total", "gap"}


def test_torch_tuple_example_names_inputs_and_saves_a_dict_example(tmp_path: Path) -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.sum(dim=1, keepdim=True) + y

    x, y = torch.randn(3, 4), torch.randn(3, 1)
    model = cairn.onnx.save_model(Pair(), tmp_path / "m", input_example=(x, y))
    assert [s.name for s in model.signature.inputs.inputs] == ["input_0", "input_1"]  # type: ignore[union-attr]
    example = model.load_input_example(tmp_path / "m")
    assert set(example) == {"input_0", "input_1"}
    out = cairn.pyfunc.load_model(tmp_path / "m").predict({"input_0": x.numpy(), "input_1": y.numpy()})
    np.testing.assert_allclose(out["output_0"], (x * 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["output_1"], (x.sum(1, keepdim=True) + y).numpy(), rtol=1e-5, atol=1e-6)


def test_torch_conversion_needs_an_example_and_a_free_directory(tmp_path: Path, mlp: MLP) -> None:
    with pytest.raises(InvalidArgument, match="needs input_example"):
        cairn.onnx.save_model(mlp, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    with pytest.raises(ResourceAlreadyExists, match="not an empty directory"):  # refused before converting
        cairn.onnx.save_model(mlp, tmp_path / "taken", input_example=torch.randn(2, 4))


# -- scikit-learn -------------------------------------------------------------------------------------------


def test_sklearn_pipeline_converts_without_zipmap(tmp_path: Path, pipeline: Any, iris: Any) -> None:
    X, _ = iris
    model = cairn.onnx.save_model(pipeline, tmp_path / "m", input_example=X[:10])
    conf = mlmodel(tmp_path / "m")["flavors"]["onnx"]
    assert conf["converted_from"] == "sklearn"
    assert conf["sklearn_methods"]["predict_proba"] == {"output": "probabilities", "ndim": 2}
    parity = model.metadata["onnx_parity"]  # type: ignore[index]
    assert parity["outputs"]["label"] == {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "mismatches": 0}
    assert 0 < parity["outputs"]["probabilities"]["max_abs_diff"] < 1e-5  # float32 vs float64, recorded
    # The signature is the example's (double columns); float64 input is cast to the graph's float32.
    assert [s.type for s in model.signature.inputs.inputs] == ["double"] * 4  # type: ignore[union-attr]
    proto = cairn.onnx.load_model(tmp_path / "m")
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]

    loaded = cairn.pyfunc.load_model(tmp_path / "m")
    frame = loaded.predict(X)  # a DataFrame in, a DataFrame out
    assert list(frame.columns) == ["label", "probabilities_0", "probabilities_1", "probabilities_2"]
    np.testing.assert_array_equal(frame["label"].to_numpy(), pipeline.predict(X))
    proba = frame[["probabilities_0", "probabilities_1", "probabilities_2"]].to_numpy()
    np.testing.assert_allclose(proba, pipeline.predict_proba(X), atol=1e-5)

    session = flavor.OnnxPyfunc(loaded.get_raw_model(), methods=conf["sklearn_methods"])
    arrays = session.predict(X.to_numpy())  # ndarray (float64) in, several outputs: a dict of arrays
    assert arrays["label"].dtype == np.int64 and arrays["probabilities"].shape == (150, 3)
    np.testing.assert_array_equal(session.predict(X.to_numpy(), params={"method": "predict"}), pipeline.predict(X))
    with pytest.raises(InvalidArgument, match="decision_function"):
        session.predict(X.to_numpy(), params={"method": "decision_function"})


def test_sklearn_classifiers_without_zipmap_or_probabilities(tmp_path: Path) -> None:
    from sklearn.datasets import make_classification
    from sklearn.svm import SVC, LinearSVC

    X, y = make_classification(n_samples=60, n_features=5, random_state=0)
    linear = cairn.onnx.save_model(LinearSVC().fit(X, y), tmp_path / "linear", input_example=X[:10])
    assert linear.metadata["onnx_parity"]["outputs"]["probabilities"]["mismatches"] == 0  # type: ignore[index]
    svc = SVC().fit(X, y)
    model = cairn.onnx.save_model(svc, tmp_path / "svc", input_example=X[:10])
    outputs = model.metadata["onnx_parity"]["outputs"]  # type: ignore[index]
    assert outputs["label"]["mismatches"] == 0
    assert "shape (10, 2)" in outputs["probabilities"]["skipped"]  # binary scores vs decision_function's (n,)
    assert model.flavors["onnx"]["sklearn_methods"] == {"predict": {"output": "label", "ndim": 1}}
    np.testing.assert_array_equal(cairn.onnx.load_pyfunc(tmp_path / "svc").predict(X)["label"], svc.predict(X))


def test_sklearn_conversion_refuses_non_numeric_input(tmp_path: Path, pipeline: Any) -> None:
    frame = pd.DataFrame({"a": ["x", "y"], "b": [1.0, 2.0]})
    with pytest.raises(InvalidArgument, match=r"numeric inputs only.*\['a'\]"):
        cairn.onnx.save_model(pipeline, tmp_path / "m", input_example=frame)


def test_parity_failure_raises_and_logs_nothing(pipeline: Any, iris: Any) -> None:
    X, _ = iris
    with cairn.start_run() as run, pytest.raises(cairn.onnx.OnnxParityError, match="rtol=0, atol=0") as caught:
        cairn.onnx.log_model(pipeline, "model", input_example=X[:20], onnx_rtol=0, onnx_atol=0)
    assert "'probabilities'" in str(caught.value) and "Nothing was saved" in str(caught.value)
    assert caught.value.report["outputs"]["probabilities"]["mismatches"] > 0
    client = cairn.Client()
    assert client.list_artifacts(run.info.run_id) == []
    assert "mlflow.log-model.history" not in client.get_run(run.info.run_id).data.tags


def test_parity_tolerances_have_the_same_name_in_every_flavor(tmp_path: Path, pipeline: Any, iris: Any) -> None:
    """onnx_rtol/onnx_atol: cairn.onnx's own save and the also_onnx=True of the other flavors."""
    X, _ = iris
    direct = cairn.onnx.save_model(pipeline, tmp_path / "direct", input_example=X[:5], onnx_rtol=0.5, onnx_atol=0.25)
    also = cairn.sklearn.save_model(
        pipeline, tmp_path / "also", input_example=X[:5], also_onnx=True, onnx_rtol=0.5, onnx_atol=0.25
    )
    for model in (direct, also):
        assert model.metadata is not None
        assert (model.metadata["onnx_parity"]["rtol"], model.metadata["onnx_parity"]["atol"]) == (0.5, 0.25)
    with pytest.raises(cairn.onnx.OnnxParityError, match="rtol=0, atol=0"):
        cairn.onnx.save_model(pipeline, tmp_path / "strict", input_example=X[:20], onnx_rtol=0, onnx_atol=0)


def _renaming_warnings(caught: Any) -> set[tuple[str, Path]]:
    """(message, file) of each DeprecationWarning about the renamed tolerances."""
    return {
        (str(w.message).split(" ")[1], Path(w.filename))
        for w in caught
        if issubclass(w.category, DeprecationWarning) and "is deprecated, pass onnx_" in str(w.message)
    }


def test_rtol_and_atol_still_work_with_a_deprecation_warning(tmp_path: Path, pipeline: Any, iris: Any) -> None:
    X, _ = iris
    here = Path(__file__)
    with pytest.warns(DeprecationWarning, match="tol= is deprecated, pass onnx_") as caught:
        model = cairn.onnx.save_model(pipeline, tmp_path / "m", input_example=X[:5], rtol=0.5, atol=0.25)
    assert model.metadata is not None
    assert (model.metadata["onnx_parity"]["rtol"], model.metadata["onnx_parity"]["atol"]) == (0.5, 0.25)
    assert _renaming_warnings(caught) == {("rtol=", here), ("atol=", here)}  # each points at the caller's line
    with (
        pytest.warns(DeprecationWarning, match="tol= is deprecated, pass onnx_") as caught,
        cairn.start_run(),
        pytest.raises(cairn.onnx.OnnxParityError, match="rtol=0, atol=0"),
    ):
        cairn.onnx.log_model(pipeline, "model", input_example=X[:20], rtol=0, atol=0)
    assert _renaming_warnings(caught) == {("rtol=", here), ("atol=", here)}
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidArgument, match="disagree; pass only onnx_rtol"):
        cairn.onnx.save_model(pipeline, tmp_path / "both", input_example=X[:5], rtol=0.5, onnx_rtol=0.1)


def test_parity_failure_of_a_torch_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _onnx_convert._convert_torch

    def off_by_one(module: Any, example: Any, opset: Any) -> Any:
        conversion = real(module, example, opset)
        conversion.expected = {k: v + 1.0 for k, v in conversion.expected.items()}  # a wrong export
        return conversion

    monkeypatch.setattr(_onnx_convert, "_convert_torch", off_by_one)
    torch.manual_seed(4)
    with pytest.raises(cairn.onnx.OnnxParityError, match=r"'output': 6 value\(s\) differ \(max abs diff 1"):
        cairn.onnx.save_model(torch.nn.Linear(4, 3), tmp_path / "m", input_example=torch.randn(2, 4))
    assert not (tmp_path / "m").exists()


# -- ModelProto and .onnx files ---------------------------------------------------------------------------


def test_model_proto_round_trip_with_graph_signature_and_named_io(tmp_path: Path) -> None:
    proto = add_mul_proto()
    model = cairn.onnx.save_model(proto, tmp_path / "m")
    inputs = model.signature.inputs.inputs  # type: ignore[union-attr]
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [("a", "float32", (-1, 1)), ("b", "float32", (-1, 1))]
    assert [s.name for s in model.signature.outputs.inputs] == ["sum", "product"]  # type: ignore[union-attr]
    assert "onnx_parity" not in model.metadata  # type: ignore[operator]
    loaded_proto = cairn.onnx.load_model(tmp_path / "m")
    assert loaded_proto.SerializeToString() == proto.SerializeToString()

    loaded = cairn.pyfunc.load_model(tmp_path / "m")
    a = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    b = np.array([[4.0], [5.0], [6.0]], dtype=np.float32)
    out = loaded.predict({"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], a + b)
    np.testing.assert_array_equal(out["product"], a * b)
    # DataFrame columns feed the named inputs (reshaped to (n, 1)); the outputs come back as columns.
    raw = flavor.OnnxPyfunc(loaded.get_raw_model())
    frame = raw.predict(pd.DataFrame({"b": [4.0, 5.0], "a": [1.0, 2.0]}, index=[10, 11]))
    assert list(frame.columns) == ["sum", "product"] and list(frame.index) == [10, 11]
    np.testing.assert_array_equal(frame["product"].to_numpy(), [4.0, 10.0])
    with pytest.raises(SchemaMismatch, match=r"no column\(s\) \['b'\]"):
        raw.predict(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(SchemaMismatch, match="takes 2 inputs"):
        raw.predict(a)
    with pytest.raises(SchemaMismatch, match=r"the model takes float32 .* got <U1"):
        raw.predict({"a": np.array([["x"]]), "b": b[:1]})

    # With a DataFrame example the signature has columns, and cairn.pyfunc takes and returns DataFrames.
    example = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    cairn.onnx.save_model(proto, tmp_path / "cols", input_example=example)
    by_columns = cairn.pyfunc.load_model(tmp_path / "cols")
    assert [s.name for s in by_columns.metadata.get_input_schema().inputs] == ["a", "b"]
    result = by_columns.predict(pd.DataFrame({"b": [3.0, 4.0], "a": [1.0, 2.0], "extra": ["x", "y"]}))
    np.testing.assert_array_equal(result["sum"].to_numpy(), [4.0, 6.0])
    with pytest.raises(SchemaMismatch, match="'b'"):
        by_columns.predict(pd.DataFrame({"a": [1.0]}))


def test_onnx_file_path_with_input_example(tmp_path: Path) -> None:
    weights = np.random.default_rng(0).random((4, 2)).astype(np.float32)
    onnx.save_model(matmul_proto(weights), tmp_path / "src.onnx")
    x = np.random.default_rng(1).random((3, 4))  # float64 example: the signature allows float64
    model = cairn.onnx.save_model(str(tmp_path / "src.onnx"), tmp_path / "m", input_example=x)
    assert model.signature.inputs.inputs[0].dtype == "float64"  # type: ignore[union-attr]
    assert model.signature.outputs.inputs[0].dtype == "float32"  # type: ignore[union-attr]
    out = cairn.pyfunc.load_model(tmp_path / "m").predict(x)
    np.testing.assert_allclose(out, x.astype(np.float32) @ weights, rtol=1e-6)


def test_external_data_stored_and_loaded(tmp_path: Path) -> None:
    weights = np.random.default_rng(2).random((64, 16)).astype(np.float32)  # 4 KiB, above the 1 KiB tensor floor
    source = tmp_path / "src"
    source.mkdir()
    onnx.save_model(
        matmul_proto(weights), source / "net.onnx", save_as_external_data=True, location="w.bin", size_threshold=0
    )
    assert (source / "w.bin").stat().st_size == weights.nbytes

    model = cairn.onnx.save_model(source / "net.onnx", tmp_path / "m", save_as_external_data=True)
    conf = model.flavors["onnx"]
    assert conf["external_data"] == ["onnx/model.onnx.data"]
    assert (tmp_path / "m" / "onnx" / "model.onnx.data").stat().st_size >= weights.nbytes
    assert (tmp_path / "m" / "onnx" / "model.onnx").stat().st_size < 1024
    loaded = cairn.onnx.load_model(tmp_path / "m")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), weights)
    x = np.random.default_rng(3).random((5, 64)).astype(np.float32)
    np.testing.assert_allclose(cairn.pyfunc.load_model(tmp_path / "m").predict(x), x @ weights, rtol=1e-5)

    # Default (None): a small model is stored in one file, whatever the source used.
    embedded = cairn.onnx.save_model(source / "net.onnx", tmp_path / "m2")
    assert embedded.flavors["onnx"]["external_data"] == [] and not (tmp_path / "m2/onnx/model.onnx.data").exists()
    np.testing.assert_array_equal(
        numpy_helper.to_array(cairn.onnx.load_model(tmp_path / "m2").graph.initializer[0]), weights
    )


def test_external_data_chosen_automatically_for_large_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flavor, "EXTERNAL_DATA_THRESHOLD", 2048)  # stand-in for the 2 GiB protobuf limit
    weights = np.ones((64, 16), dtype=np.float32)
    proto = matmul_proto(weights)
    model = cairn.onnx.save_model(proto, tmp_path / "m")
    assert model.flavors["onnx"]["external_data"] == ["onnx/model.onnx.data"]
    assert numpy_helper.to_array(proto.graph.initializer[0]).sum() == weights.sum()  # the caller's proto is intact
    monkeypatch.setattr(flavor, "_byte_size", lambda proto: 2**31)  # as if the model were 2 GiB
    with pytest.raises(InvalidArgument, match="beyond protobuf's 2 GiB limit"):
        cairn.onnx.save_model(proto, tmp_path / "big", save_as_external_data=False)
    assert not (tmp_path / "big").exists()


def _external_model_dir(tmp_path: Path, location: str) -> Path:
    """A model directory (written by hand, as another tool or an attacker would) whose ONNX file keeps
    its weights at ``location``."""
    model_dir = tmp_path / "evil"
    (model_dir / "onnx").mkdir(parents=True)
    proto = matmul_proto(np.ones((4, 2), dtype=np.float32))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (model_dir / "onnx" / "model.onnx").write_bytes(proto.SerializeToString())
    meta = Model()
    meta.add_flavor("python_function", loader_module="cairn.flavors.onnx")
    meta.add_flavor("onnx", data="onnx/model.onnx")
    meta.save(model_dir)
    return model_dir


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_model_directory_is_refused(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x00" * 64)
    if kind == "parent":
        location = "../../secret"
    elif kind == "absolute":
        location = str(secret)
    else:
        location = "weights.bin"
    model_dir = _external_model_dir(tmp_path, location)
    if kind == "symlink":
        os.symlink(secret, model_dir / "onnx" / "weights.bin")
    # Opening the model directory refuses a symlink leaving it before the ONNX flavor looks at its tensors.
    named = "outside the model directory" if kind == "symlink" else "tensor 'W'"
    with pytest.raises(UnsafePath, match=r"outside the model('s)? directory"):
        cairn.onnx.load_model(model_dir)
    with pytest.raises(UnsafePath, match=named):
        cairn.pyfunc.load_model(model_dir)
    with pytest.raises(UnsafePath, match="tensor 'W'"):  # the .onnx file itself: never copied into a new model
        cairn.onnx.save_model(model_dir / "onnx" / "model.onnx", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    proto = onnx.load_model(model_dir / "onnx" / "model.onnx", load_external_data=False)
    with pytest.raises(UnsafePath, match="outside the model's directory"):  # the check of the flavor itself
        flavor.check_external_data(proto, model_dir / "onnx", what="the ONNX model")


def test_external_data_inside_the_directory_loads_and_bad_ranges_are_refused(tmp_path: Path) -> None:
    model_dir = _external_model_dir(tmp_path, "weights.bin")
    (model_dir / "onnx" / "weights.bin").write_bytes(np.full((4, 2), 2.0, dtype=np.float32).tobytes())
    proto = cairn.onnx.load_model(model_dir)
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[0]), np.full((4, 2), 2.0))
    (model_dir / "onnx" / "weights.bin").write_bytes(b"\x00" * 8)
    with pytest.raises(InvalidArgument, match=r"reads bytes 0\.\.32 of 'weights.bin', which has 8 bytes"):
        cairn.onnx.load_model(model_dir)
    (model_dir / "onnx" / "weights.bin").unlink()
    with pytest.raises(InvalidArgument, match=r"external data file 'weights\.bin' of tensor 'W' is missing"):
        cairn.onnx.load_model(model_dir)


def test_in_memory_proto_with_unloaded_external_data_is_refused(tmp_path: Path) -> None:
    onnx.save_model(matmul_proto(np.ones((64, 16))), tmp_path / "a.onnx", save_as_external_data=True, size_threshold=0)
    shallow = onnx.load_model(tmp_path / "a.onnx", load_external_data=False)
    with pytest.raises(InvalidArgument, match=r"external data .*not loaded"):
        cairn.onnx.save_model(shallow, tmp_path / "m")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not protobuf \xff\xfe", "protobuf could not be parsed"),
        (b"", "no IR version or no graph"),
    ],
)
def test_malformed_onnx_file_gives_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.onnx").write_bytes(content)
    with pytest.raises(InvalidArgument, match=f"not a valid ONNX model.*{message}"):
        cairn.onnx.save_model(tmp_path / "bad.onnx", tmp_path / "m")
    assert not (tmp_path / "m").exists()
    # The same file inside a model directory (one without cairn's file hashes, as MLflow writes them).
    model_dir = _external_model_dir(tmp_path, "unused")
    (model_dir / "onnx" / "model.onnx").write_bytes(content)
    with pytest.raises(InvalidArgument, match="not a valid ONNX model"):
        cairn.onnx.load_model(model_dir)
    with pytest.raises(InvalidArgument, match="not a valid ONNX model"):
        cairn.pyfunc.load_model(model_dir)


def test_invalid_graph_is_refused_at_save(tmp_path: Path) -> None:
    proto = add_mul_proto()
    proto.graph.node[0].input[1] = "nowhere"  # an input no node or graph input produces
    with pytest.raises(InvalidArgument, match=r"ONNX model is not valid.*nowhere"):
        cairn.onnx.save_model(proto, tmp_path / "m")
    with pytest.raises(InvalidArgument, match=r"pass an onnx\.ModelProto"):
        cairn.onnx.save_model({"not": "a model"}, tmp_path / "m")
    with pytest.raises(InvalidArgument, match="opset applies to conversions"):
        cairn.onnx.save_model(add_mul_proto(), tmp_path / "m", opset=17)


# -- providers and session options ----------------------------------------------------------------------


def test_providers_and_session_options_are_recorded_and_applied(tmp_path: Path) -> None:
    options = {"intra_op_num_threads": 1, "graph_optimization_level": 1, "execution_mode": "SEQUENTIAL"}
    cairn.onnx.save_model(
        add_mul_proto(),
        tmp_path / "m",
        onnx_execution_providers=["CPUExecutionProvider"],
        onnx_session_options=options,
    )
    conf = mlmodel(tmp_path / "m")["flavors"]["onnx"]
    assert conf["providers"] == ["CPUExecutionProvider"]
    assert conf["onnx_session_options"] == {
        "intra_op_num_threads": 1,
        "graph_optimization_level": 1,
        "execution_mode": "sequential",
    }
    session = cairn.pyfunc.load_model(tmp_path / "m").get_raw_model()
    assert session.get_providers() == ["CPUExecutionProvider"]
    applied = session.get_session_options()
    assert applied.intra_op_num_threads == 1
    assert applied.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC

    overridden = cairn.onnx.load_pyfunc(tmp_path / "m", session_options={"intra_op_num_threads": 2})
    assert overridden.get_raw_model().get_session_options().intra_op_num_threads == 2
    via_config = cairn.pyfunc.load_model(
        tmp_path / "m", model_config={"onnx_session_options": {"graph_optimization_level": 99}}
    )
    assert (
        via_config.get_raw_model().get_session_options().graph_optimization_level
        == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )

    so = ort.SessionOptions()
    so.inter_op_num_threads = 3
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    assert flavor.normalize_session_options(so) == {"inter_op_num_threads": 3, "execution_mode": "parallel"}


def test_unavailable_provider_falls_back_to_cpu_and_bad_settings_are_refused(tmp_path: Path) -> None:
    missing = next(p for p in ort.get_all_providers() if p not in ort.get_available_providers())
    cairn.onnx.save_model(add_mul_proto(), tmp_path / "m", onnx_execution_providers=[missing, "CPUExecutionProvider"])
    assert mlmodel(tmp_path / "m")["flavors"]["onnx"]["providers"] == [missing, "CPUExecutionProvider"]
    with pytest.warns(UserWarning, match=missing):
        session = cairn.pyfunc.load_model(tmp_path / "m").get_raw_model()
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(InvalidArgument, match="unknown onnxruntime execution provider 'FastestProvider'"):
        cairn.onnx.save_model(add_mul_proto(), tmp_path / "x", onnx_execution_providers=["FastestProvider"])
    with pytest.raises(InvalidArgument, match="unknown onnxruntime session option 'turbo'"):
        cairn.onnx.save_model(add_mul_proto(), tmp_path / "x", onnx_session_options={"turbo": True})
    with pytest.raises(InvalidArgument, match="graph_optimization_level must be 0, 1, 2 or 99"):
        cairn.onnx.save_model(add_mul_proto(), tmp_path / "x", onnx_session_options={"graph_optimization_level": 5})
    with pytest.raises(InvalidArgument, match="unknown ONNX model_config"):
        cairn.pyfunc.load_model(tmp_path / "m", model_config={"threads": 4})
    assert not (tmp_path / "x").exists()


# -- registry and other flavors ---------------------------------------------------------------------------


def test_registered_version_loads_by_alias_through_onnxruntime(mlp_dir: Path, mlp: MLP) -> None:
    proto = cairn.onnx.load_model(mlp_dir)
    with cairn.start_run():
        info = cairn.onnx.log_model(
            proto, "model", registered_model_name="onnx-mlp", input_example=np.ones((2, 4), np.float32)
        )
    assert info.registered_model_version == 1
    cairn.Client().set_registered_model_alias("onnx-mlp", "champion", 1)
    loaded = cairn.pyfunc.load_model("models:/onnx-mlp@champion")
    assert isinstance(loaded.get_raw_model(), ort.InferenceSession)
    x = torch.randn(6, 4)
    mlp.eval()
    with torch.no_grad():
        np.testing.assert_allclose(loaded.predict(x.numpy()), mlp(x).numpy(), rtol=1e-4, atol=1e-5)
    assert cairn.onnx.load_model("models:/onnx-mlp@champion").SerializeToString() == proto.SerializeToString()


def test_add_onnx_flavor_to_a_scikit_learn_model(tmp_path: Path, pipeline: Any, iris: Any) -> None:
    import cairn.sklearn

    X, _ = iris
    path = tmp_path / "m"
    model = cairn.sklearn.save_model(pipeline, path, input_example=X[:5])
    flavor.add_onnx_flavor(path, model, pipeline, X[:5], rtol=1e-3, atol=1e-5)
    content = mlmodel(path)
    assert set(content["flavors"]) == {"python_function", "sklearn", "onnx"}
    assert content["flavors"]["python_function"]["loader_module"] == "cairn.flavors.sklearn"
    assert content["metadata"]["onnx_parity"]["source"] == "sklearn"
    assert "onnxruntime==" in (path / "requirements.txt").read_text()
    assert "scikit-learn==" in (path / "requirements.txt").read_text()
    # The file hashes were rewritten: both flavors load (each verifies every file first).
    np.testing.assert_array_equal(cairn.pyfunc.load_model(path).predict(X), pipeline.predict(X))
    through_ort = cairn.onnx.load_pyfunc(path)
    assert isinstance(through_ort.get_raw_model(), ort.InferenceSession)
    np.testing.assert_array_equal(through_ort.predict(X), pipeline.predict(X))  # the signature's method param
    proba = through_ort.predict(X, params={"method": "predict_proba"})
    np.testing.assert_allclose(proba, pipeline.predict_proba(X), atol=1e-5)


def test_add_onnx_flavor_failure_leaves_no_model_or_the_old_one(tmp_path: Path, pipeline: Any, iris: Any) -> None:
    import cairn.sklearn

    X, _ = iris
    path = tmp_path / "m"
    model = cairn.sklearn.save_model(pipeline, path, input_example=X[:5])
    with pytest.raises(cairn.onnx.OnnxParityError):
        flavor.add_onnx_flavor(path, model, pipeline, X[:5], rtol=0, atol=0)
    assert not path.exists()
    model = cairn.sklearn.save_model(pipeline, path, input_example=X[:5])
    before = (path / "MLmodel").read_text()
    with pytest.raises(cairn.onnx.OnnxParityError):
        flavor.add_onnx_flavor(path, model, pipeline, X[:5], rtol=0, atol=0, remove_model_on_failure=False)
    assert (path / "MLmodel").read_text() == before and not (path / "onnx").exists()
    np.testing.assert_array_equal(cairn.pyfunc.load_model(path).predict(X), pipeline.predict(X))


# -- interop and import cost ---------------------------------------------------------------------------------


def test_import_loads_no_framework() -> None:
    code = (
        "import sys, cairn.onnx, cairn.flavors.onnx\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'torch', 'sklearn', 'skl2onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_mlflow_reads_cairn_onnx_models_and_cairn_reads_mlflow_ones(tmp_path: Path) -> None:
    mlflow_onnx = pytest.importorskip("mlflow.onnx", reason="mlflow is not installed (interop extra)")
    cairn.onnx.save_model(add_mul_proto(), tmp_path / "cairn-model")
    assert (
        mlflow_onnx.load_model(str(tmp_path / "cairn-model")).SerializeToString() == add_mul_proto().SerializeToString()
    )

    import mlflow.pyfunc  # MLflow's loader imports cairn.flavors.onnx and calls its _load_pyfunc

    a, b = np.ones((2, 1), np.float32), np.full((2, 1), 3.0, np.float32)
    through_mlflow = mlflow.pyfunc.load_model(str(tmp_path / "cairn-model")).predict({"a": a, "b": b})
    np.testing.assert_array_equal(through_mlflow["sum"], a + b)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow_onnx.save_model(add_mul_proto(), str(tmp_path / "mlflow-model"))
    assert cairn.onnx.load_model(tmp_path / "mlflow-model").SerializeToString() == add_mul_proto().SerializeToString()
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):  # MLflow records CUDA first by default
        loaded = cairn.onnx.load_pyfunc(tmp_path / "mlflow-model")
    out = loaded.predict({"a": np.ones((2, 1), np.float32), "b": np.full((2, 1), 3.0, np.float32)})
    np.testing.assert_array_equal(out["product"], np.full((2, 1), 3.0))


def test_sklearn_log_model_also_onnx_adds_a_checked_onnx_flavor() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import cairn
    import cairn.onnx
    import cairn.sklearn

    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 4)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(int)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels)
    with cairn.start_run():
        info = cairn.sklearn.log_model(pipeline, "model", input_example=features[:5], also_onnx=True)
    assert {"sklearn", "onnx", "python_function"} <= set(info.flavors)
    session_model = cairn.onnx.load_pyfunc(info.model_uri)
    native = cairn.sklearn.load_model(info.model_uri)
    onnx_labels = np.asarray(session_model.predict(features[:8])).ravel()
    assert onnx_labels.tolist() == native.predict(features[:8]).tolist()


def test_pytorch_log_model_also_onnx_adds_a_checked_onnx_flavor() -> None:
    import numpy as np
    import torch

    import cairn
    import cairn.onnx
    from cairn.flavors import pytorch as torch_flavor

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    example = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with cairn.start_run():
        info = torch_flavor.log_model(net, "model", input_example=example, also_onnx=True)
    assert {"pytorch", "onnx", "python_function"} <= set(info.flavors)
    batch = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)  # another batch size
    through_onnx = np.asarray(cairn.onnx.load_pyfunc(info.model_uri).predict(batch))
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(through_onnx.reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)
