"""Saving and logging a model directory: the work every flavor shares.

A flavor's ``save_model`` calls :func:`save_model_dir` with a callback that writes its framework's
files; everything else (input example, signature inference, requirements, code paths, the
``python_function`` entry, file hashes, the MLmodel file) happens here, once. A flavor's
``log_model`` calls :func:`log_model` with its ``save_model``.

Order inside a model directory: the flavor's files, ``code/``, the input example, the environment
files, ``cairn_files.json`` (sha256 of every file) and, last, ``MLmodel``. A directory without an
MLmodel file is not a model, so a save that fails half-way never leaves a loadable model behind.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cairn.artifacts.leftovers import temp_dir_prefix
from cairn.errors import InvalidArgument, ResourceAlreadyExists
from cairn.models.hashes import MANIFEST_SHA256_KEY, record_model_files, write_files_manifest
from cairn.models.input_example import save_input_example
from cairn.models.model import FORMAT_VERSION, MLMODEL_FILE_NAME, Model, ModelInfo, directory_size
from cairn.models.requirements import write_requirements
from cairn.models.schema import ModelSignature
from cairn.models.signature import infer_signature

if TYPE_CHECKING:
    from cairn.tracking.client import Client

__all__ = ["CODE_DIR", "LOGGED_MODELS_TAG", "PYFUNC_FLAVOR", "copy_code_paths", "log_model", "save_model_dir"]

PYFUNC_FLAVOR = "python_function"
CODE_DIR = "code"
#: Run tag listing the models logged to a run, as a JSON list (MLflow's tag and format).
LOGGED_MODELS_TAG = "mlflow.log-model.history"
_MAX_TAG_LENGTH = 8000


def _prepare_directory(path: Path) -> None:
    if path.exists():
        if not path.is_dir():
            raise ResourceAlreadyExists(f"cannot save a model to {path}: a file of that name exists")
        if any(path.iterdir()):
            raise ResourceAlreadyExists(
                f"cannot save a model to {path}: the directory exists and is not empty; "
                "choose a new path or remove the old model first"
            )
    path.mkdir(parents=True, exist_ok=True)


def copy_code_paths(model_dir: str | os.PathLike[str], code_paths: Sequence[str | os.PathLike[str]]) -> str:
    """Copy each file or directory of ``code_paths`` into ``<model_dir>/code/<its name>``.

    At load time, with the caller's opt-in (``allow_pickle=True``, ``CAIRN_ALLOW_PICKLE=1`` or trusting
    every module in it, see SECURITY.md), ``code/`` is appended to ``sys.path``, so
    ``code_paths=["src/mypkg"]`` makes ``import mypkg`` work and ``code_paths=["helpers.py"]`` makes
    ``import helpers`` work; without it the load is refused. ``__pycache__`` is not copied.

    Returns:
        ``"code"``, the subdirectory to record in the flavor entries.

    Raises:
        InvalidArgument: a path does not exist, or two paths have the same name.
    """
    if isinstance(code_paths, (str, os.PathLike)):
        raise InvalidArgument("code_paths must be a list of paths, not a single path")
    target_root = Path(model_dir) / CODE_DIR
    target_root.mkdir(parents=True, exist_ok=True)
    for entry in code_paths:
        source = Path(entry)
        if not source.exists():
            raise InvalidArgument(f"code path {source} does not exist")
        name = source.resolve().name
        target = target_root / name
        if target.exists():
            raise InvalidArgument(f"two code paths are named {name!r}; each file or directory name must be unique")
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    return CODE_DIR


def _split_example(input_example: Any) -> tuple[Any, dict[str, Any] | None]:
    if isinstance(input_example, tuple) and len(input_example) == 2 and isinstance(input_example[1], dict):
        return input_example[0], input_example[1]
    return input_example, None


def infer_signature_from_example(input_example: Any, predict_fn: Callable[[Any], Any] | None) -> ModelSignature | None:
    data, params = _split_example(input_example)
    output = None
    if predict_fn is not None:
        try:
            output = predict_fn(data)
        except Exception as exc:  # the model is still worth saving; the signature then has inputs only
            warnings.warn(
                f"could not run the model on the input example to infer its output schema "
                f"({type(exc).__name__}: {exc}); the signature records the inputs only",
                UserWarning,
                stacklevel=3,
            )
    try:
        return infer_signature(data, output, params)
    except InvalidArgument as exc:
        if output is None:
            raise
        warnings.warn(
            f"the model's output on the input example has no schema ({exc}); the signature records the inputs only",
            UserWarning,
            stacklevel=3,
        )
        return infer_signature(data, None, params)


def save_model_dir(
    path: str | os.PathLike[str],
    *,
    flavor_name: str,
    flavor_conf: dict[str, Any],
    loader_module: str,
    write_data: Callable[[Path], None] | None = None,
    predict_fn: Callable[[Any], Any] | None = None,
    signature: ModelSignature | Literal[False] | None = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    pip_packages: Sequence[str] = (),
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    pyfunc_conf: dict[str, Any] | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
) -> Model:
    """Write a complete model directory at ``path`` and return its :class:`Model`.

    Args:
        path: the new model directory; it must not exist or be empty.
        flavor_name: the framework's flavor (``"sklearn"``); ``"python_function"`` for custom
            Python models, whose ``flavor_conf`` then goes into the single ``python_function`` entry.
        flavor_conf: the framework flavor's entry (``{"pickled_model": ..., "sklearn_version": ...}``);
            read after ``write_data`` ran, so ``write_data`` may add entries to it.
        loader_module: the ``python_function`` loader; must be on :mod:`cairn.flavors.registry`'s allow-list
            for cairn to load the model.
        write_data: called with the directory (already created) to write the framework's files.
        predict_fn: the model's prediction function, run once on the input example to infer the
            output schema.
        signature: the signature; ``None`` infers one from ``input_example`` (and ``predict_fn``),
            ``False`` records none.
        input_example: saved as ``input_example.json``; ``(data, params)`` also records params.
        metadata: free-form metadata for the MLmodel file; cairn adds ``cairn_format`` and
            ``cairn_files_sha256``.
        pip_packages: distribution names the model needs (pinned to the installed versions); cairn is
            always added.
        code_paths: files or directories copied under ``code/``, appended to ``sys.path`` at load with the
            caller's opt-in (loading refuses without it).
        pyfunc_conf: extra keys for the ``python_function`` entry (``model_path``, ``data``, ``predict_fn``);
            also read after ``write_data``.
        run_id: recorded in the MLmodel file (set by :func:`log_model`).
        artifact_path: recorded in the MLmodel file (set by :func:`log_model`).

    Raises:
        ResourceAlreadyExists: ``path`` exists and is not an empty directory.
        InvalidArgument: a bad input example, signature, requirement or code path.
    """
    if signature not in (None, False) and not isinstance(signature, ModelSignature):
        raise InvalidArgument(f"signature must be a ModelSignature, None or False, got {type(signature).__name__}")
    if not isinstance(flavor_name, str) or not flavor_name:
        raise InvalidArgument("flavor_name must be a non-empty string")
    directory = Path(path)
    _prepare_directory(directory)
    try:
        model = _write(
            directory,
            flavor_name=flavor_name,
            flavor_conf=flavor_conf,
            loader_module=loader_module,
            write_data=write_data,
            predict_fn=predict_fn,
            signature=signature,
            input_example=input_example,
            metadata=metadata,
            pip_packages=pip_packages,
            code_paths=code_paths,
            pyfunc_conf=pyfunc_conf,
            run_id=run_id,
            artifact_path=artifact_path,
        )
    except BaseException:
        # Leave no half-written directory (it has no MLmodel, but it would block the next save).
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if artifact_path is None:  # saved where it stays (log_model records the files once they are in the store)
        record_model_files(directory)
    return model


def _write(
    directory: Path,
    *,
    flavor_name: str,
    flavor_conf: dict[str, Any],
    loader_module: str,
    write_data: Callable[[Path], None] | None,
    predict_fn: Callable[[Any], Any] | None,
    signature: ModelSignature | Literal[False] | None,
    input_example: Any,
    metadata: dict[str, Any] | None,
    pip_packages: Sequence[str],
    code_paths: Sequence[str | os.PathLike[str]] | None,
    pyfunc_conf: dict[str, Any] | None,
    run_id: str | None,
    artifact_path: str | None,
) -> Model:
    if write_data is not None:
        write_data(directory)
    flavor_conf = dict(flavor_conf)  # read after write_data, which may fill in names of files it wrote
    code = copy_code_paths(directory, code_paths) if code_paths else None

    example_info = None
    if input_example is not None:
        example_info = save_input_example(directory, input_example)
        if signature is None:
            signature = infer_signature_from_example(input_example, predict_fn)
    env = write_requirements(directory, list(pip_packages))

    pyfunc_entry: dict[str, Any] = {
        "loader_module": loader_module,
        "env": env,
        "python_version": platform.python_version(),
    }
    if code is not None:
        pyfunc_entry["code"] = code
    pyfunc_entry.update(pyfunc_conf or {})
    model = Model(
        artifact_path=artifact_path,
        run_id=run_id,
        signature=signature or None,
        saved_input_example_info=example_info,
        metadata={k: v for k, v in (metadata or {}).items() if k not in ("cairn_format", MANIFEST_SHA256_KEY)},
    )
    if flavor_name == PYFUNC_FLAVOR:
        model.add_flavor(PYFUNC_FLAVOR, **{**pyfunc_entry, **flavor_conf})
    else:
        model.add_flavor(PYFUNC_FLAVOR, **pyfunc_entry)
        model.add_flavor(flavor_name, **({**flavor_conf, "code": code} if code is not None else flavor_conf))
    model.extra["cairn_version"] = _cairn_version()

    manifest_sha256 = write_files_manifest(directory)
    assert model.metadata is not None  # Model.__post_init__ always sets it
    model.metadata["cairn_format"] = FORMAT_VERSION
    model.metadata[MANIFEST_SHA256_KEY] = manifest_sha256
    model.model_size_bytes = directory_size(directory)
    model.save(directory / MLMODEL_FILE_NAME)
    return model


def _cairn_version() -> str:
    import cairn

    return str(getattr(cairn, "__version__", "0"))


# ----------------------------------------------------------------------------------------- logging


def _history_entry(model: Model) -> dict[str, Any]:
    """What MLflow records per logged model in the run's history tag."""
    entry: dict[str, Any] = {
        key: value
        for key, value in (
            ("run_id", model.run_id),
            ("artifact_path", model.artifact_path),
            ("utc_time_created", model.utc_time_created),
            ("model_uuid", model.model_uuid),
        )
        if value is not None
    }
    entry["flavors"] = {name: {k: v for k, v in conf.items() if k != "config"} for name, conf in model.flavors.items()}
    return entry


