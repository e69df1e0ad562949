"""scikit-learn autologging: ``cairn.sklearn.autolog()`` makes every ``fit`` log itself.

Patched: ``fit``, ``fit_transform`` and ``fit_predict`` of the estimators
:func:`sklearn.utils.all_estimators` lists, plus ``Pipeline``, ``GridSearchCV`` and
``RandomizedSearchCV``. As in MLflow, stand-alone data manipulation (``sklearn.preprocessing``,
``sklearn.impute``, ``sklearn.feature_extraction``, ``sklearn.feature_selection`` and
``ColumnTransformer``) is not patched: it is logged as part of the Pipeline that holds it.

One outermost call logs, into the active run or a run it starts and ends:

- params: ``get_params(deep=True)``, values as text cut to the param length limit;
  tags ``estimator_name`` and ``estimator_class``;
- training metrics, MLflow's names: ``training_accuracy_score``, ``training_precision_score``,
  ``training_recall_score``, ``training_f1_score`` (weighted), ``training_log_loss`` and
  ``training_roc_auc`` (when the estimator has ``predict_proba``) for classifiers;
  ``training_mean_squared_error``, ``training_root_mean_squared_error``,
  ``training_mean_absolute_error``, ``training_r2_score`` for regressors; ``training_score``;
- the dataset: tags ``cairn.dataset.digest`` (sha256 of the data, first 16 hex digits),
  ``cairn.dataset.shape`` and ``cairn.dataset.target_shape``;
- the fitted model (artifact ``model``) with a signature inferred from the first rows;
- for ``GridSearchCV``/``RandomizedSearchCV``: ``cv_results.csv``, ``best_<param>`` params,
  ``best_cv_score``, the best estimator (artifact ``best_estimator``) and one nested child run
  per best candidate (at most ``max_tuning_runs``), tagged ``mlflow.parentRunId``.

Fits nested inside a logged fit (Pipeline steps, a search's candidates, a meta-estimator's inner
estimators) are not logged again: a thread-local guard marks the outermost call. Autolog only reads
the data and the fitted estimator, so results are the same with and without it; any error in its
own code becomes an :class:`~cairn.autolog.config.AutologWarning` and ``fit`` returns normally.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.autolog.config import (
    AutologConfig,
    PatchSet,
    ReentryGuard,
    autolog_run,
    report_failure,
    safe_autolog,
)
from cairn.tracking import system_tags, validation
from cairn.tracking.entities import Metric, Param, RunTag

__all__ = [
    "SklearnAutologConfig",
    "autolog",
    "dataset_digest",
    "loggable_params",
    "training_metrics",
]

INTEGRATION = "sklearn"
PATCHED_METHODS = ("fit", "fit_transform", "fit_predict")
EXCLUDED_MODULES = (
    "sklearn.preprocessing",
    "sklearn.impute",
    "sklearn.feature_extraction",
    "sklearn.feature_selection",
)
EXCLUDED_CLASSES = ("sklearn.compose._column_transformer.ColumnTransformer",)
DIGEST_TAG = "cairn.dataset.digest"
SHAPE_TAG = "cairn.dataset.shape"
TARGET_SHAPE_TAG = "cairn.dataset.target_shape"
_BATCH = 100  # params per log_batch call
_EXAMPLE_ROWS = 5
_PREFIX = "training_"


@dataclass(frozen=True)
class SklearnAutologConfig(AutologConfig):
    """:class:`AutologConfig` plus the scikit-learn options.

    Attributes:
        max_tuning_runs: child runs for the best candidates of a parameter search; ``None`` for all.
        log_model_signatures: infer the logged model's signature from the training data.
        serialization_format: ``"skops"`` (default; falls back to ``"cloudpickle"`` with a warning
            for estimators skops cannot store) or ``"cloudpickle"``.
        registered_model_name: register every logged model under this name.
    """

    max_tuning_runs: int | None = 5
    log_model_signatures: bool = True
    serialization_format: str = "skops"
    registered_model_name: str | None = None


class _State:
    """This integration's switch and patches (one instance, owned by this module)."""

    def __init__(self) -> None:
        self.config: SklearnAutologConfig | None = None
        self.patches = PatchSet()
        self.guard = ReentryGuard()


_state = _State()


def autolog(
    log_models: bool = True,
    log_input_examples: bool = False,
    log_datasets: bool = True,
    max_tuning_runs: int | None = 5,
    disable: bool = False,
    silent: bool = False,
    *,
    log_model_signatures: bool = True,
    serialization_format: str = "skops",
    registered_model_name: str | None = None,
    extra_tags: Mapping[str, Any] | None = None,
) -> None:
    """Turn scikit-learn autologging on (again, with new options) or off (``disable=True``).

    Args:
        log_models: log each fitted estimator as the run's ``model`` artifact.
        log_input_examples: store the first rows of the training data with the model.
        log_datasets: tag the run with the training data's digest and shape.
        max_tuning_runs: child runs for the best candidates of a ``GridSearchCV`` or
            ``RandomizedSearchCV`` (``None``: every candidate; ``0``: none).
        disable: undo the patches; later fits log nothing.
        silent: report autolog failures on the ``cairn.autolog`` logger rather than as warnings.
        log_model_signatures: infer the model signature from the training data.
        serialization_format: ``"skops"`` or ``"cloudpickle"`` for logged models.
        registered_model_name: register each logged model under this name.
        extra_tags: tags added to every run autolog logs into.

    Raises:
        InvalidArgument: an option has an unusable value.
    """
    from cairn.errors import InvalidArgument

    if max_tuning_runs is not None and (isinstance(max_tuning_runs, bool) or max_tuning_runs < 0):
        raise InvalidArgument(f"max_tuning_runs must be None or an integer >= 0, got {max_tuning_runs!r}")
    if serialization_format not in ("skops", "cloudpickle"):
        raise InvalidArgument(f"serialization_format must be 'skops' or 'cloudpickle', got {serialization_format!r}")
    if disable:
        _state.patches.restore()
        _state.config = None
        return
    tags = {str(k): validation.tag_value(v, str(k)) for k, v in (extra_tags or {}).items()}
    _state.config = SklearnAutologConfig(
        log_models=log_models,
        log_input_examples=log_input_examples,
        log_datasets=log_datasets,
        silent=silent,
        extra_tags=tags,
        max_tuning_runs=max_tuning_runs,
        log_model_signatures=log_model_signatures,
        serialization_format=serialization_format,
        registered_model_name=registered_model_name,
    )
    if len(_state.patches) == 0:
        for cls in estimator_classes():
            for name in PATCHED_METHODS:
                _state.patches.patch(cls, name, _wrapper_factory(name))


def is_enabled() -> bool:
    """True while autologging is on."""
    return _state.config is not None


def estimator_classes() -> list[type]:
    """The classes autolog patches (see the module docstring), sorted by qualified name."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
    from sklearn.pipeline import Pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importing every public module: some are deprecated
        found = _public_estimators()
    found |= {GridSearchCV, RandomizedSearchCV, Pipeline}

    def included(cls: type) -> bool:
        qualified = f"{cls.__module__}.{cls.__name__}"
        return not cls.__module__.startswith(EXCLUDED_MODULES) and qualified not in EXCLUDED_CLASSES

    return sorted((c for c in found if included(c)), key=lambda c: f"{c.__module__}.{c.__qualname__}")


# Parts of module names sklearn.utils.all_estimators leaves out (its _MODULE_TO_IGNORE).
_IGNORED_MODULE_PARTS = frozenset({"tests", "externals", "setup", "conftest", "experimental", "estimator_checks"})


def _public_estimators() -> set[type]:
    """The concrete public estimator classes of sklearn's public modules: what ``all_estimators()`` finds,
    without its ``pkgutil.walk_packages``, which imports the packages it skips to look inside them
    (``sklearn.externals.array_api_compat.torch`` imports torch, seconds for a scikit-learn user)."""
    import importlib
    import pkgutil

    import sklearn
    from sklearn.base import BaseEstimator

    found: set[type] = set()
    packages = [(list(sklearn.__path__), "sklearn.")]
    while packages:
        path, prefix = packages.pop()
        for info in pkgutil.iter_modules(path, prefix):
            parts = info.name.split(".")
            if any(part in _IGNORED_MODULE_PARTS or part.startswith("_") for part in parts[1:]):
                continue  # never imported, nor looked into
            module = importlib.import_module(info.name)
            if info.ispkg:
                packages.append((list(module.__path__), info.name + "."))
            for name, cls in inspect.getmembers(module, inspect.isclass):
                if (
                    not name.startswith("_")
                    and name != "BaseEstimator"
                    and issubclass(cls, BaseEstimator)
                    and not getattr(cls, "__abstractmethods__", None)
                ):
                    found.add(cls)
    return found


def _wrapper_factory(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
            config = _state.config
            if config is None or _state.guard.active:
                return original(self, *args, **kwargs)
            with _state.guard.enter():
                return _logged_call(config, original, method, self, args, kwargs)

        return patched

    return wrap


# -- one logged fit ----------------------------------------------------------------------------------


@dataclass
class _FitInputs:
    X: Any
    y: Any
    sample_weight: Any


def _fit_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _FitInputs:
    """X, y and sample_weight of a ``fit(X, y=None, sample_weight=None, ...)`` call."""
    X = args[0] if args else kwargs.get("X")
    y = args[1] if len(args) > 1 else kwargs.get("y", kwargs.get("Y"))
    return _FitInputs(X, y, kwargs.get("sample_weight"))


def _logged_call(
    config: SklearnAutologConfig,
    original: Callable[..., Any],
    method: str,
    estimator: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    silent = config.silent
    inputs = _FitInputs(None, None, None)
    with safe_autolog(INTEGRATION, "reading the fit arguments", silent=silent):
        inputs = _fit_inputs(args, kwargs)
    with autolog_run(integration=INTEGRATION, silent=silent, tags=config.extra_tags) as run:
        if run is not None:
            with safe_autolog(INTEGRATION, "logging params", silent=silent):
                _log_params_and_tags(run.run_id, estimator, inputs, config)
        result = original(estimator, *args, **kwargs)  # the user's call: its errors propagate
        if run is not None:
            _log_after_fit(run.run_id, estimator, inputs, config)
        return result


def _client() -> Any:
    from cairn.tracking import fluent

    return fluent._get_client()


def _log_params_and_tags(run_id: str, estimator: Any, inputs: _FitInputs, config: SklearnAutologConfig) -> None:
    client = _client()
    cls = type(estimator)
    tags = {"estimator_name": cls.__name__, "estimator_class": f"{cls.__module__}.{cls.__qualname__}"}
    if config.log_datasets and inputs.X is not None:
        with safe_autolog(INTEGRATION, "computing the dataset digest", silent=config.silent):
            tags[DIGEST_TAG] = dataset_digest(inputs.X, inputs.y)
            tags[SHAPE_TAG] = _shape_text(inputs.X)
            if inputs.y is not None:
                tags[TARGET_SHAPE_TAG] = _shape_text(inputs.y)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    _log_param_dict(client, run_id, estimator.get_params(deep=True))


def _log_param_dict(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    items = list(loggable_params(params).items())
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + _BATCH]])


def _log_after_fit(run_id: str, estimator: Any, inputs: _FitInputs, config: SklearnAutologConfig) -> None:
    silent = config.silent
    with safe_autolog(INTEGRATION, "logging training metrics", silent=silent):
        if inputs.X is not None:
            metrics = training_metrics(estimator, inputs.X, inputs.y, inputs.sample_weight, silent=silent)
            _log_metric_dict(run_id, metrics)
    search = _is_parameter_search(estimator)
    if search:
        with safe_autolog(INTEGRATION, "logging the parameter search results", silent=silent):
            _log_search(run_id, estimator, config)
    if config.log_models:
        with safe_autolog(INTEGRATION, "logging the model", silent=silent):
            _log_fitted_model(run_id, estimator, "model", inputs.X, config)
        if search and hasattr(estimator, "best_estimator_"):
            with safe_autolog(INTEGRATION, "logging the best estimator", silent=silent):
                _log_fitted_model(run_id, estimator.best_estimator_, "best_estimator", inputs.X, config)


def _log_metric_dict(run_id: str, metrics: Mapping[str, float], client: Any = None) -> None:
    if not metrics:
        return
    now = time.time_ns() // 1_000_000
    (client or _client()).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


# -- params -------------------------------------------------------------------------------------------

_KEY_BAD_CHARS = re.compile(r"[^\w\-. /:]")


def _safe_key(key: Any) -> str:
    text = _KEY_BAD_CHARS.sub("_", str(key)).lstrip("/")
    text = "/".join(part if part not in ("", ".", "..") else "_" for part in text.split("/"))
    return (text or "_")[: validation.MAX_KEY_LENGTH]


def _safe_text(value: Any, limit: int) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        try:
            text = repr(value)
        except Exception:
            text = f"<unprintable {type(value).__name__}>"
    if len(text) > limit:
        marker = "...[truncated]"
        text = text[: limit - len(marker)] + marker
    return text


def loggable_params(params: Mapping[str, Any]) -> dict[str, str]:
    """``params`` as valid param keys and text values no longer than the param value limit.

    Never raises on odd values: a value whose ``str`` fails is logged as its ``repr`` or its type name.
    """
    return {_safe_key(k): _safe_text(v, validation.MAX_PARAM_VALUE_LENGTH) for k, v in params.items()}


# -- dataset ------------------------------------------------------------------------------------------


def _shape_text(data: Any) -> str:
    shape = getattr(data, "shape", None)
    if shape is None and isinstance(data, list | tuple):
        shape = (len(data),)
    return str(tuple(int(d) for d in shape)) if shape is not None else "unknown"


def _feed(digest: Any, data: Any) -> None:
    """Add ``data``'s content (with its shape and dtype) to ``digest``, without consuming iterators."""
    import numpy as np

    module = type(data).__module__.split(".", 1)[0]
    if module == "pandas":
        import pandas as pd

        if isinstance(data, pd.DataFrame | pd.Series):
            frame = data.to_frame() if isinstance(data, pd.Series) else data
            digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
            return
    if module == "scipy" and hasattr(data, "tocsr"):
        matrix = data.tocsr()
        digest.update(f"sparse{matrix.shape}{matrix.dtype}".encode())
        for part in (matrix.data, matrix.indices, matrix.indptr):
            digest.update(np.ascontiguousarray(part).tobytes())
        return
    if isinstance(data, np.ndarray | list | tuple):
        array = np.asarray(data)
        digest.update(f"array{array.shape}{array.dtype}".encode())
        if array.dtype.kind == "O":
            import pandas as pd

            digest.update(pd.util.hash_array(array.ravel().astype(str)).tobytes())
        else:
            digest.update(np.ascontiguousarray(array).tobytes())
        return
    raise TypeError(f"no digest for training data of type {type(data).__name__}")


