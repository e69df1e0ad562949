"""Custom Python models: cloudpickle, artifacts, code paths, the pickle opt-in and MLflow interop."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import cairn
import cairn.pyfunc
from cairn import safety
from cairn.artifacts import get_artifact_store
from cairn.errors import InvalidArgument, ModelIntegrityError, SchemaMismatch, UnsafeModel
from cairn.models import Model
from cairn.models.hashes import FILES_MANIFEST, MANIFEST_SHA256_KEY, file_sha256
from tests.safety.payloads import Marker


class ScaledVocab(cairn.pyfunc.PythonModel):
    """Reads a factor file and a vocabulary directory in load_context; predicts x * factor + len(vocab)."""

    def __init__(self, bias: float) -> None:
        self.bias = bias
        self.factor: float | None = None
        self.words: list[str] = []

    def load_context(self, context: cairn.pyfunc.PythonModelContext) -> None:
        self.factor = float(Path(context.artifacts["factor"]).read_text())
        self.words = sorted(p.name for p in Path(context.artifacts["vocab"]).iterdir())
        self.config = context.model_config

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.Series:
        assert self.factor is not None
        power = (params or {}).get("power", 1)
        return (model_input["x"] * self.factor) ** power + self.bias + len(self.words)


class NoContext(cairn.pyfunc.PythonModel):
    """MLflow 3 style: predict(model_input, params=None) without a context."""

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:  # type: ignore[override]
        return np.asarray(model_input) + 1


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(safety.ALLOW_PICKLE_ENV, raising=False)


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "factor.txt").write_text("3")
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    for word in ("alpha", "beta"):
        (vocab / word).write_text(word)
    return {"factor": str(tmp_path / "factor.txt"), "vocab": str(vocab)}


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"x": [1.0, 2.0]})


def test_log_load_predict_with_artifacts(artifacts: dict[str, str], frame: pd.DataFrame) -> None:
    with cairn.start_run() as run:
        info = cairn.pyfunc.log_model(
            "model",
            python_model=ScaledVocab(bias=0.5),
            artifacts=artifacts,
            input_example=frame,
            model_config={"mode": "fast"},
        )
    assert info.model_uri == f"runs:/{run.info.run_id}/model"
    conf = info.flavors["python_function"]
    assert conf["loader_module"] == "cairn.flavors.pyfunc" and conf["python_model"] == "python_model.pkl"
    assert conf["cloudpickle_version"] and conf["config"] == {"mode": "fast"}
    assert conf["artifacts"] == {
        "factor": {"path": "artifacts/factor/factor.txt", "uri": artifacts["factor"]},
        "vocab": {"path": "artifacts/vocab", "uri": artifacts["vocab"]},
    }
    # the sources can go away: the model carries its own copies
    for source in artifacts.values():
        path = Path(source)
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()

    loaded = cairn.pyfunc.load_model(info.model_uri, allow_pickle=True)
    np.testing.assert_allclose(loaded.predict(frame), [3.0 + 0.5 + 2, 6.0 + 0.5 + 2])
    python_model = loaded.unwrap_python_model()
    assert isinstance(python_model, ScaledVocab)
    assert python_model.words == ["alpha", "beta"] and python_model.config == {"mode": "fast"}
    assert Path(loaded.metadata.flavors["python_function"]["artifacts"]["vocab"]["path"]).parts == (
        "artifacts",
        "vocab",
    )
    overridden = cairn.pyfunc.load_model(info.model_uri, allow_pickle=True, model_config={"mode": "slow"})
    assert overridden.unwrap_python_model().config == {"mode": "slow"}
    # the native loader of a custom model is pyfunc itself
    assert isinstance(cairn.models.load_model(info.model_uri, allow_pickle=True), cairn.pyfunc.PyFuncModel)


def test_signature_is_inferred_and_enforced_at_predict(artifacts: dict[str, str], frame: pd.DataFrame) -> None:
    info = cairn.pyfunc.log_model("m", python_model=ScaledVocab(bias=0.0), artifacts=artifacts, input_example=frame)
    assert info.signature is not None and info.signature.inputs is not None
    assert info.signature.inputs.input_names() == ["x"]
    assert info.signature.outputs is not None  # from running the model on the example after load_context
    loaded = cairn.pyfunc.load_model(info.model_uri, allow_pickle=True)
    np.testing.assert_allclose(loaded.predict(pd.DataFrame({"x": [1, 2]})), [5.0, 8.0])  # int -> double is safe
    with pytest.raises(SchemaMismatch, match=r"missing required column\(s\) 'x' \(double\)"):
        loaded.predict(pd.DataFrame({"y": [1.0]}))
    with pytest.raises(SchemaMismatch, match=r"column 'x': expected double.*got (object|str)"):
        loaded.predict(pd.DataFrame({"x": ["one"]}))


def test_params_declared_through_the_input_example_reach_predict(
    artifacts: dict[str, str], frame: pd.DataFrame
) -> None:
    info = cairn.pyfunc.log_model(
        "m", python_model=ScaledVocab(bias=0.0), artifacts=artifacts, input_example=(frame, {"power": 1})
    )
    loaded = cairn.pyfunc.load_model(info.model_uri, allow_pickle=True)
    np.testing.assert_allclose(loaded.predict(frame, params={"power": 2}), [9.0 + 2, 36.0 + 2])
    with pytest.raises(SchemaMismatch, match="power"):
        loaded.predict(frame, params={"power": "square"})


@pytest.fixture
def helper_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A module only importable from a code path: (module name, its source file)."""
    name = f"c41rn_custom_{uuid.uuid4().hex[:8]}"
    source = tmp_path / "src" / f"{name}.py"
    source.parent.mkdir()
    source.write_text(
        "import cairn.pyfunc\n"
        "class Tripler(cairn.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return [3 * v for v in model_input]\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test, with whatever load added
    yield name, source
    sys.modules.pop(name, None)


def test_code_paths_are_on_sys_path_before_unpickling(tmp_path: Path, helper_module: tuple[str, Path]) -> None:
    name, source = helper_module
    sys.path.insert(0, str(source.parent))
    module = __import__(name)
    cairn.pyfunc.save_model(tmp_path / "m", python_model=module.Tripler(), code_paths=[str(source)])
    # forget the module and its source: only the model's code/ copy can provide it now
    sys.path.remove(str(source.parent))
    del sys.modules[name]
    source.unlink()

    assert (tmp_path / "m" / "code" / f"{name}.py").is_file()
    # the pickle refers to the module by name: without code/ on sys.path it cannot be loaded
    shutil.copytree(tmp_path / "m", tmp_path / "no-code")
    mlmodel = tmp_path / "no-code" / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("    code: code\n", ""))
    with pytest.raises(ModuleNotFoundError, match=name):
        cairn.pyfunc.load_model(tmp_path / "no-code", allow_pickle=True)
    loaded = cairn.pyfunc.load_model(tmp_path / "m", allow_pickle=True)
    assert loaded.predict([1, 2]) == [3, 6]
    assert type(loaded.unwrap_python_model()).__module__ == name