def _record_logged_model(client: Any, run_id: str, model: Model) -> None:
    """Append the model to the run's ``mlflow.log-model.history`` tag, dropping the oldest entries
    if the list would exceed the tag length limit."""
    existing = client.get_run(run_id).data.tags.get(LOGGED_MODELS_TAG)
    history: list[Any] = []
    if existing:
        try:
            parsed = json.loads(existing)
            history = parsed if isinstance(parsed, list) else []
        except ValueError:
            history = []
    history.append(_history_entry(model))
    text = json.dumps(history)
    while len(text) > _MAX_TAG_LENGTH and len(history) > 1:
        history.pop(0)
        text = json.dumps(history)
    if len(text) > _MAX_TAG_LENGTH:
        entry = history[-1]
        text = json.dumps([{k: v for k, v in entry.items() if k != "flavors"}])
    client.set_tag(run_id, LOGGED_MODELS_TAG, text)


def model_artifact_name(name: str | None, artifact_path: str | None) -> str:
    """The artifact path a flavor's ``log_model`` writes to: ``name``, or MLflow 2's ``artifact_path``.

    Raises:
        InvalidArgument: both are given and differ.
    """
    if name is not None and artifact_path is not None and name != artifact_path:
        raise InvalidArgument(f"name={name!r} and artifact_path={artifact_path!r} disagree; pass only name")
    return name if name is not None else artifact_path if artifact_path is not None else "model"


