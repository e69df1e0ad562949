"""Custom Python models: any object with a ``predict`` method, serialized with cloudpickle.

Layout (MLflow's, so either library loads the other's custom models)::

    MLmodel             python_function: {loader_module: cairn.flavors.pyfunc, python_model: python_model.pkl,
                                          cloudpickle_version: ..., artifacts: {name: {path: ..., uri: ...}},
                                          code: code, config: {...}, env: ..., python_version: ...}
    python_model.pkl    the PythonModel instance (cloudpickle)
    artifacts/<name>/   each artifact, copied (or downloaded) at save time
    code/               the code_paths, appended to sys.path before unpickling (with the same opt-in)

Loading unpickles ``python_model.pkl`` and imports from ``code/``, either of which can run arbitrary
code, so it needs the pickle opt-in (``allow_pickle=True`` or ``CAIRN_ALLOW_PICKLE=1``); without it
:class:`~cairn.errors.UnsafeModel` says so and nothing is read or put on ``sys.path``.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cairn import safety
from cairn.errors import InvalidArgument
from cairn.models.loading import PyFuncModel, load_pyfunc, local_path_of, model_subpath
from cairn.models.model import Model, ModelInfo
from cairn.models.packaging import PYFUNC_FLAVOR, save_model_dir
from cairn.models.packaging import log_model as _log_model
from cairn.models.schema import ModelSignature
from cairn.tracking.client import Client

__all__ = [
    "FLAVOR_NAME",
    "PythonModel",
    "PythonModelContext",
    "load_model",
    "log_model",
    "save_model",
]

FLAVOR_NAME = PYFUNC_FLAVOR
LOADER_MODULE = "cairn.flavors.pyfunc"
PYTHON_MODEL_FILE = "python_model.pkl"
ARTIFACTS_DIR = "artifacts"
_DEFAULT_PACKAGES = ("cloudpickle",)


class PythonModelContext:
    """What a :class:`PythonModel` gets in ``load_context`` and ``predict``.

    Attributes:
        artifacts: artifact name -> absolute local path of the file or directory saved with the model.
        model_config: the model's configuration (saved ``model_config``, overridden at load time).
    """

    def __init__(self, artifacts: dict[str, str], model_config: dict[str, Any] | None = None) -> None:
        self._artifacts = dict(artifacts)
        self._model_config = dict(model_config or {})

    @property
    def artifacts(self) -> dict[str, str]:
        return self._artifacts

    @property
    def model_config(self) -> dict[str, Any]:
        return self._model_config

    def __repr__(self) -> str:
        return f"PythonModelContext(artifacts={self._artifacts!r}, model_config={self._model_config!r})"


class PythonModel:
    """Base class for custom models: override :meth:`predict`, and :meth:`load_context` to load artifacts.

    The instance is pickled with cloudpickle when the model is saved, so keep heavy state that
    lives in files (weights, vocabularies) in ``artifacts`` and load it in :meth:`load_context`.
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Called once after loading (and before inferring a signature at save time)."""

    def predict(self, context: PythonModelContext, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Return the predictions for ``model_input`` (already checked against the signature)."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(context, model_input, params=None)")


class _FunctionPythonModel(PythonModel):
    """A plain function ``f(model_input)`` used as a python_model (as MLflow allows)."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def predict(self, context: PythonModelContext, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return self.func(model_input)


def _call_style(python_model: Any) -> tuple[bool, bool]:
    """(takes a context first, takes params) for ``python_model.predict``.

    MLflow 3 allows ``predict(self, model_input, params=None)`` without a context; the first
    positional parameter is the context if it is named ``context`` or another positional parameter
    other than ``params`` follows it.
    """
    try:
        parameters = list(inspect.signature(python_model.predict).parameters.values())
    except (TypeError, ValueError):
        return True, True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_context = bool(positional) and (
        positional[0].name == "context" or (len(positional) >= 2 and positional[1].name != "params")
    )
    takes_params = any(p.name == "params" or p.kind is p.VAR_KEYWORD for p in parameters)
    return takes_context, takes_params


class _PythonModelWrapper:
    """What ``_load_pyfunc`` returns: ``predict(data, params=None)`` calling the user's model."""

    def __init__(self, python_model: Any, context: PythonModelContext) -> None:
        self.python_model = python_model
        self.context = context
        self._takes_context, self._takes_params = _call_style(python_model)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        args = (self.context, data) if self._takes_context else (data,)
        if self._takes_params:
            return self.python_model.predict(*args, params=params)
        return self.python_model.predict(*args)

    def get_raw_model(self) -> Any:
        return self.python_model


def _check_python_model(python_model: Any) -> Any:
    if python_model is None:
        raise InvalidArgument("python_model is required: a PythonModel instance or a function")
    if not isinstance(python_model, PythonModel) and not callable(getattr(python_model, "predict", None)):
        if callable(python_model):
            return _FunctionPythonModel(python_model)
        raise InvalidArgument(
            f"python_model must be a cairn.pyfunc.PythonModel (or have a predict method), "
            f"got {type(python_model).__name__}"
        )
    return python_model


