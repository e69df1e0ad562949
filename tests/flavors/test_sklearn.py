"""The scikit-learn flavor: skops by default, cloudpickle behind the opt-in, pyfunc methods, runs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'cairn[sklearn]')")
pytest.importorskip("skops", reason="skops is not installed (pip install 'cairn[sklearn]')")

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import cairn
import cairn.pyfunc
import cairn.sklearn
from cairn.errors import InvalidArgument, ResourceAlreadyExists, SchemaMismatch, UnsafeModel
from cairn.flavors import sklearn as flavor
from cairn.models import Model
from cairn.models.loading import load_model as load_native


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=120, n_features=5, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def forest(data: tuple[np.ndarray, np.ndarray]) -> RandomForestClassifier:
    X, y = data
    return RandomForestClassifier(n_estimators=8, random_state=0).fit(X, y)


class MajorityClassifier(ClassifierMixin, BaseEstimator):
    """A custom estimator: skops cannot trust its type, so it needs cloudpickle."""

    def fit(self, X: Any, y: Any) -> MajorityClassifier:
        values, counts = np.unique(y, return_counts=True)
        self.classes_ = values
        self.majority_ = values[np.argmax(counts)]
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.full(len(X), self.majority_)


# -- skops round trip ---------------------------------------------------------------------------------


def test_skops_round_trip_writes_mlflow_layout(tmp_path: Path, forest: Any, data: Any) -> None:
    X, _ = data
    model = cairn.sklearn.save_model(forest, tmp_path / "m", input_example=X[:3])
    content = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())
    sk = content["flavors"]["sklearn"]
    assert sk["pickled_model"] == "model.skops"
    assert sk["serialization_format"] == "skops"
    assert sk["sklearn_version"] == __import__("sklearn").__version__
    assert "code" in sk and sk["code"] is None
    assert sk["skops_trusted_types"] == ["sklearn.tree._tree.Tree"]
    pyfunc = content["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "cairn.flavors.sklearn"
    assert pyfunc["model_path"] == "model.skops"
    assert (tmp_path / "m" / "model.skops").is_file()
    assert not (tmp_path / "m" / "model.pkl").exists()
    requirements = (tmp_path / "m" / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "skops==" in requirements
    # Signature inferred from the example by running predict, plus the method param.
    assert model.signature is not None and model.signature.inputs is not None
    assert model.signature.outputs is not None
    assert [(p.name, p.default) for p in model.signature.params] == [("method", "predict")]

    loaded = cairn.sklearn.load_model(tmp_path / "m")
    assert isinstance(loaded, RandomForestClassifier)
    np.testing.assert_array_equal(loaded.predict(X), forest.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), forest.predict_proba(X))


def test_pipeline_round_trip_through_native_loader(tmp_path: Path, data: Any) -> None:
    X, y = data
    pipe = make_pipeline(StandardScaler(), FunctionTransformer(np.tanh), LogisticRegression()).fit(X, y)
    cairn.sklearn.save_model(pipe, tmp_path / "p")
    loaded = load_native(tmp_path / "p")  # picks the sklearn flavor from the MLmodel file
    assert type(loaded).__name__ == "Pipeline"
    np.testing.assert_allclose(loaded.predict_proba(X), pipe.predict_proba(X))


def test_pyfunc_methods_through_params(tmp_path: Path, data: Any) -> None:
    X, y = data
    clf = LogisticRegression().fit(X, y)
    cairn.sklearn.save_model(clf, tmp_path / "m", input_example=X[:2])
    model = cairn.pyfunc.load_model(tmp_path / "m")
    np.testing.assert_array_equal(model.predict(X), clf.predict(X))
    np.testing.assert_allclose(model.predict(X, params={"method": "predict_proba"}), clf.predict_proba(X))
    np.testing.assert_allclose(model.predict(X, params={"method": "decision_function"}), clf.decision_function(X))
    with pytest.raises(InvalidArgument, match="transform"):
        model.predict(X, params={"method": "transform"})  # LogisticRegression has no transform
    with pytest.raises(InvalidArgument, match="must be one of"):
        model.predict(X, params={"method": "__class__"})
    with pytest.raises(SchemaMismatch):
        model.predict(X[:, :3])  # the signature says 5 features


def test_method_param_added_without_example_and_to_a_given_signature(tmp_path: Path, data: Any) -> None:
    X, y = data
    clf = LogisticRegression().fit(X, y)
    bare = cairn.sklearn.save_model(clf, tmp_path / "bare")
    assert bare.signature is not None and bare.signature.inputs is None
    assert [p.name for p in bare.signature.params] == ["method"]
    np.testing.assert_allclose(
        cairn.pyfunc.load_model(tmp_path / "bare").predict(X, params={"method": "predict_proba"}),
        clf.predict_proba(X),
    )
    given = cairn.models.infer_signature(X, clf.predict(X), params={"threshold": 0.5})
    model = cairn.sklearn.save_model(clf, tmp_path / "given", signature=given)
    assert model.signature is not None
    assert [p.name for p in model.signature.params] == ["threshold", "method"]
    none = cairn.sklearn.save_model(clf, tmp_path / "none", signature=False)
    assert none.signature is None


def test_transformer_defaults_to_transform(tmp_path: Path, data: Any) -> None:
    X, _ = data
    pca = PCA(n_components=2).fit(X)
    model = cairn.sklearn.save_model(pca, tmp_path / "pca", input_example=X[:4])
    assert model.signature is not None
    assert model.signature.params is not None
    assert model.signature.params.params[0].default == "transform"
    np.testing.assert_allclose(cairn.pyfunc.load_model(tmp_path / "pca").predict(X), pca.transform(X))


def test_dataframe_input_example(tmp_path: Path, data: Any) -> None:
    X, y = data
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = LogisticRegression().fit(frame, y)
    cairn.sklearn.save_model(clf, tmp_path / "df", input_example=frame.head(3))
    model = cairn.pyfunc.load_model(tmp_path / "df")
    shuffled = frame[list(reversed(frame.columns))]  # column order is fixed by enforcement
    np.testing.assert_array_equal(model.predict(shuffled), clf.predict(frame))
    with pytest.raises(SchemaMismatch, match="f0"):
        model.predict(frame.drop(columns=["f0"]))


def test_save_refuses_existing_directory_and_bad_options(tmp_path: Path, forest: Any) -> None:
    cairn.sklearn.save_model(forest, tmp_path / "m")
    with pytest.raises(ResourceAlreadyExists):
        cairn.sklearn.save_model(forest, tmp_path / "m")
    with pytest.raises(InvalidArgument, match="serialization_format"):
        cairn.sklearn.save_model(forest, tmp_path / "x", serialization_format="pickle")
    with pytest.raises(InvalidArgument, match="pyfunc_predict_fn"):
        cairn.sklearn.save_model(forest, tmp_path / "y", pyfunc_predict_fn="fit")


# -- cloudpickle and the opt-in -------------------------------------------------------------------------


def test_skops_refuses_custom_class_and_suggests_cloudpickle(tmp_path: Path, data: Any) -> None:
    X, y = data
    custom = MajorityClassifier().fit(X, y)
    with pytest.raises(cairn.sklearn.SkopsUnsupported, match="serialization_format='cloudpickle'") as info:
        cairn.sklearn.save_model(custom, tmp_path / "m")
    assert "MajorityClassifier" in str(info.value)
    assert not (tmp_path / "m").exists()  # nothing half-written left behind


def test_cloudpickle_needs_opt_in(tmp_path: Path, data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = data
    custom = MajorityClassifier().fit(X, y)
    cairn.sklearn.save_model(custom, tmp_path / "m", serialization_format="cloudpickle")
    content = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())
    assert content["flavors"]["sklearn"]["pickled_model"] == "model.pkl"
    assert content["flavors"]["sklearn"]["serialization_format"] == "cloudpickle"
    assert "cloudpickle==" in (tmp_path / "m" / "requirements.txt").read_text()

    for load in (lambda: cairn.sklearn.load_model(tmp_path / "m"), lambda: cairn.pyfunc.load_model(tmp_path / "m")):
        with pytest.raises(UnsafeModel) as info:
            load()
        message = str(info.value)
        assert "allow_pickle=True" in message and "CAIRN_ALLOW_PICKLE=1" in message
        assert "model.pkl" in message

    loaded = cairn.sklearn.load_model(tmp_path / "m", allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict(X), custom.predict(X))
    np.testing.assert_array_equal(
        cairn.pyfunc.load_model(tmp_path / "m", allow_pickle=True).predict(X), custom.predict(X)
    )
    monkeypatch.setenv("CAIRN_ALLOW_PICKLE", "1")
    np.testing.assert_array_equal(cairn.pyfunc.load_model(tmp_path / "m").predict(X), custom.predict(X))


# -- what a skops file may name -------------------------------------------------------------------------


def test_is_trusted_type_checks_the_defining_module() -> None:
    assert flavor.is_trusted_type("sklearn.tree._tree.Tree")
    assert flavor.is_trusted_type("numpy.log1p")
    assert flavor.is_trusted_type("scipy.sparse._csr.csr_matrix")
    assert not flavor.is_trusted_type("builtins.eval")
    assert not flavor.is_trusted_type("os.system")
    # Inside a trusted package by name, but really subprocess's function or a module:
    assert not flavor.is_trusted_type("sklearn.utils._testing.check_output")
    assert not flavor.is_trusted_type("sklearn.utils._testing.os")
    assert not flavor.is_trusted_type("sklearn.no_such_module.Thing")


def _retarget_function(path: Path, module: str, name: str) -> None:
    """Rewrite the skops file so its FunctionTransformer names another function."""
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    schema = json.loads(members["schema.json"])
    func = schema["content"]["content"]["func"]
    func["__module__"], func["__class__"] = module, name
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)


def test_crafted_skops_file_is_refused(tmp_path: Path, data: Any) -> None:
    X, _ = data
    transformer = FunctionTransformer(func=np.log1p).fit(np.abs(X))
    cairn.sklearn.save_model(transformer, tmp_path / "m")
    model_file = tmp_path / "m" / "model.skops"
    _retarget_function(model_file, "sklearn.utils._testing", "check_output")
    # The files manifest notices the change first ...
    with pytest.raises(UnsafeModel):
        cairn.sklearn.load_model(tmp_path / "m")
    # ... and the skops check refuses the file on its own (e.g. an MLflow model without a manifest).
    with pytest.raises(UnsafeModel, match=r"sklearn\.utils\._testing\.check_output") as info:
        flavor.load_skops(model_file)
    assert "trusted_types=" in str(info.value)


def test_foreign_type_loads_only_when_trusted_by_name(tmp_path: Path, data: Any) -> None:
    X, _ = data
    transformer = FunctionTransformer(func=np.log1p).fit(np.abs(X))
    path = tmp_path / "t.skops"
    import skops.io

    skops.io.dump(transformer, path)
    _retarget_function(path, "math", "sqrt")
    with pytest.raises(UnsafeModel, match=r"math\.sqrt"):
        flavor.load_skops(path)
    loaded = flavor.load_skops(path, trusted_types=["math.sqrt"])
    import math

    assert loaded.func is math.sqrt


def test_mlflow_trusted_types_list_in_the_file_is_ignored(tmp_path: Path, data: Any) -> None:
    """A model file cannot vouch for itself: cairn recomputes the trust list from the skops content."""
    X, _ = data
    transformer = FunctionTransformer(func=np.log1p).fit(np.abs(X))
    cairn.sklearn.save_model(transformer, tmp_path / "m")
    meta = Model.load(tmp_path / "m")
    meta.flavors["sklearn"]["skops_trusted_types"] = ["math.sqrt"]
    meta.metadata = {}  # drop the manifest link, as in a model written by another tool
    meta.save(tmp_path / "m")
    (tmp_path / "m" / "cairn_files.json").unlink()
    _retarget_function(tmp_path / "m" / "model.skops", "math", "sqrt")
    with pytest.raises(UnsafeModel, match=r"math\.sqrt"):
        cairn.sklearn.load_model(tmp_path / "m")
    with pytest.raises(UnsafeModel, match=r"math\.sqrt"):
        cairn.pyfunc.load_model(tmp_path / "m")


# -- runs -------------------------------------------------------------------------------------------------


def test_log_model_into_a_run_and_load_by_uri(forest: Any, data: Any) -> None:
    X, _ = data
    with cairn.start_run() as run:
        info = cairn.sklearn.log_model(forest, "forest", input_example=X[:2])
    assert info.model_uri == f"runs:/{run.info.run_id}/forest"
    assert info.run_id == run.info.run_id
    assert "sklearn" in info.flavors and info.signature is not None
    np.testing.assert_array_equal(cairn.sklearn.load_model(info.model_uri).predict(X), forest.predict(X))
    np.testing.assert_allclose(
        cairn.pyfunc.load_model(info.model_uri).predict(X, params={"method": "predict_proba"}),
        forest.predict_proba(X),
    )
    files = {f.path for f in cairn.Client().list_artifacts(run.info.run_id, "forest")}
    assert {"forest/MLmodel", "forest/model.skops", "forest/input_example.json"} <= files


def test_log_model_accepts_mlflow_artifact_path_keyword(forest: Any) -> None:
    with cairn.start_run():
        info = cairn.sklearn.log_model(forest, artifact_path="legacy")
        assert info.model_uri.endswith("/legacy")
        default = cairn.sklearn.log_model(forest)
        assert default.model_uri.endswith("/model")
        with pytest.raises(InvalidArgument, match="disagree"):
            cairn.sklearn.log_model(forest, "a", artifact_path="b")


def test_log_model_with_run_id_and_registration(forest: Any, data: Any) -> None:
    X, _ = data
    run = cairn.start_run()
    cairn.end_run()
    info = cairn.sklearn.log_model(forest, "model", run_id=run.info.run_id, registered_model_name="forest")
    assert info.run_id == run.info.run_id
    assert info.registered_model_version == 1
    assert cairn.active_run() is None  # logging to an explicit run starts none
    np.testing.assert_array_equal(cairn.sklearn.load_model("models:/forest/1").predict(X), forest.predict(X))


def test_code_paths_make_pickled_custom_classes_loadable(
    tmp_path: Path, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import sys

    source = tmp_path / "src"
    source.mkdir()
    (source / "cairn_test_custom_model.py").write_text(
        "import numpy as np\n"
        "from sklearn.base import BaseEstimator, RegressorMixin\n"
        "class MeanRegressor(RegressorMixin, BaseEstimator):\n"
        "    def fit(self, X, y):\n"
        "        self.mean_ = float(np.mean(y))\n"
        "        return self\n"
        "    def predict(self, X):\n"
        "        return np.full(len(X), self.mean_)\n"
    )
    monkeypatch.syspath_prepend(str(source))
    module = importlib.import_module("cairn_test_custom_model")
    X, y = data
    regressor = module.MeanRegressor().fit(X, y)
    cairn.sklearn.save_model(
        regressor,
        tmp_path / "m",
        serialization_format="cloudpickle",
        code_paths=[source / "cairn_test_custom_model.py"],
    )
    assert yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())["flavors"]["sklearn"]["code"] == "code"
    # Forget the module and its source location: only the model's code/ directory can provide it now.
    monkeypatch.delitem(sys.modules, "cairn_test_custom_model")
    sys.path.remove(str(source))
    loaded = cairn.sklearn.load_model(tmp_path / "m", allow_pickle=True)
    np.testing.assert_allclose(loaded.predict(X), regressor.predict(X))
    assert str(tmp_path / "m" / "code") in sys.path
    sys.path.remove(str(tmp_path / "m" / "code"))
    sys.modules.pop("cairn_test_custom_model", None)