def dataset_digest(X: Any, y: Any = None) -> str:
    """First 16 hex digits of a sha256 over the training data (values, shape, dtypes; and y).

    Supports numpy arrays, lists, pandas DataFrames and Series, and scipy sparse matrices.

    Raises:
        TypeError: the data is of another kind (an iterator, for instance, which is never read).
    """
    digest = hashlib.sha256()
    _feed(digest, X)
    if y is not None:
        digest.update(b"|y|")
        _feed(digest, y)
    return digest.hexdigest()[:16]


# -- metrics ------------------------------------------------------------------------------------------


def _target_type(y: Any) -> str:
    from sklearn.utils.multiclass import type_of_target

    return str(type_of_target(y))


def training_metrics(
    estimator: Any, X: Any, y: Any, sample_weight: Any = None, *, silent: bool = False
) -> dict[str, float]:
    """The training metrics of a fitted estimator on its training data (names as in MLflow).

    A metric that is not defined for this estimator or target (``roc_auc`` with one class,
    ``log_loss`` without ``predict_proba``, classification scores for multi-output targets) is left
    out; a metric whose computation fails is reported as a warning and left out. Precision, recall
    and F1 are weighted averages; multiclass ``roc_auc`` is one-vs-rest, weighted (it accepts
    ``sample_weight``, which MLflow's one-vs-one does not).
    """
    from sklearn.base import is_classifier, is_regressor

    results: dict[str, float] = {}

    def compute(name: str, fn: Callable[[], Any]) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = float(fn())
        except Exception as exc:
            report_failure(INTEGRATION, f"computing metric {name!r}", exc, silent=silent)
            return
        results[name] = value

    weights = {"sample_weight": sample_weight} if sample_weight is not None else {}
    if y is not None and is_classifier(estimator) and hasattr(estimator, "predict"):
        _classifier_metrics(estimator, X, y, weights, compute)
    elif y is not None and is_regressor(estimator) and hasattr(estimator, "predict"):
        _regressor_metrics(estimator, X, y, weights, compute)
    if hasattr(estimator, "score"):
        score_weights = weights if weights and _accepts(estimator.score, "sample_weight") else {}
        compute(_PREFIX + "score", lambda: estimator.score(X, y, **score_weights))
    return results


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _classifier_metrics(
    estimator: Any, X: Any, y: Any, weights: dict[str, Any], compute: Callable[[str, Callable[[], Any]], None]
) -> None:
    import numpy as np
    from sklearn import metrics

    kind = _target_type(y)
    if kind not in ("binary", "multiclass", "multilabel-indicator"):
        return
    y_pred = estimator.predict(X)
    compute(_PREFIX + "accuracy_score", lambda: metrics.accuracy_score(y, y_pred, **weights))
    scores: dict[str, Callable[..., Any]] = {
        "precision_score": metrics.precision_score,
        "recall_score": metrics.recall_score,
        "f1_score": metrics.f1_score,
    }
    for name, score in scores.items():
        compute(_PREFIX + name, functools.partial(score, y, y_pred, average="weighted", zero_division=0, **weights))
    if kind == "multilabel-indicator" or not hasattr(estimator, "predict_proba"):
        return
    proba = np.asarray(estimator.predict_proba(X))
    classes = getattr(estimator, "classes_", None)
    if proba.ndim != 2 or classes is None or len(classes) != proba.shape[1]:
        return
    compute(_PREFIX + "log_loss", lambda: metrics.log_loss(y, proba, labels=classes, **weights))
    present = np.unique(np.asarray(y))
    if len(present) < 2 or len(present) != len(classes):
        return  # roc_auc needs every class present in y
    if len(classes) == 2:
        compute(_PREFIX + "roc_auc", lambda: metrics.roc_auc_score(y, proba[:, 1], **weights))
    else:
        compute(
            _PREFIX + "roc_auc",
            lambda: metrics.roc_auc_score(y, proba, multi_class="ovr", average="weighted", labels=classes, **weights),
        )