def _artifact_name(name: object) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise InvalidArgument(f"artifact names must be simple names without '/', got {name!r}")
    return name


def _fetch_artifact(uri: str | os.PathLike[str], staging: Path) -> Path:
    """A local file or directory with the artifact's content: ``uri`` itself if local, else a download."""
    local = local_path_of(uri)
    if local is not None:
        if not local.exists():
            raise InvalidArgument(f"artifact {os.fspath(uri)!r} does not exist")
        return local
    text = str(uri)
    location = text
    if text.startswith(("runs:", "models:")):
        from cairn.registry.uris import resolve_model_uri

        location = resolve_model_uri(text).location
        local = local_path_of(location)
        if local is not None:
            if not local.exists():
                raise InvalidArgument(f"artifact {text!r} does not exist (resolved to {local})")
            return local
    from cairn.artifacts import get_artifact_store

    parent, _, leaf = location.rstrip("/").rpartition("/")
    if not parent or not leaf:
        raise InvalidArgument(f"cannot download artifact {text!r}: no file or directory name in {location!r}")
    return get_artifact_store(parent).download(leaf, staging)


def _copy_artifacts(model_dir: Path, artifacts: Mapping[str, str | os.PathLike[str]]) -> dict[str, dict[str, str]]:
    """Copy each artifact into ``artifacts/<name>/`` (a file keeps its file name; a directory's
    content becomes that directory) and return the MLmodel ``artifacts`` entry."""
    config: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="cairn-artifacts-") as tmp:
        for index, (raw_name, uri) in enumerate(artifacts.items()):
            name = _artifact_name(raw_name)
            source = _fetch_artifact(uri, Path(tmp) / str(index))
            target = model_dir / ARTIFACTS_DIR / name
            if source.is_dir():
                shutil.copytree(source, target, symlinks=False)
                rel = f"{ARTIFACTS_DIR}/{name}"
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / source.name)
                rel = f"{ARTIFACTS_DIR}/{name}/{source.name}"
            config[name] = {"path": rel, "uri": os.fspath(uri)}
    return config


def _requirements(pip_requirements: Sequence[str] | None, extra_pip_requirements: Sequence[str] | None) -> list[str]:
    if pip_requirements is not None and isinstance(pip_requirements, (str, os.PathLike)):
        raise InvalidArgument("pip_requirements must be a list of requirement strings")
    base = list(pip_requirements) if pip_requirements is not None else list(_DEFAULT_PACKAGES)
    return base + list(extra_pip_requirements or ())


def save_model(
    path: str | os.PathLike[str],
    python_model: Any = None,
    artifacts: Mapping[str, str | os.PathLike[str]] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    signature: ModelSignature | Literal[False] | None = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    *,
    run_id: str | None = None,
    artifact_path: str | None = None,
) -> Model:
    """Save a custom Python model to the new directory ``path``.

    Args:
        path: the model directory to create (must not exist or be empty).
        python_model: a :class:`PythonModel` instance (or a function of the model input).
        artifacts: name -> local path or URI (``runs:/...``, ``models:/...``, ``s3://...``) of files the
            model needs; copied into the model and available as ``context.artifacts[name]``.
        code_paths: files or directories copied under ``code/`` and importable at load (appended to
            ``sys.path``, so a name an installed module already has is not taken from the model).
        signature: the signature; inferred from ``input_example`` when omitted; ``False`` records none.
        input_example: example input, saved with the model; the signature is inferred by running
            the model on it (after ``load_context`` with the copied artifacts).
        pip_requirements: the model's requirements (default: cloudpickle); cairn is always added.
        extra_pip_requirements: requirements added to the default ones.
        metadata: free-form metadata for the MLmodel file.
        model_config: configuration passed to the model as ``context.model_config``.
        run_id: recorded in the MLmodel file (set by :func:`log_model`).
        artifact_path: recorded in the MLmodel file (set by :func:`log_model`).

    Returns:
        The saved :class:`~cairn.models.Model`.
    """
    model = _check_python_model(python_model)
    try:
        import cloudpickle
    except ImportError:
        raise InvalidArgument("saving a custom Python model needs cloudpickle (pip install cloudpickle)") from None
    flavor_conf: dict[str, Any] = {
        "python_model": PYTHON_MODEL_FILE,
        "cloudpickle_version": cloudpickle.__version__,
    }
    if model_config:
        flavor_conf["config"] = dict(model_config)
    directory = Path(path)

    def write_data(model_dir: Path) -> None:
        with open(model_dir / PYTHON_MODEL_FILE, "wb") as out:
            try:
                cloudpickle.dump(model, out)
            except Exception as exc:
                raise InvalidArgument(
                    f"cannot serialize the python model {type(model).__name__} with cloudpickle: {exc}"
                ) from exc
        if artifacts:
            flavor_conf["artifacts"] = _copy_artifacts(model_dir, artifacts)

    def predict_fn(data: Any) -> Any:
        saved = {
            name: str(model_subpath(directory, entry["path"], "artifact path"))
            for name, entry in flavor_conf.get("artifacts", {}).items()
        }
        context = PythonModelContext(saved, model_config)
        if callable(getattr(model, "load_context", None)):
            model.load_context(context)
        return _PythonModelWrapper(model, context).predict(data)

    return save_model_dir(
        directory,
        flavor_name=FLAVOR_NAME,
        flavor_conf=flavor_conf,
        loader_module=LOADER_MODULE,
        write_data=write_data,
        predict_fn=predict_fn,
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        pip_packages=_requirements(pip_requirements, extra_pip_requirements),
        code_paths=code_paths,
        run_id=run_id,
        artifact_path=artifact_path,
    )