def test_loading_needs_the_pickle_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cairn.pyfunc.save_model(tmp_path / "m", python_model=NoContext())
    with pytest.raises(UnsafeModel) as refused:
        cairn.pyfunc.load_model(tmp_path / "m")
    message = str(refused.value)
    assert "python_model.pkl" in message and "allow_pickle=True" in message and "CAIRN_ALLOW_PICKLE=1" in message
    with pytest.raises(UnsafeModel):
        cairn.models.load_model(tmp_path / "m")

    assert cairn.pyfunc.load_model(tmp_path / "m", allow_pickle=True).predict([1, 2]).tolist() == [2, 3]
    monkeypatch.setenv("CAIRN_ALLOW_PICKLE", "1")
    assert cairn.pyfunc.load_model(tmp_path / "m").predict([5]).tolist() == [6]


def _plant(model_dir: Path, payload: bytes) -> None:
    """Replace python_model.pkl and rewrite the manifest and MLmodel hashes, as a thorough attacker would."""
    (model_dir / "python_model.pkl").write_bytes(payload)
    manifest = json.loads((model_dir / FILES_MANIFEST).read_text())
    manifest["files"]["python_model.pkl"] = {
        "sha256": file_sha256(model_dir / "python_model.pkl"),
        "size": len(payload),
    }
    content = json.dumps(manifest).encode()
    (model_dir / FILES_MANIFEST).write_bytes(content)
    meta = Model.load(model_dir)
    assert meta.metadata is not None
    meta.metadata[MANIFEST_SHA256_KEY] = hashlib.sha256(content).hexdigest()
    meta.save(model_dir)


