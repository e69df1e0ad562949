"""scikit-learn autolog: what one fit logs, nesting, parameter searches, safety and undoing the patches."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'cairn[sklearn]')")
pytest.importorskip("skops", reason="skops is not installed (pip install 'cairn[sklearn]')")

import sklearn.metrics
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.datasets import make_classification, make_regression
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import cairn
import cairn.pyfunc
import cairn.sklearn
from cairn.autolog import AutologWarning
from cairn.autolog import sklearn as autolog_sklearn
from cairn.tracking import system_tags, validation

CLASSIFIER_METRICS = {
    "training_accuracy_score",
    "training_precision_score",
    "training_recall_score",
    "training_f1_score",
    "training_log_loss",
    "training_roc_auc",
    "training_score",
}
REGRESSOR_METRICS = {
    "training_mean_squared_error",
    "training_root_mean_squared_error",
    "training_mean_absolute_error",
    "training_r2_score",
    "training_score",
}


@pytest.fixture(autouse=True)
def _autolog() -> Iterator[None]:
    cairn.sklearn.autolog()
    yield
    cairn.sklearn.autolog(disable=True)


@pytest.fixture(scope="module")
def clf_data() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(n_samples=150, n_features=6, n_informative=4, random_state=0)


def _runs() -> list[cairn.Run]:
    return cairn.search_runs(output_format="list")  # type: ignore[return-value]


def _only_run() -> cairn.Run:
    runs = _runs()
    assert len(runs) == 1, [r.data.tags.get("estimator_name") for r in runs]
    return runs[0]


def _artifacts(run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in cairn.Client().list_artifacts(run_id, path)}


# -- one fit ----------------------------------------------------------------------------------------------


def test_classifier_fit_logs_params_metrics_dataset_and_model(clf_data: Any) -> None:
    X, y = clf_data
    model = LogisticRegression(C=0.5, max_iter=200).fit(X, y)
    run = _only_run()
    assert run.info.status.value == "FINISHED"  # autolog started the run and ended it
    assert cairn.active_run() is None
    params = run.data.params
    assert params["C"] == "0.5" and params["max_iter"] == "200"
    assert set(params) == set(model.get_params(deep=True))
    assert run.data.tags["estimator_name"] == "LogisticRegression"
    assert run.data.tags["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert set(run.data.metrics) == CLASSIFIER_METRICS
    assert run.data.metrics["training_accuracy_score"] == pytest.approx(
        sklearn.metrics.accuracy_score(y, model.predict(X))
    )
    assert run.data.metrics["training_f1_score"] == pytest.approx(
        sklearn.metrics.f1_score(y, model.predict(X), average="weighted")
    )
    assert run.data.metrics["training_log_loss"] == pytest.approx(sklearn.metrics.log_loss(y, model.predict_proba(X)))
    assert run.data.metrics["training_roc_auc"] == pytest.approx(
        sklearn.metrics.roc_auc_score(y, model.predict_proba(X)[:, 1])
    )
    assert run.data.metrics["training_score"] == pytest.approx(model.score(X, y))
    assert run.data.tags[autolog_sklearn.DIGEST_TAG] == autolog_sklearn.dataset_digest(X, y)
    assert run.data.tags[autolog_sklearn.SHAPE_TAG] == "(150, 6)"
    assert run.data.tags[autolog_sklearn.TARGET_SHAPE_TAG] == "(150,)"

    assert "model" in _artifacts(run.info.run_id)
    loaded = cairn.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    signature = loaded.metadata.signature
    assert signature is not None and signature.inputs is not None and signature.outputs is not None
    assert "input_example.json" not in {p.rsplit("/", 1)[-1] for p in _artifacts(run.info.run_id, "model")}
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_allclose(loaded.predict(X, params={"method": "predict_proba"}), model.predict_proba(X))


def test_regressor_metrics(clf_data: Any) -> None:
    X, y = make_regression(n_samples=80, n_features=4, noise=0.5, random_state=1)
    weights = np.linspace(0.5, 2.0, len(y))
    model = LinearRegression().fit(X, y, sample_weight=weights)
    metrics = _only_run().data.metrics
    assert set(metrics) == REGRESSOR_METRICS
    predicted = model.predict(X)
    mse = sklearn.metrics.mean_squared_error(y, predicted, sample_weight=weights)
    assert metrics["training_mean_squared_error"] == pytest.approx(mse)
    assert metrics["training_root_mean_squared_error"] == pytest.approx(np.sqrt(mse))
    assert metrics["training_mean_absolute_error"] == pytest.approx(
        sklearn.metrics.mean_absolute_error(y, predicted, sample_weight=weights)
    )
    assert metrics["training_r2_score"] == pytest.approx(sklearn.metrics.r2_score(y, predicted, sample_weight=weights))


def test_roc_auc_left_out_when_undefined() -> None:
    X = np.random.default_rng(0).normal(size=(30, 3))
    y = np.array([0, 1, 2] * 10)
    RandomForestClassifier(n_estimators=3, random_state=0).fit(X[:20], y[:20])
    metrics = _only_run().data.metrics
    assert "training_roc_auc" in metrics  # multiclass, every class present
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutologWarning)  # leaving a metric out is not a failure
        from sklearn.svm import LinearSVC

        LinearSVC().fit(X, y)  # no predict_proba: no log_loss, no roc_auc
    newest = max(_runs(), key=lambda r: r.info.start_time)
    assert newest.data.tags["estimator_name"] == "LinearSVC"
    assert "training_log_loss" not in newest.data.metrics and "training_roc_auc" not in newest.data.metrics
    assert "training_accuracy_score" in newest.data.metrics


def test_input_example_and_pandas_data(clf_data: Any) -> None:
    cairn.sklearn.autolog(log_input_examples=True)
    X, y = clf_data
    frame = pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])])
    model = LogisticRegression().fit(frame, pd.Series(y, name="label"))
    run = _only_run()
    assert run.data.tags[autolog_sklearn.SHAPE_TAG] == "(150, 6)"
    files = {p.rsplit("/", 1)[-1] for p in _artifacts(run.info.run_id, "model")}
    assert "input_example.json" in files
    loaded = cairn.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    example = loaded.metadata.load_input_example(loaded.model_dir)
    assert list(example.columns) == list(frame.columns) and len(example) == 5
    assert [c.name for c in loaded.metadata.signature.inputs] == list(frame.columns)
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))


def test_fit_inside_an_active_run_logs_into_it(clf_data: Any) -> None:
    X, y = clf_data
    with cairn.start_run() as run:
        LogisticRegression().fit(X, y)
        assert cairn.active_run() is not None and cairn.active_run().info.run_id == run.info.run_id
    stored = _only_run()
    assert stored.info.run_id == run.info.run_id
    assert "training_accuracy_score" in stored.data.metrics


def test_fit_predict_and_fit_transform_log_once(clf_data: Any) -> None:
    X, _ = clf_data
    KMeans(n_clusters=3, n_init=2, random_state=0).fit_predict(X)  # fit_predict calls fit: one run
    runs = _runs()
    assert len(runs) == 1 and runs[0].data.tags["estimator_name"] == "KMeans"
    assert "training_score" in runs[0].data.metrics
    PCA(n_components=2).fit_transform(X)
    assert sorted(r.data.tags["estimator_name"] for r in _runs()) == ["KMeans", "PCA"]


def test_standalone_preprocessing_is_not_logged(clf_data: Any) -> None:
    X, _ = clf_data
    StandardScaler().fit_transform(X)
    assert _runs() == []


def test_dataset_digest_kinds() -> None:
    X = np.arange(12, dtype=float).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    digest = autolog_sklearn.dataset_digest(X, y)
    assert len(digest) == 16
    assert digest == autolog_sklearn.dataset_digest(X.copy(), y.copy())
    assert digest != autolog_sklearn.dataset_digest(X + 1, y)
    assert digest != autolog_sklearn.dataset_digest(X, 1 - y)
    assert digest != autolog_sklearn.dataset_digest(X.astype(np.float32), y)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    assert autolog_sklearn.dataset_digest(frame) != autolog_sklearn.dataset_digest(frame.rename(columns={"a": "z"}))
    assert autolog_sklearn.dataset_digest(sparse.csr_matrix(X)) == autolog_sklearn.dataset_digest(sparse.csc_matrix(X))
    assert autolog_sklearn.dataset_digest([["a", "b"], ["c", "d"]]) != autolog_sklearn.dataset_digest([["a", "b"]])
    with pytest.raises(TypeError):
        autolog_sklearn.dataset_digest(iter([1, 2, 3]))  # never consumes an iterator


# -- nesting ----------------------------------------------------------------------------------------------


def test_pipeline_logs_once_with_deep_params(clf_data: Any) -> None:
    X, y = clf_data
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=2.0)).fit(X, y)
    run = _only_run()
    assert run.data.tags["estimator_name"] == "Pipeline"
    assert run.data.params["logisticregression__C"] == "2.0"
    assert "standardscaler__with_mean" in run.data.params
    assert run.data.metrics["training_accuracy_score"] == pytest.approx(pipe.score(X, y))


def test_meta_estimator_logs_once(clf_data: Any) -> None:
    X, y = clf_data
    OneVsRestClassifier(LogisticRegression()).fit(X, y)
    assert _only_run().data.tags["estimator_name"] == "OneVsRestClassifier"


def test_pipeline_fit_predict_descriptor_keeps_availability(clf_data: Any) -> None:
    X, _ = clf_data
    assert not hasattr(make_pipeline(StandardScaler(), LogisticRegression()), "fit_predict")
    labels = make_pipeline(StandardScaler(), KMeans(n_clusters=2, n_init=2, random_state=0)).fit_predict(X)
    assert labels.shape == (150,)
    assert _only_run().data.tags["estimator_name"] == "Pipeline"


def test_many_params_and_odd_values_are_logged_safely(clf_data: Any) -> None:
    class Unprintable:
        def __call__(self, X: Any) -> Any:
            return X

        def __str__(self) -> str:
            raise RuntimeError("no text for you")

        __repr__ = __str__

    X, y = clf_data
    steps: list[tuple[str, Any]] = [(f"scale{i}", StandardScaler()) for i in range(30)]
    steps += [("odd", FunctionTransformer(Unprintable())), ("clf", LogisticRegression())]
    pipe = Pipeline(steps)
    with pytest.warns(AutologWarning, match="cloudpickle"):  # skops cannot store the custom callable
        pipe.fit(X, y)
    run = _only_run()
    assert len(pipe.get_params(deep=True)) > 100
    assert set(run.data.params) == set(pipe.get_params(deep=True))
    assert run.data.params["odd__func"] == "<unprintable Unprintable>"
    assert len(run.data.params["steps"]) <= validation.MAX_PARAM_VALUE_LENGTH
    assert "model" in _artifacts(run.info.run_id)


def test_loggable_params_truncates_and_sanitizes() -> None:
    params = autolog_sklearn.loggable_params({"long": "x" * 10_000, "bad key!": 1, "k" * 300: None, "ok": [1, 2]})
    assert len(params["long"]) == validation.MAX_PARAM_VALUE_LENGTH and params["long"].endswith("[truncated]")
    assert params["bad key_"] == "1"
    assert params["k" * validation.MAX_KEY_LENGTH] == "None"
    assert params["ok"] == "[1, 2]"


# -- parameter search -------------------------------------------------------------------------------------


def test_grid_search_parent_and_child_runs(clf_data: Any) -> None:
    cairn.sklearn.autolog(max_tuning_runs=2)
    X, y = clf_data
    search = GridSearchCV(LogisticRegression(max_iter=300), {"C": [0.01, 0.1, 1.0, 10.0]}, cv=3).fit(X, y)
    runs = _runs()
    parents = [r for r in runs if system_tags.PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if system_tags.PARENT_RUN_ID in r.data.tags]
    assert len(parents) == 1 and len(children) == 2  # the candidates' own fits log nothing
    parent = parents[0]
    assert parent.data.tags["estimator_name"] == "GridSearchCV"
    assert parent.data.params["best_C"] == str(search.best_params_["C"])
    assert parent.data.metrics["best_cv_score"] == pytest.approx(search.best_score_)
    assert "training_accuracy_score" in parent.data.metrics
    assert {"model", "best_estimator", "cv_results.csv"} <= _artifacts(parent.info.run_id)
    csv = cairn.Client().download_artifacts(parent.info.run_id, "cv_results.csv")
    assert len(pd.read_csv(csv)) == 4

    results = pd.DataFrame(search.cv_results_).sort_values("rank_test_score")
    best_two = {str(c) for c in results["param_C"].head(2)}
    assert {r.data.params["C"] for r in children} == best_two
    for child in children:
        assert child.data.tags[system_tags.PARENT_RUN_ID] == parent.info.run_id
        assert child.info.status.value == "FINISHED"
        assert child.data.params["max_iter"] == "300"  # base estimator params under the candidate's
        assert {"mean_test_score", "std_test_score", "rank_test_score", "split0_test_score"} <= set(child.data.metrics)
    best = cairn.sklearn.load_model(f"runs:/{parent.info.run_id}/best_estimator")
    np.testing.assert_array_equal(best.predict(X), search.best_estimator_.predict(X))


def test_randomized_search_all_candidates_inside_active_run(clf_data: Any) -> None:
    cairn.sklearn.autolog(max_tuning_runs=None, log_models=False)
    X, y = clf_data
    with cairn.start_run() as run:
        RandomizedSearchCV(
            RandomForestClassifier(n_estimators=3, random_state=0),
            {"max_depth": [2, 3, 4], "min_samples_leaf": [1, 2]},
            n_iter=3,
            cv=2,
            random_state=0,
        ).fit(X, y)
    children = [r for r in _runs() if r.data.tags.get(system_tags.PARENT_RUN_ID) == run.info.run_id]
    assert len(children) == 3
    assert "model" not in _artifacts(run.info.run_id)


# -- results are unchanged; failures are warnings -------------------------------------------------------


def _fit_and_predict(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    np.random.seed(123)
    forest = RandomForestClassifier(n_estimators=10).fit(X, y)  # random_state=None: uses numpy's global RNG
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression()), {"logisticregression__C": [0.1, 1.0]}, cv=3
    ).fit(X, y)
    after = np.random.random()  # the global RNG was advanced by training only
    return forest.predict_proba(X), search.predict_proba(X), after


def test_autolog_does_not_change_results(clf_data: Any) -> None:
    X, y = clf_data
    with_autolog = _fit_and_predict(X, y)
    assert len(_runs()) > 2  # it did log
    cairn.sklearn.autolog(disable=True)
    without = _fit_and_predict(X, y)
    np.testing.assert_array_equal(with_autolog[0], without[0])
    np.testing.assert_array_equal(with_autolog[1], without[1])
    assert with_autolog[2] == without[2]


def test_metric_failure_is_a_warning_and_fit_returns(clf_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("metric exploded")

    monkeypatch.setattr(sklearn.metrics, "accuracy_score", broken)
    X, y = clf_data
    estimator = LogisticRegression()
    with pytest.warns(AutologWarning) as record:
        returned = estimator.fit(X, y)
    messages = [str(w.message) for w in record]
    assert any("'training_accuracy_score' failed" in m and "metric exploded" in m for m in messages)
    assert all(w.filename == __file__ for w in record)  # attributed to the user's fit call
    assert returned is estimator
    assert hasattr(estimator, "coef_")
    run = _only_run()
    assert "training_accuracy_score" not in run.data.metrics
    assert "training_f1_score" in run.data.metrics  # the other metrics are still there
    assert "model" in _artifacts(run.info.run_id)


def test_failure_of_a_whole_step_is_a_warning(clf_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> dict[str, float]:
        raise ValueError("cannot compute anything")

    monkeypatch.setattr(autolog_sklearn, "training_metrics", broken)
    X, y = clf_data
    with pytest.warns(AutologWarning, match="logging training metrics failed.*cannot compute anything"):
        model = LogisticRegression().fit(X, y)
    run = _only_run()
    assert run.info.status.value == "FINISHED"
    assert run.data.metrics == {} and "C" in run.data.params
    cairn.sklearn.autolog(disable=True)
    np.testing.assert_array_equal(model.predict(X), LogisticRegression().fit(X, y).predict(X))


def test_tracking_failure_never_breaks_fit(clf_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cairn.tracking import fluent

    def no_store(*args: Any, **kwargs: Any) -> Any:
        raise OSError("store is down")

    monkeypatch.setattr(fluent, "start_run", no_store)
    X, y = clf_data
    with pytest.warns(AutologWarning, match="starting a run failed.*store is down"):
        model = LogisticRegression().fit(X, y)
    assert hasattr(model, "coef_")


def test_silent_reports_on_the_logger(
    clf_data: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cairn.sklearn.autolog(silent=True)
    monkeypatch.setattr(sklearn.metrics, "accuracy_score", lambda *a, **k: 1 / 0)
    X, y = clf_data
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutologWarning)
        with caplog.at_level(logging.WARNING, logger="cairn.autolog"):
            LogisticRegression().fit(X, y)
    assert any("ZeroDivisionError" in record.getMessage() for record in caplog.records)


def test_user_errors_propagate_and_fail_the_run() -> None:
    with pytest.raises(ValueError):
        LogisticRegression().fit(np.array([[np.nan, 1.0], [1.0, 2.0]]), np.array([0, 1]))
    run = _only_run()
    assert run.info.status.value == "FAILED"
    assert cairn.active_run() is None


# -- switching off --------------------------------------------------------------------------------------------


def test_disable_restores_the_original_methods(clf_data: Any) -> None:
    import inspect

    classes = (LogisticRegression, RandomForestClassifier, KMeans, PCA, Pipeline, GridSearchCV)
    names = ("fit", "fit_transform", "fit_predict")
    # Patched: own methods replaced, inherited ones shadowed; signatures still visible to sklearn.
    assert hasattr(vars(LogisticRegression)["fit"], "__cairn_autolog_original__")
    assert "fit" in vars(RandomForestClassifier)  # inherited from BaseForest, shadowed on the class
    assert list(inspect.signature(LogisticRegression().fit).parameters) == ["X", "y", "sample_weight"]
    cairn.sklearn.autolog(disable=True)
    assert not autolog_sklearn.is_enabled()
    before = {(c, n): vars(c).get(n) for c in classes for n in names}
    assert not any(hasattr(v, "__cairn_autolog_original__") for v in before.values())
    assert "fit" not in vars(RandomForestClassifier)  # the shadowing attribute is gone again
    cairn.sklearn.autolog()
    assert {(c, n): vars(c).get(n) for c in classes for n in names} != before
    cairn.sklearn.autolog(disable=True)
    assert {(c, n): vars(c).get(n) for c in classes for n in names} == before
    X, y = clf_data
    LogisticRegression().fit(X, y)
    assert _runs() == []


def test_autolog_twice_patches_once(clf_data: Any) -> None:
    cairn.sklearn.autolog(log_models=False)
    cairn.sklearn.autolog(log_models=False)
    X, y = clf_data
    LogisticRegression().fit(X, y)
    run = _only_run()
    assert "model" not in _artifacts(run.info.run_id)


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="max_tuning_runs"):
        cairn.sklearn.autolog(max_tuning_runs=-1)
    with pytest.raises(ValueError, match="serialization_format"):
        cairn.sklearn.autolog(serialization_format="pickle")


def test_autolog_imports_no_torch_and_patches_what_all_estimators_lists() -> None:
    """``sklearn.utils.all_estimators`` walks ``sklearn.externals.array_api_compat.torch``, which imports
    torch (seconds, and gigabytes of address space for a scikit-learn user); cairn lists the same classes
    without it. Checked in a fresh interpreter."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, warnings
        import cairn.sklearn
        cairn.sklearn.autolog()
        assert "torch" not in sys.modules, "torch was imported"
        from cairn.autolog.sklearn import _public_estimators
        mine = _public_estimators()
        from sklearn.utils import all_estimators
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            listed = {cls for _, cls in all_estimators()}
        assert mine == listed, sorted(c.__name__ for c in mine ^ listed)
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr
