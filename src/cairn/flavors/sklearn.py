"""The scikit-learn flavor: save, log and load estimators, safely by default.

Serialization formats:

- ``"skops"`` (default): ``model.skops``, written with :func:`skops.io.dump` and read with
  :func:`skops.io.load`, which rebuilds the object without unpickling. Beyond skops' own safe
  defaults, cairn trusts scikit-learn's classes, numpy's and scipy's scalar, array, random-state and
  sparse types, numpy's ufuncs, a few named numpy functions and scikit-learn's metric functions,
  decided by name from modules already imported (computing trust imports nothing the file names);
  a file naming anything else is refused with :class:`~cairn.errors.UnsafeModel`, unless the
  caller trusts those names with ``trusted_types``.
- ``"cloudpickle"``: ``model.pkl``, for estimators skops cannot store (custom classes, lambdas).
  Loading it unpickles, so it needs ``allow_pickle=True`` or ``CAIRN_ALLOW_PICKLE=1``.

The directory has MLflow's layout (``sklearn`` flavor with ``pickled_model``,
``serialization_format``, ``sklearn_version``, ``code``; ``python_function`` with ``model_path``),
so ``mlflow.pyfunc.load_model`` loads it (calling this module's ``_load_pyfunc``) and this module
loads models ``mlflow.sklearn`` wrote (``model.skops``, or ``model.pkl`` with the pickle opt-in).

Pyfunc ``predict(data, params={"method": "predict_proba"})`` calls another prediction method; the
``method`` param is declared in every signature cairn writes, so signature enforcement accepts it.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, Unpack

from cairn.errors import InvalidArgument, UnsafeModel
from cairn.models.flavor import AlsoOnnxOptions, CommonLogOptions, log_flavor_model
from cairn.models.model import Model, ModelInfo
from cairn.models.schema import ModelSignature, ParamSchema, ParamSpec

__all__ = [
    "FLAVOR_NAME",
    "PYFUNC_METHODS",
    "SERIALIZATION_FORMAT_CLOUDPICKLE",
    "SERIALIZATION_FORMAT_PICKLE",
    "SERIALIZATION_FORMAT_SKOPS",
    "TRUSTED_PACKAGES",
    "SklearnLogOptions",
    "SklearnOptions",
    "SkopsUnsupported",
    "load_model",
    "log_model",
    "save_model",
]

FLAVOR_NAME = "sklearn"
LOADER_MODULE = "cairn.flavors.sklearn"
SERIALIZATION_FORMAT_SKOPS = "skops"
SERIALIZATION_FORMAT_CLOUDPICKLE = "cloudpickle"
SERIALIZATION_FORMAT_PICKLE = "pickle"  # MLflow writes it; cairn loads it (with the opt-in) but never writes it
_SAVE_FORMATS = (SERIALIZATION_FORMAT_SKOPS, SERIALIZATION_FORMAT_CLOUDPICKLE)
_LOAD_FORMATS = (*_SAVE_FORMATS, SERIALIZATION_FORMAT_PICKLE)
SKOPS_FILE = "model.skops"
PICKLE_FILE = "model.pkl"
#: Top-level packages whose types a skops file may name and still load without an explicit trust list.
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")
#: Methods pyfunc ``predict`` can call through ``params={"method": ...}``.
PYFUNC_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform", "score_samples")
METHOD_PARAM = "method"
_DEFAULT_METHOD_KEY = "pyfunc_predict_fn"  # cairn's key in the sklearn flavor entry; MLflow ignores it


class SkopsUnsupported(InvalidArgument):
    """skops cannot store this estimator safely; ``serialization_format="cloudpickle"`` can.

    Attributes:
        reason: what skops could not handle (an exception text, or the types outside the trusted packages).
    """

    def __init__(self, estimator: Any, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"cannot save {type(estimator).__name__} with skops, the safe default format: {reason}. "
            "Save it with serialization_format='cloudpickle' instead; loading it will then require "
            "allow_pickle=True (or CAIRN_ALLOW_PICKLE=1), because unpickling can run arbitrary code."
        )


# -- skops --------------------------------------------------------------------------------------------


def _top_package(name: str) -> str:
    return name.split(".", 1)[0]


#: numpy functions (besides numpy's ufuncs) a skops file may name, e.g. as a ``FunctionTransformer`` func.
TRUSTED_NUMPY_FUNCTIONS = frozenset(
    {
        "numpy.abs",
        "numpy.around",
        "numpy.clip",
        "numpy.nan_to_num",
        "numpy.ravel",
        "numpy.round",
        "numpy.squeeze",
    }
)
#: Packages whose plain functions a skops file may name (scoring functions in a search's scorer).
_TRUSTED_FUNCTION_PACKAGES = ("sklearn.metrics",)
_MISSING = object()


def _already_imported(name: str) -> Any:
    """The object ``module.attribute`` names, looked up in modules already imported, else ``_MISSING``.

    Nothing is imported and no module ``__getattr__`` runs: only the module's own namespace is read.
    The split is skops' own (the last dot separates the module from the class or function name).
    """
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None or not attribute:
        return _MISSING
    return vars(module).get(attribute, _MISSING)


def _numpy_array_types() -> tuple[type, ...]:
    import numpy as np

    return (np.generic, np.dtype, np.random.BitGenerator)


def _numpy_exact_types() -> tuple[type, ...]:
    import numpy as np

    return (np.ndarray, np.ma.MaskedArray, np.random.Generator, np.random.RandomState, np.random.SeedSequence)


def _scipy_array_types() -> tuple[type, ...]:
    """scipy's sparse matrix and array types, and frozen distributions (a search's ``param_distributions``)."""
    import scipy.sparse
    import scipy.stats

    sparse = tuple(t for t in (getattr(scipy.sparse, "spmatrix", None), getattr(scipy.sparse, "sparray", None)) if t)
    distributions = (scipy.stats.rv_continuous, scipy.stats.rv_discrete)
    frozen = getattr(scipy.stats.distributions, "rv_frozen", None)
    return sparse + distributions + ((frozen,) if isinstance(frozen, type) else ())


def _is_trusted_class(cls: type) -> bool:
    """scikit-learn's classes, and numpy's and scipy's scalar, dtype, array, random-state and sparse types.

    Not every numpy/scipy class: skops may call a class with arguments from the file, and some open
    files (``numpy.memmap``, ``scipy.io.FortranFile``).
    """
    package = _top_package(getattr(cls, "__module__", None) or "")
    if package == "sklearn":
        return True
    if package == "numpy":
        return cls in _numpy_exact_types() or issubclass(cls, _numpy_array_types())
    if package == "scipy":
        return issubclass(cls, _scipy_array_types())
    return False


def _is_trusted_function(name: str, obj: Any) -> bool:
    """numpy's and scipy's ufuncs, :data:`TRUSTED_NUMPY_FUNCTIONS`, and scikit-learn's metric functions.

    Functions from trusted packages are not all harmless (``numpy.testing.runstring`` execs its
    argument), so functions have their own allow-list, by name.
    """
    import numpy as np

    if isinstance(obj, np.ufunc):
        return True
    if name in TRUSTED_NUMPY_FUNCTIONS:
        return True
    defined_in = getattr(obj, "__module__", None)
    return (
        inspect.isfunction(obj)
        and isinstance(defined_in, str)
        and any(defined_in.startswith(f"{package}.") for package in _TRUSTED_FUNCTION_PACKAGES)
        and any(name.startswith(f"{package}.") for package in _TRUSTED_FUNCTION_PACKAGES)
    )


def is_trusted_type(name: str) -> bool:
    """Whether cairn trusts the class or function a skops file names, without importing anything.

    The name must refer to an object in a module already imported (skops and scikit-learn import
    the modules real models need), in :data:`TRUSTED_PACKAGES`, and that object must be a trusted
    class (:func:`_is_trusted_class`) or function (:func:`_is_trusted_function`). So a name such as
    ``sklearn.some_module.os`` (a module imported there), a foreign function re-exported by a trusted
    module, or any module not yet imported (``numpy.f2py.__main__``) is not trusted.
    """
    if not isinstance(name, str) or _top_package(name) not in TRUSTED_PACKAGES:
        return False
    obj = _already_imported(name)
    if obj is _MISSING:
        return False
    if inspect.isclass(obj):
        return _is_trusted_class(obj)
    return _is_trusted_function(name, obj)


def _untrusted_types(path: Path) -> list[str]:
    """The names in the skops file at ``path`` outside skops' own safe defaults (skops builds its node
    tree for this without importing or constructing anything)."""
    import skops.io

    try:
        return sorted(skops.io.get_untrusted_types(file=path))
    except (KeyError, TypeError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{path.name} is not a valid skops file: {type(exc).__name__}: {exc}") from exc


def _refused(untrusted: Sequence[str], trusted_types: Sequence[str]) -> list[str]:
    extra = set(trusted_types)
    return [name for name in untrusted if name not in extra and not is_trusted_type(name)]


def load_skops(path: str | os.PathLike[str], *, trusted_types: Sequence[str] = ()) -> Any:
    """Load a ``.skops`` file, trusting only what :func:`is_trusted_type` accepts plus ``trusted_types``.

    The trust list is computed here from the names skops reports and cairn's allow-lists, importing
    nothing the file names; a list recorded in the model's MLmodel file (MLflow's
    ``skops_trusted_types``) is never used, because whoever wrote the file wrote that list too. skops
    still refuses anything outside that list and its own safe defaults (builtin containers and
    scalars, scikit-learn's estimators, numpy's dtypes and ufuncs).

    Raises:
        UnsafeModel: the file names types or functions cairn does not trust; the message lists them.
        InvalidArgument: the file is not a valid skops file.
    """
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    target = Path(path)
    untrusted = _untrusted_types(target)
    refused = _refused(untrusted, trusted_types)
    if not refused:
        try:
            return skops.io.load(target, trusted=untrusted)
        except UntrustedTypesFoundException as exc:  # skops found more than it reported: refuse, saying what
            refused = [str(exc)]
    raise UnsafeModel(
        f"the scikit-learn model {target.name} names types or functions cairn does not load by default "
        f"(it trusts scikit-learn's classes, numpy's and scipy's array types and a few numpy functions): "
        f"{', '.join(refused)}. If you trust this model, load it with "
        f"cairn.sklearn.load_model(uri, trusted_types={refused!r})."
    )


def _dump_skops(estimator: Any, path: Path) -> list[str]:
    """Write ``estimator`` to ``path`` with skops; returns the types skops needs trusted to load it.

    Raises:
        SkopsUnsupported: skops failed, or the file would name types or functions cairn does not trust
            (:func:`load_skops` would refuse it).
    """
    import skops.io

    try:
        skops.io.dump(estimator, path)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise SkopsUnsupported(estimator, f"{type(exc).__name__}: {exc}") from exc
    untrusted = _untrusted_types(path)
    refused = _refused(untrusted, ())
    if refused:
        path.unlink(missing_ok=True)
        raise SkopsUnsupported(
            estimator,
            f"it contains types or functions cairn does not load from a skops file by default ({', '.join(refused)})",
        )
    return untrusted


def _dump_cloudpickle(estimator: Any, path: Path) -> None:
    import cloudpickle

    with open(path, "wb") as out:
        # The default protocol, as MLflow does, so older Pythons can read the file.
        cloudpickle.dump(estimator, out, protocol=pickle.DEFAULT_PROTOCOL)


# -- signature ----------------------------------------------------------------------------------------


def _default_method(estimator: Any, requested: str | None) -> str:
    if requested is not None:
        if requested not in PYFUNC_METHODS:
            raise InvalidArgument(f"pyfunc_predict_fn must be one of {list(PYFUNC_METHODS)}, got {requested!r}")
        if not hasattr(estimator, requested):
            raise InvalidArgument(f"{type(estimator).__name__} has no {requested}() method")
        return requested
    for method in ("predict", "transform"):
        if hasattr(estimator, method):
            return method
    return "predict"


def _with_method_param(signature: ModelSignature | None, default: str) -> ModelSignature:
    """``signature`` with a ``method`` string param (default ``default``), or a params-only signature."""
    spec = ParamSpec(METHOD_PARAM, "string", default)
    if signature is None:
        return ModelSignature(params=ParamSchema([spec]))
    params = list(signature.params.params) if signature.params is not None else []
    if any(p.name == METHOD_PARAM for p in params):
        return signature
    return ModelSignature(signature.inputs, signature.outputs, ParamSchema([*params, spec]))


def _infer_signature(estimator: Any, input_example: Any, method: str) -> ModelSignature | None:
    from cairn.models.packaging import infer_signature_from_example

    predict = getattr(estimator, method, None)
    return infer_signature_from_example(input_example, predict)


# -- save / log ---------------------------------------------------------------------------------------


def save_model(
    sk_model: Any,
    path: str | os.PathLike[str],
    *,
    serialization_format: str = SERIALIZATION_FORMAT_SKOPS,
    signature: ModelSignature | Literal[False] | None = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    pyfunc_predict_fn: str | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    also_onnx: bool = False,
    onnx_rtol: float = 1e-3,
    onnx_atol: float = 1e-5,
) -> Model:
    """Save a scikit-learn estimator as a model directory at ``path``.

    Args:
        sk_model: the (fitted) estimator, pipeline or meta-estimator.
        path: the new model directory; must not exist or be empty.
        serialization_format: ``"skops"`` (safe, default) or ``"cloudpickle"``.
        signature: the model signature; ``None`` infers it from ``input_example`` by running one
            prediction; ``False`` records none (the pyfunc ``method`` param is then unavailable).
            A ``method`` param is added to whatever signature is recorded.
        input_example: a few rows of input, stored with the model.
        metadata: free-form metadata for the MLmodel file.
        pip_requirements: the packages the model needs, replacing the defaults
            (``scikit-learn`` and ``skops`` or ``cloudpickle``).
        extra_pip_requirements: packages added to the defaults.
        code_paths: local files or directories stored with the model and importable at load time;
            loading then needs ``allow_pickle=True`` (it puts the model's code on ``sys.path``).
        pyfunc_predict_fn: the method pyfunc ``predict`` calls by default (``"predict"``, or
            ``"transform"`` for a model without ``predict``).
        run_id: recorded in the MLmodel file (set by :func:`log_model`).
        artifact_path: recorded in the MLmodel file (set by :func:`log_model`).
        also_onnx: also convert to ONNX (skl2onnx) into the same model directory, as an ``onnx``
            flavor; needs ``input_example``. The conversion runs both models on the example and fails
            (saving nothing) when they differ beyond ``onnx_rtol``/``onnx_atol``.

    Returns:
        The :class:`~cairn.models.Model` written.

    Raises:
        SkopsUnsupported: skops cannot store the estimator (the message suggests ``"cloudpickle"``).
        InvalidArgument: an unknown serialization format or predict function.
        ResourceAlreadyExists: ``path`` exists and is not empty.
    """
    import sklearn

    from cairn.models.packaging import save_model_dir

    if serialization_format not in _SAVE_FORMATS:
        raise InvalidArgument(
            f"serialization_format must be one of {list(_SAVE_FORMATS)}, got {serialization_format!r}"
        )
    method = _default_method(sk_model, pyfunc_predict_fn)
    if signature is None and input_example is not None:
        signature = _infer_signature(sk_model, input_example, method)
    if signature is not False:
        signature = _with_method_param(signature, method)
    packages = list(pip_requirements) if pip_requirements is not None else ["scikit-learn", serialization_format]
    packages += list(extra_pip_requirements or ())

    with tempfile.TemporaryDirectory(prefix="cairn-sklearn-") as tmp:
        file_name = SKOPS_FILE if serialization_format == SERIALIZATION_FORMAT_SKOPS else PICKLE_FILE
        staged = Path(tmp) / file_name
        trusted_types: list[str] | None = None
        if serialization_format == SERIALIZATION_FORMAT_SKOPS:
            trusted_types = _dump_skops(sk_model, staged)
        else:
            _dump_cloudpickle(sk_model, staged)

        def write_data(directory: Path) -> None:
            shutil.move(staged, directory / file_name)

        flavor_conf: dict[str, Any] = {
            "pickled_model": file_name,
            "sklearn_version": sklearn.__version__,
            "serialization_format": serialization_format,
            "code": None,
            _DEFAULT_METHOD_KEY: method,
        }
        if trusted_types is not None:
            # For MLflow's own loader, which reads this list; cairn recomputes it from the file.
            flavor_conf["skops_trusted_types"] = trusted_types
        model = save_model_dir(
            path,
            flavor_name=FLAVOR_NAME,
            flavor_conf=flavor_conf,
            loader_module=LOADER_MODULE,
            write_data=write_data,
            predict_fn=getattr(sk_model, method, None),
            signature=signature,
            input_example=input_example,
            metadata=metadata,
            pip_packages=packages,
            code_paths=code_paths,
            pyfunc_conf={"model_path": file_name, "predict_fn": "predict"},
            run_id=run_id,
            artifact_path=artifact_path,
        )
    if also_onnx:
        from cairn.flavors.onnx import add_onnx_flavor

        add_onnx_flavor(Path(path), model, sk_model, input_example, rtol=onnx_rtol, atol=onnx_atol)
    return model


class SklearnOptions(AlsoOnnxOptions, total=False):
    """The scikit-learn flavor's own options of :func:`save_model` and :func:`log_model`."""

    serialization_format: str
    pyfunc_predict_fn: str | None


class SklearnLogOptions(SklearnOptions, CommonLogOptions, total=False):
    """Every option of :func:`log_model`."""


def log_model(sk_model: Any, name: str | None = None, **options: Unpack[SklearnLogOptions]) -> ModelInfo:
    """Save ``sk_model`` (see :func:`save_model`) into a run's artifacts at ``name`` (default ``"model"``).

    Args:
        sk_model: the estimator.
        name: the model's artifact path in the run.
        **options: :func:`save_model`'s options, and ``artifact_path`` (MLflow 2's name for ``name``),
            ``registered_model_name`` (also register the model under this name), ``run_id`` (log into
            this run instead of the active one; a run is started if none is active), ``client`` (log into
            and register in this client's store, with ``run_id``).

    Returns:
        The :class:`~cairn.models.ModelInfo` (``model_uri`` is ``runs:/<run_id>/<name>``).
    """
    return log_flavor_model(partial(save_model, sk_model), name, options, accepted=SklearnLogOptions.__optional_keys__)


# -- load ---------------------------------------------------------------------------------------------


def _load_estimator(
    model_dir: Path, meta: Model, *, allow_pickle: bool | None, trusted_types: Sequence[str] = ()
) -> Any:
    from cairn import safety
    from cairn.models.loading import add_code_to_path, model_subpath

    conf = meta.flavors.get(FLAVOR_NAME) or {}
    pyfunc_conf = meta.flavors.get("python_function") or {}
    # modules a pickle may import; only with the opt-in, since they are code (UnsafeModel without it)
    add_code_to_path(model_dir, conf.get("code") or pyfunc_conf.get("code"), allow_pickle)
    fmt = conf.get("serialization_format") or SERIALIZATION_FORMAT_PICKLE  # MLflow's default before skops
    if fmt not in _LOAD_FORMATS:
        raise InvalidArgument(
            f"the scikit-learn model at {model_dir} uses serialization format {fmt!r}; "
            f"cairn reads {list(_LOAD_FORMATS)}"
        )
    default_file = SKOPS_FILE if fmt == SERIALIZATION_FORMAT_SKOPS else PICKLE_FILE
    rel = conf.get("pickled_model") or pyfunc_conf.get("model_path") or default_file
    path = model_subpath(model_dir, rel, "scikit-learn model file")
    if fmt == SERIALIZATION_FORMAT_SKOPS:
        return load_skops(path, trusted_types=trusted_types)
    return safety.load_cloudpickle(path, allow_pickle, what=f"the scikit-learn model {rel} ({fmt} format)")


def load_model(
    model_uri: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    trusted_types: Sequence[str] = (),
    dst_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a scikit-learn model (cairn's or MLflow's) as the estimator itself.

    Args:
        model_uri: a local path, ``runs:/``, ``models:/`` or artifact-store URI.
        allow_pickle: allow unpickling a ``cloudpickle``/``pickle`` model (or set ``CAIRN_ALLOW_PICKLE=1``).
        trusted_types: type names a skops file may use beyond scikit-learn, numpy and scipy.
        dst_path: where to download a remote model.

    Raises:
        UnsafeModel: the model needs unpickling without the opt-in (the message says how to opt
            in), or a skops file names untrusted types (the message lists them).
        ModelIntegrityError: a model file does not match its recorded sha256.
    """
    from cairn.models.loading import open_model_dir

    local = open_model_dir(model_uri, dst=dst_path)
    return _load_estimator(local.path, local.model, allow_pickle=allow_pickle, trusted_types=trusted_types)


class SklearnPyfunc:
    """The pyfunc implementation: ``predict(data, params={"method": ...})`` on an estimator."""

    def __init__(self, sklearn_model: Any, default_method: str = "predict") -> None:
        self.sklearn_model = sklearn_model
        self.default_method = default_method

    def get_raw_model(self) -> Any:
        """The estimator."""
        return self.sklearn_model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Call the estimator's ``params["method"]`` (default: its ``predict``) on ``data``.

        Raises:
            InvalidArgument: the method is not one of :data:`PYFUNC_METHODS` or the estimator lacks it.
        """
        method = (params or {}).get(METHOD_PARAM) or self.default_method
        if method not in PYFUNC_METHODS:
            raise InvalidArgument(f"params['method'] must be one of {list(PYFUNC_METHODS)}, got {method!r}")
        function = getattr(self.sklearn_model, method, None)
        if function is None:
            available = [m for m in PYFUNC_METHODS if hasattr(self.sklearn_model, m)]
            raise InvalidArgument(
                f"{type(self.sklearn_model).__name__} has no {method}(); this model supports {available}"
            )
        return function(data)


def _load_pyfunc(data_path: str | os.PathLike[str], model_config: dict[str, Any] | None = None) -> SklearnPyfunc:
    """MLflow's pyfunc loader entry point: ``data_path`` is the model directory or its model file.

    Pickled models load only with the opt-in (:func:`cairn.safety.pickle_allowed`).
    """
    from cairn.models.hashes import verify_model_files

    path = Path(data_path)
    model_dir = path.parent if path.is_file() else path
    meta = Model.load(model_dir)
    verify_model_files(model_dir, meta)
    estimator = _load_estimator(model_dir, meta, allow_pickle=None)
    default = (meta.flavors.get(FLAVOR_NAME) or {}).get(_DEFAULT_METHOD_KEY) or "predict"
    return SklearnPyfunc(estimator, default if default in PYFUNC_METHODS else "predict")