def _regressor_metrics(
    estimator: Any, X: Any, y: Any, weights: dict[str, Any], compute: Callable[[str, Callable[[], Any]], None]
) -> None:
    from sklearn import metrics

    y_pred = estimator.predict(X)
    mse: dict[str, float] = {}

    def mean_squared_error() -> float:
        mse["value"] = float(metrics.mean_squared_error(y, y_pred, **weights))
        return mse["value"]

    compute(_PREFIX + "mean_squared_error", mean_squared_error)
    if "value" in mse:
        compute(_PREFIX + "root_mean_squared_error", lambda: math.sqrt(mse["value"]))
    compute(_PREFIX + "mean_absolute_error", lambda: metrics.mean_absolute_error(y, y_pred, **weights))
    compute(_PREFIX + "r2_score", lambda: metrics.r2_score(y, y_pred, **weights))


# -- model --------------------------------------------------------------------------------------------


def _head(X: Any, rows: int) -> Any:
    """The first rows of the training data as an input example, or None for kinds that have none."""
    import numpy as np

    module = type(X).__module__.split(".", 1)[0]
    if module == "pandas" and hasattr(X, "iloc"):
        return X.iloc[:rows]
    if isinstance(X, np.ndarray) and X.ndim >= 1:
        return X[:rows]
    if isinstance(X, list | tuple) and X:
        first = X[:rows]
        return np.asarray(first) if isinstance(first[0], list | tuple) else list(first)
    return None


