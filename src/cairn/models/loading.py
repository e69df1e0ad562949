"""Loading a model: find its directory, check its files, import its loader from the allow-list.

Every load goes through the same steps: resolve the URI to a local directory (downloading from the
artifact store if needed), read ``MLmodel``, check the recorded sha256 of every file, map
``loader_module`` through :mod:`cairn.flavors.registry` (never importing a name from the file as
is), append the model's ``code/`` to ``sys.path`` (only with the opt-in: it is code, and it never
shadows an installed module), and call the flavor inside :func:`cairn.safety.pickle_opt_in` so the
caller's ``allow_pickle`` reaches it.

Flavor modules implement MLflow's ``_load_pyfunc(data_path, model_config=None)`` returning an
object with ``predict(data, params=None)``, and ``load_model(model_uri, ..., allow_pickle=False)``
returning the framework's own object; they call :func:`open_model_dir` to get a verified directory.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

from cairn import safety
from cairn.artifacts.local import restore_interrupted_replace
from cairn.errors import ArtifactNotFound, InvalidArgument, UnsafeModel, UnsafePath
from cairn.flavors import registry
from cairn.models.confinement import check_confined
from cairn.models.enforcement import enforce_params, enforce_schema
from cairn.models.hashes import verified_scope, verify_model_files
from cairn.models.model import MLMODEL_FILE_NAME, Model

__all__ = [
    "LocalModel",
    "PyFuncModel",
    "add_code_to_path",
    "load_model",
    "load_pyfunc",
    "local_path_of",
    "model_subpath",
    "open_model_dir",
    "resolve_local_model_dir",
    "verify_model_files",
]

PYFUNC_FLAVOR = "python_function"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


class LocalModel(NamedTuple):
    """A model directory on local disk and its MLmodel file."""

    path: Path
    model: Model


def local_path_of(uri: str | os.PathLike[str]) -> Path | None:
    """The local path ``uri`` names (a plain path or ``file://`` URI), or ``None`` for any other URI."""
    if isinstance(uri, os.PathLike):
        return Path(os.fspath(uri))
    if not isinstance(uri, str):
        raise InvalidArgument(f"a model URI must be a string or path, got {type(uri).__name__}")
    match = _SCHEME.match(uri)
    if match is None or len(match.group(1)) == 1:  # no scheme, or a Windows drive letter
        return Path(uri)
    if match.group(1).lower() == "file":
        parsed = urlparse(uri)
        return Path(unquote(parsed.path))
    return None


def resolve_local_model_dir(model_uri: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None) -> Path:
    """A local directory holding the model ``model_uri`` names.

    Local paths and ``file://`` URIs are used in place (nothing is copied, no tracking store is
    opened). ``runs:/``, ``models:/`` and artifact-store URLs are resolved by
    :func:`cairn.registry.uris.resolve_model_uri`; a location that is not local is downloaded into
    ``dst`` (a new temporary directory by default, left in place for the life of the files' users).

    Raises:
        ArtifactNotFound: nothing exists at a local path.
        NotFound: the run, registered model, version or alias does not exist.
    """
    local = local_path_of(model_uri)
    if local is not None:
        if not local.exists() and not restore_interrupted_replace(local):
            raise ArtifactNotFound(f"no model at {local}: the path does not exist")
        return local.absolute()
    from cairn.registry.uris import resolve_model_uri

    resolved = resolve_model_uri(str(model_uri))
    location = resolved.location
    local = local_path_of(location)
    if local is not None:
        if not local.exists() and not restore_interrupted_replace(local):
            raise ArtifactNotFound(f"no model at {model_uri} (resolved to {local}, which does not exist)")
        return local.absolute()
    from cairn.artifacts import get_artifact_store

    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="cairn-model-"))
    target.mkdir(parents=True, exist_ok=True)
    return get_artifact_store(location).download(None, target).absolute()


def open_model_dir(model_uri: str | os.PathLike[str], *, dst: str | os.PathLike[str] | None = None) -> LocalModel:
    """Resolve ``model_uri`` to a local directory, read its MLmodel file and verify its file hashes.

    Raises:
        ArtifactNotFound: no model (no MLmodel file) at the URI.
        ModelIntegrityError: a file does not match its recorded sha256.
    """
    directory = resolve_local_model_dir(model_uri, dst)
    if directory.is_file() and directory.name == MLMODEL_FILE_NAME:
        directory = directory.parent
    if not (directory / MLMODEL_FILE_NAME).is_file():
        raise ArtifactNotFound(f'no model at {model_uri}: "{directory}" has no {MLMODEL_FILE_NAME} file')
    check_confined(directory)
    model = Model.load(directory)
    verify_model_files(directory, model)
    return LocalModel(directory, model)


def model_subpath(model_dir: str | os.PathLike[str], subpath: Any, what: str) -> Path:
    """``model_dir/subpath`` for a relative path read from an MLmodel file, refused if it would leave the directory.

    Raises:
        UnsafePath: ``subpath`` is absolute, contains ``..`` or is not a string.
    """
    from cairn.artifacts.paths import safe_relpath

    if not isinstance(subpath, str):
        raise UnsafePath(f"the MLmodel {what} must be a relative path, got {subpath!r}")
    try:
        rel = safe_relpath(subpath)
    except UnsafePath as exc:
        raise UnsafePath(f"the MLmodel {what} {subpath!r} is not a path inside the model directory: {exc}") from None
    return Path(model_dir).joinpath(*rel.split("/")) if rel else Path(model_dir)


def add_code_to_path(model_dir: str | os.PathLike[str], code: Any, allow_pickle: bool | None = None) -> None:
    """Append the model's saved code directory (``code: code`` in the MLmodel file) to ``sys.path``, with the opt-in.

    Putting a model's own modules on the import path lets them run, so it needs the same opt-in as
    unpickling (``allow_pickle=True``, ``CAIRN_ALLOW_PICKLE=1``, or an enclosing
    :func:`cairn.safety.pickle_opt_in`), or the caller's trust in every top-level module the
    directory holds (:func:`cairn.safety.module_trusted`). A directory with nothing importable in it
    changes nothing and is accepted. With the opt-in the directory is appended, never prepended: a
    top-level name it shares with a module that is already imported or installed stays the installed
    one, and a warning names each such module of the model that is not used.

    Raises:
        UnsafeModel: the directory holds modules and there is no opt-in (nothing is added to ``sys.path``).
        UnsafePath: ``code`` is not a relative path inside the model directory.
    """
    if not code:
        return
    directory = model_subpath(model_dir, code, "code directory")
    names = _code_module_names(directory)
    if not names:
        return
    if not all(safety.module_trusted(name, allow_pickle) for name in names):
        raise UnsafeModel(_code_refusal(directory, names))
    path = str(directory)
    if path in sys.path:
        return
    shadowed = {name: where for name in names if (where := _installed_location(name, directory)) is not None}
    if shadowed:
        warnings.warn(_shadow_warning(directory, shadowed), UserWarning, stacklevel=3)
    sys.path.append(path)
    importlib.invalidate_caches()


def _code_module_names(directory: Path) -> list[str]:
    """The top-level names ``directory`` makes importable on ``sys.path``: packages, namespace packages, modules."""
    if not directory.is_dir():
        return []
    suffixes = sorted(importlib.machinery.all_suffixes(), key=len, reverse=True)
    names: set[str] = set()
    for entry in directory.iterdir():
        if entry.is_dir():
            name: str | None = entry.name
        else:
            name = next((entry.name[: -len(s)] for s in suffixes if entry.name.endswith(s)), None)
        if name and "." not in name and name != "__pycache__":
            names.add(name)
    return sorted(names)


def _is_inside(location: str | None, directory: Path) -> bool:
    return location is not None and Path(location).resolve().is_relative_to(directory.resolve())


def _installed_location(name: str, code_dir: Path) -> str | None:
    """Where the module ``name`` already comes from, if not from ``code_dir`` (finding it imports nothing)."""
    module = sys.modules.get(name)
    if module is not None:
        where = getattr(module, "__file__", None)
        return None if _is_inside(where, code_dir) else (where or f"the already imported module {name}")
    try:
        spec = importlib.util.find_spec(name)  # a top-level name: no parent package to import
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    where = spec.origin if spec.has_location else next(iter(spec.submodule_search_locations or ()), None)
    if _is_inside(where, code_dir):
        return None
    return where or f"the installed module {name}"


def _code_refusal(directory: Path, names: Sequence[str]) -> str:
    return (
        f"This model ships Python code in {directory} ({', '.join(names)}), the MLmodel file's code directory "
        f"(MLflow's code_paths). Loading the model would put that directory on the import path (sys.path), "
        f"so its modules could run, and cairn does not do that unless you opt in. If you trust where this "
        f"model comes from, pass allow_pickle=True to the load call (for example "
        f"cairn.pyfunc.load_model(uri, allow_pickle=True)) or set the environment variable "
        f"{safety.ALLOW_PICKLE_ENV}=1; or trust exactly these modules with "
        f"`with cairn.safety.trusted_modules({tuple(names)!r}):` around the load (or "
        f"{safety.TRUSTED_MODULES_ENV}={','.join(names)})."
    )


def _shadow_warning(directory: Path, shadowed: dict[str, str]) -> str:
    found = "; ".join(f"{name} (already provided by {where})" for name, where in sorted(shadowed.items()))
    return (
        f"the model's code directory {directory} was appended to sys.path, but these of its modules are not "
        f"used because a module of the same name is already imported or installed: {found}. cairn never "
        f"lets a model's code shadow installed packages; if the model needs its own copy, rename it."
    )


def _accepts(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class PyFuncModel:
    """A loaded model behind one interface: ``predict(data, params=None)``, whatever its framework.

    ``predict`` checks ``data`` and ``params`` against the model's signature first (safe conversions
    applied, anything else refused with :class:`~cairn.errors.SchemaMismatch` naming the field),
    then calls the flavor's implementation.
    """

    def __init__(self, model_meta: Model, model_impl: Any, *, loader_module: str, model_dir: Path | None = None):
        if not callable(getattr(model_impl, "predict", None)):
            raise InvalidArgument(
                f"loader {loader_module} returned {type(model_impl).__name__}, which has no predict()"
            )
        self._model_meta = model_meta
        self._model_impl = model_impl
        self._loader_module = loader_module
        self._model_dir = model_dir
        self._predict_takes_params = _accepts(model_impl.predict, "params")

    @property
    def metadata(self) -> Model:
        """The model's MLmodel file."""
        return self._model_meta

    @property
    def loader_module(self) -> str:
        """The loader module the MLmodel file names (``cairn.flavors.sklearn``, ``mlflow.sklearn``)."""
        return self._loader_module

    @property
    def model_dir(self) -> Path | None:
        """The local directory the model was loaded from."""
        return self._model_dir

    @property
    def model_id(self) -> str | None:
        """MLflow 3's ``model_id`` if the file has one, else the ``model_uuid``."""
        value = self._model_meta.extra.get("model_id") or self._model_meta.model_uuid
        return str(value) if value is not None else None

    @property
    def run_id(self) -> str | None:
        return self._model_meta.run_id

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Predict on ``data`` after enforcing the signature.

        Raises:
            SchemaMismatch: ``data`` or ``params`` do not fit the signature (missing column, wrong
                dtype, wrong shape), naming the field.
        """
        input_schema = self._model_meta.get_input_schema()
        if input_schema is not None:
            data = enforce_schema(data, input_schema)
        params_schema = self._model_meta.get_params_schema()
        checked = enforce_params(params, params_schema) if (params or params_schema is not None) else None
        if self._predict_takes_params:
            return self._model_impl.predict(data, params=checked if params_schema is not None else None)
        return self._model_impl.predict(data)

    def unwrap_python_model(self) -> Any:
        """The :class:`~cairn.pyfunc.PythonModel` instance of a custom Python model.

        Raises:
            InvalidArgument: the model is not a custom Python model.
        """
        python_model = getattr(self._model_impl, "python_model", None)
        if python_model is None:
            raise InvalidArgument(
                f"this model was loaded by {self._loader_module}, not from a custom Python model; "
                "use get_raw_model() for the underlying object"
            )
        return python_model

    def get_raw_model(self) -> Any:
        """The flavor's underlying object (the estimator, the module, the PythonModel)."""
        getter = getattr(self._model_impl, "get_raw_model", None)
        if callable(getter):
            return getter()
        return getattr(self._model_impl, "python_model", None) or self._model_impl

    def __repr__(self) -> str:
        lines = ["cairn.pyfunc.loaded_model:"]
        if self._model_meta.artifact_path:
            lines.append(f"  artifact_path: {self._model_meta.artifact_path}")
        lines.append(f"  flavor: {self._loader_module}")
        if self._model_meta.run_id:
            lines.append(f"  run_id: {self._model_meta.run_id}")
        return "\n".join(lines)


def _call_load_pyfunc(module: Any, data_path: Path, model_config: dict[str, Any] | None) -> Any:
    loader = getattr(module, "_load_pyfunc", None)
    if not callable(loader):
        raise InvalidArgument(f"{module.__name__} has no _load_pyfunc(data_path, model_config) function")
    if _accepts(loader, "model_config"):
        return loader(str(data_path), model_config)
    return loader(str(data_path))


def load_pyfunc(
    model_uri: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    model_config: dict[str, Any] | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> PyFuncModel:
    """Load any model (cairn's or MLflow's) as a :class:`PyFuncModel`.

    Args:
        model_uri: a local path, ``runs:/<run_id>/<path>``, ``models:/<name>/<version>``,
            ``models:/<name>@<alias>``, ``models:/<name>/latest`` or an artifact-store URL.
        allow_pickle: allow unpickling the model's files and importing its own code (its ``code/``
            directory, appended to ``sys.path``), or set ``CAIRN_ALLOW_PICKLE=1``; only for models
            whose source you trust.
        model_config: overrides for the ``config`` recorded in the model's ``python_function`` entry.
        dst_path: where to download a remote model (a new temporary directory by default).

    Raises:
        UnsafeModel: the ``loader_module`` is not on cairn's allow-list, or the model needs unpickling
            or ships code (a ``code/`` directory) and ``allow_pickle`` is not set.
        ModelIntegrityError: a model file does not match its recorded sha256.
        InvalidArgument: the model has no ``python_function`` flavor.
    """
    directory, meta = open_model_dir(model_uri, dst=dst_path)
    conf = meta.flavors.get(PYFUNC_FLAVOR)
    if conf is None:
        raise InvalidArgument(
            f"the model at {model_uri} has no {PYFUNC_FLAVOR} flavor (it has {sorted(meta.flavors)}); "
            "load it with cairn.models.load_model instead"
        )
    loader_name = conf.get("loader_module")
    module = registry.import_loader_module(loader_name)
    add_code_to_path(directory, conf.get("code"), allow_pickle)
    data_path = model_subpath(directory, conf["data"], "python_function data path") if conf.get("data") else directory
    config = dict(conf.get("config") or {})
    config.update(model_config or {})
    with safety.pickle_opt_in(allow_pickle), verified_scope(directory):
        impl = _call_load_pyfunc(module, data_path, config or None)
    return PyFuncModel(meta, impl, loader_module=str(loader_name), model_dir=directory)


def _native_module_name(meta: Model, flavor: str | None, model_uri: object) -> str:
    if flavor is not None:
        if flavor not in meta.flavors:
            raise InvalidArgument(f"the model at {model_uri} has no {flavor!r} flavor; it has {sorted(meta.flavors)}")
        target = registry.native_flavor_module(flavor)
        if target is None:
            raise InvalidArgument(f"cairn cannot load the {flavor!r} flavor natively; use cairn.pyfunc.load_model")
        return target
    conf = meta.flavors.get(PYFUNC_FLAVOR)
    if conf is not None and conf.get("loader_module") is not None:
        return registry.resolve_loader_module(conf.get("loader_module"))
    for name in meta.flavors:
        target = registry.native_flavor_module(name)
        if target is not None:
            return target
    raise InvalidArgument(f"cairn has no loader for any flavor of the model at {model_uri}: {sorted(meta.flavors)}")


def load_model(
    model_uri: str | os.PathLike[str],
    *,
    flavor: str | None = None,
    allow_pickle: bool = False,
    dst_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a model as its framework's own object (an estimator, a ``torch.nn.Module``, ...).

    The flavor is ``flavor`` if given, else the one the ``python_function`` loader belongs to,
    else the first flavor cairn knows. A custom Python model (only a ``python_function`` flavor)
    comes back as a :class:`PyFuncModel`.

    Raises:
        UnsafeModel: as :func:`load_pyfunc`.
        ModelIntegrityError: a model file does not match its recorded sha256.
        InvalidArgument: the model has no flavor cairn can load natively (or not ``flavor``).
    """
    directory, meta = open_model_dir(model_uri, dst=dst_path)
    target = _native_module_name(meta, flavor, model_uri)
    if target == registry.PYFUNC_MODULE:
        with verified_scope(directory):
            return load_pyfunc(directory, allow_pickle=allow_pickle)
    module = importlib.import_module(target)
    chosen = meta.flavors.get(flavor) if flavor is not None else None
    code = (chosen or {}).get("code") or (meta.flavors.get(PYFUNC_FLAVOR) or {}).get("code")
    add_code_to_path(directory, code, allow_pickle)
    loader = module.load_model
    with safety.pickle_opt_in(allow_pickle), verified_scope(directory):
        if _accepts(loader, "allow_pickle"):
            return loader(str(directory), allow_pickle=allow_pickle)
        return loader(str(directory))