def test_an_attackers_pickle_never_runs_on_the_default_path(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.marker"
    model_dir = tmp_path / "m"
    cairn.pyfunc.save_model(model_dir, python_model=NoContext())
    _plant(model_dir, pickle.dumps(Marker(marker)))

    with pytest.raises(UnsafeModel, match="allow_pickle=True"):
        cairn.pyfunc.load_model(model_dir)
    with pytest.raises(UnsafeModel):
        cairn.models.load_model(model_dir)
    with pytest.raises(UnsafeModel):
        safety.load_cloudpickle(model_dir / "python_model.pkl")
    assert not marker.exists()

    # a payload that does not also fix the hashes is caught before any opt-in matters
    (model_dir / "python_model.pkl").write_bytes(pickle.dumps(Marker(marker)) + b" ")
    with pytest.raises(ModelIntegrityError, match=r"python_model\.pkl"):
        cairn.pyfunc.load_model(model_dir, allow_pickle=True)
    assert not marker.exists()

    # the payload is real: with the opt-in it runs (which is why the opt-in exists)
    _plant(model_dir, pickle.dumps(Marker(marker)))
    with pytest.raises(InvalidArgument, match="not a python model"):
        cairn.pyfunc.load_model(model_dir, allow_pickle=True)
    assert marker.read_text() == "pwned"


def test_functions_and_context_free_models(tmp_path: Path) -> None:
    cairn.pyfunc.save_model(tmp_path / "f", python_model=lambda data: [len(s) for s in data])
    assert cairn.pyfunc.load_model(tmp_path / "f", allow_pickle=True).predict(["ab", "c"]) == [2, 1]
    cairn.pyfunc.save_model(tmp_path / "n", python_model=NoContext(), input_example=np.array([[1.0, 2.0]]))
    loaded = cairn.pyfunc.load_model(tmp_path / "n", allow_pickle=True)
    assert loaded.predict(np.array([[0.0, 1.0]])).tolist() == [[1.0, 2.0]]
    with pytest.raises(SchemaMismatch, match="shape"):
        loaded.predict(np.array([[0.0, 1.0, 2.0]]))


def test_artifacts_from_runs_and_remote_uris(tmp_path: Path, frame: pd.DataFrame) -> None:
    (tmp_path / "factor.txt").write_text("2")
    with cairn.start_run() as run:
        cairn.log_artifact(str(tmp_path / "factor.txt"), "inputs")
    remote_root = f"memory://cairn-pyfunc-tests/{uuid.uuid4().hex}"
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "gamma").write_text("g")
    get_artifact_store(remote_root).put_dir(vocab, "vocab")

    cairn.pyfunc.save_model(
        tmp_path / "m",
        python_model=ScaledVocab(bias=0.0),
        artifacts={"factor": f"runs:/{run.info.run_id}/inputs/factor.txt", "vocab": f"{remote_root}/vocab"},
    )
    assert (tmp_path / "m" / "artifacts" / "factor" / "factor.txt").read_text() == "2"
    assert (tmp_path / "m" / "artifacts" / "vocab" / "gamma").read_text() == "g"
    loaded = cairn.pyfunc.load_model(tmp_path / "m", allow_pickle=True)
    np.testing.assert_allclose(loaded.predict(frame), [2.0 + 1, 4.0 + 1])


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="python_model is required"):
        cairn.pyfunc.save_model(tmp_path / "a")
    with pytest.raises(InvalidArgument, match=r"must be a cairn\.pyfunc\.PythonModel"):
        cairn.pyfunc.save_model(tmp_path / "b", python_model=42)
    with pytest.raises(InvalidArgument, match="does not exist"):
        cairn.pyfunc.save_model(tmp_path / "c", python_model=NoContext(), artifacts={"x": str(tmp_path / "nope")})
    with pytest.raises(InvalidArgument, match="simple names"):
        cairn.pyfunc.save_model(tmp_path / "d", python_model=NoContext(), artifacts={"../x": str(tmp_path)})
    assert not any((tmp_path / name).exists() for name in "abcd")
    with pytest.raises(InvalidArgument, match="give one"):
        cairn.pyfunc.log_model("a", python_model=NoContext(), artifact_path="b")
    with pytest.raises(InvalidArgument, match="needs the model's name"):
        cairn.pyfunc.log_model(python_model=NoContext())
    info = cairn.pyfunc.log_model(artifact_path="legacy", python_model=NoContext())
    assert info.artifact_path == "legacy"
    cairn.end_run()


