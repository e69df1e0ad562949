"""scikit-learn models cross between cairn and the real ``mlflow`` package, both directions.

Needs the ``interop`` extra (``pip install 'cairn[interop]'``); without mlflow these tests skip,
except under ``CI=true``, where they fail. cairn itself never imports mlflow: here only the tests do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'cairn[sklearn]')")
pytest.importorskip("skops", reason="skops is not installed (pip install 'cairn[sklearn]')")

from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cairn
import cairn.pyfunc
import cairn.sklearn
from cairn.errors import UnsafeModel
from cairn.models.loading import resolve_local_model_dir


@pytest.fixture(scope="module")
def mlflow() -> ModuleType:
    try:
        import mlflow
        import mlflow.pyfunc
        import mlflow.sklearn
    except ImportError as exc:
        reason = f"mlflow is not installed (pip install 'cairn[interop]'): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the interop tests to run: {reason}")
        pytest.skip(reason)
    return mlflow


@pytest.fixture(autouse=True)
def _mlflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep MLflow's state in this test's directory; MLflow's own pickle gate stays closed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    monkeypatch.delenv("CAIRN_ALLOW_PICKLE", raising=False)
    yield


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(n_samples=120, n_features=5, random_state=3)


# -- cairn writes, MLflow reads -------------------------------------------------------------------------


def test_cairn_logged_model_loads_in_mlflow_pyfunc(mlflow: ModuleType, data: Any) -> None:
    X, y = data
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    with cairn.start_run():
        info = cairn.sklearn.log_model(forest, "model", input_example=X[:3])
    local_dir = resolve_local_model_dir(info.model_uri)

    loaded = mlflow.pyfunc.load_model(str(local_dir))
    assert loaded.metadata.flavors["python_function"]["loader_module"] == "cairn.flavors.sklearn"
    assert type(loaded._model_impl).__module__ == "cairn.flavors.sklearn"  # MLflow called our _load_pyfunc
    np.testing.assert_array_equal(loaded.predict(X), forest.predict(X))
    # MLflow enforces the signature cairn wrote, including the declared "method" param.
    np.testing.assert_array_equal(loaded.predict(X, params={"method": "predict_proba"}), forest.predict_proba(X))
    assert [p.name for p in loaded.metadata.signature.params.params] == ["method"]


def test_cairn_model_loads_with_mlflow_sklearn_native_loader(
    mlflow: ModuleType, data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's own skops loader reads the trusted-types list cairn records for it."""
    X, y = data
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    cairn.sklearn.save_model(forest, tmp_path / "m")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow gates even skops behind it
    native = mlflow.sklearn.load_model(str(tmp_path / "m"))
    np.testing.assert_array_equal(native.predict(X), forest.predict(X))


def test_cairn_cloudpickle_model_in_mlflow_still_needs_cairn_opt_in(
    mlflow: ModuleType, data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = data
    clf = LogisticRegression().fit(X, y)
    cairn.sklearn.save_model(clf, tmp_path / "m", serialization_format="cloudpickle")
    with pytest.raises(UnsafeModel, match="CAIRN_ALLOW_PICKLE=1"):
        mlflow.pyfunc.load_model(str(tmp_path / "m"))
    monkeypatch.setenv("CAIRN_ALLOW_PICKLE", "1")
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(str(tmp_path / "m")).predict(X), clf.predict(X))


# -- MLflow writes, cairn reads -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["cloudpickle", "pickle"])
def test_mlflow_pickled_model_loads_in_cairn_with_opt_in(
    mlflow: ModuleType, data: Any, tmp_path: Path, fmt: str
) -> None:
    X, y = data
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    path = tmp_path / f"mlflow-{fmt}"
    mlflow.sklearn.save_model(pipe, str(path), serialization_format=fmt, pip_requirements=["scikit-learn"])
    assert (path / "model.pkl").is_file()

    with pytest.raises(UnsafeModel, match="allow_pickle=True"):
        cairn.pyfunc.load_model(path)
    with pytest.raises(UnsafeModel):
        cairn.sklearn.load_model(path)

    loaded = cairn.pyfunc.load_model(path, allow_pickle=True)
    assert loaded.loader_module == "mlflow.sklearn"
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    np.testing.assert_allclose(
        cairn.sklearn.load_model(path, allow_pickle=True).predict_proba(X), pipe.predict_proba(X)
    )


def test_mlflow_skops_model_loads_in_cairn_without_opt_in(mlflow: ModuleType, data: Any, tmp_path: Path) -> None:
    X, y = data
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    path = tmp_path / "mlflow-skops"
    mlflow.sklearn.save_model(
        forest,
        str(path),
        serialization_format="skops",
        skops_trusted_types=["sklearn.tree._tree.Tree"],
        pip_requirements=["scikit-learn", "skops"],
        input_example=X[:2],
    )
    assert (path / "model.skops").is_file()
    loaded = cairn.pyfunc.load_model(path)  # skops: no unpickling, so no opt-in needed
    np.testing.assert_array_equal(loaded.predict(X), forest.predict(X))
    np.testing.assert_array_equal(cairn.sklearn.load_model(path).predict(X), forest.predict(X))


def test_mlflow_logged_model_from_a_run_loads_in_cairn(mlflow: ModuleType, data: Any) -> None:
    X, y = data
    clf = LogisticRegression().fit(X, y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            clf, name="model", serialization_format="cloudpickle", pip_requirements=["scikit-learn"]
        )
    local = mlflow.artifacts.download_artifacts(info.model_uri)
    with pytest.raises(UnsafeModel):
        cairn.pyfunc.load_model(local)
    loaded = cairn.pyfunc.load_model(local, allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