def _log_fitted_model(run_id: str, estimator: Any, name: str, X: Any, config: SklearnAutologConfig) -> None:
    from cairn.flavors import sklearn as flavor

    example = _head(X, _EXAMPLE_ROWS) if X is not None else None
    signature = None
    if config.log_model_signatures and example is not None:
        with safe_autolog(INTEGRATION, f"inferring the signature of {name!r}", silent=config.silent):
            signature = _infer_signature(estimator, example)
    kwargs: dict[str, Any] = {
        "signature": signature,
        "input_example": example if config.log_input_examples else None,
        "registered_model_name": config.registered_model_name,
        "run_id": run_id,
    }
    try:
        flavor.log_model(estimator, name, serialization_format=config.serialization_format, **kwargs)
    except flavor.SkopsUnsupported as exc:
        message = (
            f"skops cannot store {type(estimator).__name__} ({exc.reason}); it was logged with "
            "serialization_format='cloudpickle', so loading it needs allow_pickle=True or CAIRN_ALLOW_PICKLE=1"
        )
        if config.silent:
            from cairn.autolog.config import logger

            logger.warning(message)
        else:
            from cairn.autolog.config import AutologWarning

            warnings.warn(message, AutologWarning, stacklevel=2)
        flavor.log_model(estimator, name, serialization_format="cloudpickle", **kwargs)


def _infer_signature(estimator: Any, example: Any) -> Any:
    from cairn.models.signature import infer_signature

    output = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("predict", "transform"):
            if hasattr(estimator, method):
                output = getattr(estimator, method)(example)
                break
    if output is not None and hasattr(output, "toarray"):  # sparse transform output has no schema
        output = None
    return infer_signature(example, output)


# -- parameter search ---------------------------------------------------------------------------------


def _is_parameter_search(estimator: Any) -> bool:
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    return isinstance(estimator, GridSearchCV | RandomizedSearchCV) and hasattr(estimator, "cv_results_")


def _rank_column(search: Any, columns: Iterable[str]) -> str | None:
    names = list(columns)
    if isinstance(search.refit, str) and f"rank_test_{search.refit}" in names:
        return f"rank_test_{search.refit}"
    if "rank_test_score" in names:
        return "rank_test_score"
    return next((c for c in names if c.startswith("rank_test_")), None)


def _log_search(run_id: str, search: Any, config: SklearnAutologConfig) -> None:
    import pandas as pd

    client = _client()
    results = pd.DataFrame(search.cv_results_)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cv_results.csv"
        results.to_csv(path, index=False)
        client.log_artifact(run_id, str(path))
    if hasattr(search, "best_params_"):
        _log_param_dict(client, run_id, {f"best_{k}": v for k, v in search.best_params_.items()})
    best_score: Any = getattr(search, "best_score_", None)
    if best_score is not None:
        _log_metric_dict(run_id, {"best_cv_score": float(best_score)}, client)
    limit = config.max_tuning_runs
    rank = _rank_column(search, results.columns)
    if rank is None or limit == 0:
        return
    ordered = results.sort_values(rank, kind="stable")
    chosen = ordered if limit is None else ordered.head(limit)
    experiment_id = client.get_run(run_id).info.experiment_id
    base_params = search.estimator.get_params(deep=True)
    for index in chosen.index:
        _log_candidate(client, experiment_id, run_id, results, int(index), base_params, config)


def _log_candidate(
    client: Any,
    experiment_id: str,
    parent_run_id: str,
    results: Any,
    index: int,
    base_params: Mapping[str, Any],
    config: SklearnAutologConfig,
) -> None:
    import numpy as np

    row = results.loc[index]
    tags = {system_tags.PARENT_RUN_ID: parent_run_id, **config.extra_tags}
    child = client.create_run(experiment_id, tags=tags)
    child_id = child.info.run_id
    status = "FAILED"
    try:
        _log_param_dict(client, child_id, {**base_params, **row["params"]})
        metrics = {}
        for column, value in row.items():
            if column == "params" or str(column).startswith("param_"):
                continue
            if isinstance(value, int | float | np.number) and not isinstance(value, bool):
                metrics[_safe_key(column)] = float(value)
        _log_metric_dict(child_id, metrics, client)
        status = "FINISHED"
    finally:
        client.set_terminated(child_id, status)