def test_log_model_registers_the_custom_model() -> None:
    with cairn.start_run():
        info = cairn.pyfunc.log_model("model", python_model=NoContext(), registered_model_name="plus-one")
    assert info.registered_model_version == 1
    assert cairn.pyfunc.load_model("models:/plus-one/1", allow_pickle=True).predict([1]).tolist() == [2]


# --------------------------------------------------------------------------------- MLflow interop


def test_mlflow_loads_a_cairn_custom_model(
    tmp_path: Path, artifacts: dict[str, str], frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow_pyfunc = pytest.importorskip("mlflow.pyfunc")
    cairn.pyfunc.save_model(
        tmp_path / "m", python_model=ScaledVocab(bias=1.0), artifacts=artifacts, input_example=frame
    )
    expected = cairn.pyfunc.load_model(tmp_path / "m", allow_pickle=True).predict(frame)
    # mlflow imports cairn.flavors.pyfunc, whose loader still needs cairn's opt-in
    with pytest.raises(UnsafeModel):
        mlflow_pyfunc.load_model(str(tmp_path / "m"))
    monkeypatch.setenv("CAIRN_ALLOW_PICKLE", "1")
    loaded = mlflow_pyfunc.load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict(frame), expected)
    assert isinstance(loaded.unwrap_python_model(), ScaledVocab)


def test_cairn_loads_an_mlflow_custom_model(tmp_path: Path, frame: pd.DataFrame) -> None:
    mlflow_pyfunc = pytest.importorskip("mlflow.pyfunc")

    class Offset(mlflow_pyfunc.PythonModel):  # type: ignore[misc, name-defined]
        def load_context(self, context):  # type: ignore[no-untyped-def]
            self.offset = float(Path(context.artifacts["offset"]).read_text())

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input["x"] + self.offset

    (tmp_path / "offset.txt").write_text("10")
    mlflow_pyfunc.save_model(
        str(tmp_path / "m"),
        python_model=Offset(),
        artifacts={"offset": str(tmp_path / "offset.txt")},
        pip_requirements=["cloudpickle"],
    )
    conf = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())["flavors"]["python_function"]
    assert conf["loader_module"] == "mlflow.pyfunc.model"
    assert not (tmp_path / "m" / FILES_MANIFEST).exists()  # no hashes: accepted unchecked

    with pytest.raises(UnsafeModel, match=r"python_model\.pkl"):
        cairn.pyfunc.load_model(tmp_path / "m")
    loaded = cairn.pyfunc.load_model(tmp_path / "m", allow_pickle=True)
    np.testing.assert_allclose(loaded.predict(frame), [11.0, 12.0])
    assert isinstance(loaded.unwrap_python_model(), mlflow_pyfunc.PythonModel)