def log_model(
    save_fn: Callable[..., Model],
    name: str,
    *,
    registered_model_name: str | None = None,
    run_id: str | None = None,
    client: Client | None = None,
    **save_kwargs: Any,
) -> ModelInfo:
    """Save a model with ``save_fn`` and upload it into a run's artifacts at ``name``.

    The run is ``run_id``, else the active run, else a new run that stays active (as in MLflow). With
    ``client``, the run (``run_id``, required) is in that client's store: the model is uploaded into its
    artifacts, recorded in its tags and registered in its registry; the fluent API is not touched.
    A model already logged at ``name`` in the run is replaced, never removed first: in a local
    store a reader of ``runs:/<run_id>/<name>`` sees the old model or the new one, each complete, at
    every instant, even if this process is killed (see
    :meth:`~cairn.artifacts.local.LocalArtifactStore.replace_dir`); in other stores ``MLmodel`` is
    uploaded after every other file and old files are deleted last (see
    :meth:`~cairn.artifacts.fsspec_store.FsspecArtifactStore.replace_dir` for what a reader may see).

    Args:
        save_fn: the flavor's ``save_model``; called as ``save_fn(path, run_id=..., artifact_path=name,
            **save_kwargs)`` and returning the :class:`Model` it wrote.
        name: the artifact path of the model inside the run (``"model"``).
        registered_model_name: also register the logged model under this name
            (creating the name on first use).
        run_id: log into this run instead of the fluent one.
        client: the client of the run's store (default: the fluent API's).
        **save_kwargs: passed to ``save_fn``.

    Returns:
        The :class:`ModelInfo`, with ``model_uri`` ``runs:/<run_id>/<name>`` and, when registered,
        ``registered_model_version``.

    Raises:
        InvalidArgument: a bad ``name``, or ``client`` without ``run_id``.
        RunNotFound: ``run_id`` is not a run of the store.
    """
    from cairn.artifacts.paths import safe_relpath
    from cairn.tracking import fluent
    from cairn.tracking.client import Client

    if not isinstance(name, str) or not safe_relpath(name):
        raise InvalidArgument(f"the model name (its artifact path in the run) must be a non-empty path, got {name!r}")
    name = safe_relpath(name)
    if client is not None and run_id is None:
        raise InvalidArgument("log_model(client=...) needs run_id= (the fluent active run is not that store's)")
    client = client if client is not None else Client()
    if run_id is None:
        run_id = fluent._active_run_id()
    else:
        client.get_run(run_id)  # RunNotFound before any work
    store = client.artifact_store(run_id)
    # A local store stages the model next to its final place and swaps the whole directory in (no
    # copy, see LocalArtifactStore.replace_dir); the fsync runs in the background, waited for at run
    # end (cairn.artifacts.durability). Other stores upload, MLmodel last, then prune old files.
    staging = getattr(store, "staging_dir", None)
    with staging(name) if callable(staging) else tempfile.TemporaryDirectory(prefix=temp_dir_prefix("model")) as tmp:
        local = Path(tmp) / "model"
        model = save_fn(local, run_id=run_id, artifact_path=name, **save_kwargs)
        if not isinstance(model, Model):
            raise InvalidArgument(f"save_fn must return the Model it saved, got {type(model).__name__}")
        store.replace_dir(local, name, commit_file=MLMODEL_FILE_NAME, durable_now=False)
    local_path = getattr(store, "local_path", None)
    if callable(local_path):  # files in a local store stay where they are: record them as verified
        record_model_files(local_path(name))
    _record_logged_model(client, run_id, model)
    info = model.get_model_info(f"runs:/{run_id}/{name}")
    if registered_model_name is not None:
        version = client.create_model_version(registered_model_name, info.model_uri)
        info.registered_model_version = int(version.version)
    return info