def log_model(
    name: str | None = None,
    python_model: Any = None,
    artifacts: Mapping[str, str | os.PathLike[str]] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    signature: ModelSignature | Literal[False] | None = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    *,
    registered_model_name: str | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    client: Client | None = None,
) -> ModelInfo:
    """Log a custom Python model into a run (the active one, else a new one) at ``name``.

    ``name`` is MLflow's first positional argument (``artifact_path`` in MLflow 2, ``name`` in
    MLflow 3); ``artifact_path=`` is accepted as a keyword too. ``client``: log into that client's store
    (with ``run_id``), see :class:`~cairn.models.flavor.LogOptions`. Other arguments as in :func:`save_model`.

    Returns:
        The :class:`~cairn.models.ModelInfo`; ``model_uri`` is ``runs:/<run_id>/<name>``.
    """
    if name is not None and artifact_path is not None and name != artifact_path:
        raise InvalidArgument(f"log_model got name={name!r} and artifact_path={artifact_path!r}; give one")
    target = name if name is not None else artifact_path
    if target is None:
        raise InvalidArgument("log_model needs the model's name in the run, e.g. log_model('model', python_model=...)")
    return _log_model(
        save_model,
        target,
        registered_model_name=registered_model_name,
        run_id=run_id,
        client=client,
        python_model=python_model,
        artifacts=artifacts,
        code_paths=code_paths,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=metadata,
        model_config=model_config,
    )


def load_model(
    model_uri: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    model_config: dict[str, Any] | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> PyFuncModel:
    """Load a custom Python model (or any model) as a :class:`~cairn.models.loading.PyFuncModel`.

    Raises:
        UnsafeModel: ``allow_pickle`` is not set (nor ``CAIRN_ALLOW_PICKLE=1``).
    """
    return load_pyfunc(model_uri, allow_pickle=allow_pickle, model_config=model_config, dst_path=dst_path)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> _PythonModelWrapper:
    """MLflow's loader hook: unpickle the python model (opt-in required), give it its context.

    ``model_config`` is the configuration to use; the one saved with the model when ``None``.
    """
    model_dir = Path(data_path)
    meta = Model.load(model_dir)
    conf = meta.flavors.get(PYFUNC_FLAVOR) or {}
    subpath = conf.get("python_model")
    if subpath is None:
        if conf.get("model_code_path"):
            raise InvalidArgument(
                f"the model at {model_dir} is an MLflow models-from-code model, which cairn does not load; "
                "load it with mlflow.pyfunc.load_model"
            )
        raise InvalidArgument(f"the MLmodel at {model_dir} names no python_model file")
    pickle_path = model_subpath(model_dir, subpath, "python_model path")
    python_model = safety.load_cloudpickle(
        pickle_path,
        None,
        what=f"the custom Python model {subpath} (in {model_dir})",
        compression=conf.get("python_model_compression"),
    )
    if not callable(getattr(python_model, "predict", None)):
        raise InvalidArgument(
            f"{subpath} in {model_dir} holds a {type(python_model).__name__}, not a python model with a predict method"
        )
    saved_version = conf.get("cloudpickle_version")
    import cloudpickle

    if saved_version is not None and saved_version != cloudpickle.__version__:
        warnings.warn(
            f"the model was saved with cloudpickle {saved_version} and cloudpickle {cloudpickle.__version__} is "
            "installed; the versions may be incompatible",
            UserWarning,
            stacklevel=2,
        )
    artifacts: dict[str, str] = {}
    for name, entry in (conf.get("artifacts") or {}).items():
        relative = entry.get("path") if isinstance(entry, dict) else None
        artifacts[str(name)] = str(model_subpath(model_dir, relative, f"artifact {name!r} path"))
    config = model_config if model_config is not None else dict(conf.get("config") or {})
    context = PythonModelContext(artifacts, config)
    if callable(getattr(python_model, "load_context", None)):
        python_model.load_context(context)
    return _PythonModelWrapper(python_model, context)
