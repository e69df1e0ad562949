"""The ONNX flavor: ONNX models, conversion from torch and scikit-learn, prediction through onnxruntime.

Layout (MLflow's ``onnx`` flavor keys, so ``mlflow.onnx.load_model`` reads the file)::

    MLmodel                 onnx: {data: onnx/model.onnx, onnx_version, providers, onnx_session_options,
                                   opset, ir_version, external_data: [...], converted_from, code}
                            python_function: {loader_module: cairn.flavors.onnx, ...}
                            metadata: {onnx_parity: {max_abs_diff, max_rel_diff, rtol, atol, ...}}  # conversions
    onnx/model.onnx         the graph (and the weights, below the 2 GB protobuf limit)
    onnx/model.onnx.data    the weights as ONNX external data, for large models or on request

What ``save_model`` takes: an ``onnx.ModelProto``, a path to a ``.onnx`` file (with its external
data), a ``torch.nn.Module`` or a scikit-learn estimator; the last two are converted
(:mod:`cairn.flavors._onnx_convert`) and must reproduce the source model on the input example
within ``onnx_rtol``/``onnx_atol``, or nothing is saved (:class:`OnnxParityError`).

External data is read only from files inside the directory of the ``.onnx`` file: a location that
is absolute, climbs out with ``..`` or resolves outside through a symlink is refused with
:class:`~cairn.errors.UnsafePath` before onnx or onnxruntime opens anything.

Trust: an MLmodel file is hostile input, and some onnxruntime settings read or write files
(``extra_session_config`` entries such as ``session.model_external_initializers_file_folder_path``
or ``session.collect_node_memory_stats_to_file``, provider options such as TensorRT's cache paths).
From the model's files (the ``onnx`` entry, or the ``python_function`` entry's ``config``) cairn
takes only an allow-list written in :mod:`cairn.flavors._onnx_runtime`: thread counts (at most
1024), execution mode, graph optimization level, memory pattern/arena flags, log level, a few
path-free ``extra_session_config`` entries with ``"0"``/``"1"`` or small-number values, and the
provider options ``device_id``, ``gpu_mem_limit``, ``arena_extend_strategy``,
``cudnn_conv_algo_search`` and ``do_copy_in_default_stream``. Anything else is refused with
:class:`~cairn.errors.UnsafeModel` naming it (and at save with :class:`~cairn.errors.InvalidArgument`,
so no model is written that could not be loaded). Settings the caller passes at load time
(``load_pyfunc(providers=..., session_options=...)`` or ``model_config``) apply as given.

Pyfunc ``predict`` runs an onnxruntime ``InferenceSession`` (providers recorded at save time or
given at load, CPU by default) and takes a numpy array or tensor (models with one input), a dict
of arrays keyed by input name, or a DataFrame (its values for a one-input model, else one column
per input). Inputs are cast to the types the graph declares: widening casts, integers whose
values fit, and narrower floats (float64 -> float32, what ONNX float models take; the signature
decides whether float64 is accepted at all). It returns a DataFrame for DataFrame input (a
``(n, k)`` output becomes columns ``name_0 .. name_{k-1}``), else the array of a model with one
output and a dict of arrays (by output name) for several outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Unpack

from cairn.errors import InvalidArgument, ResourceAlreadyExists
from cairn.flavors._onnx_convert import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Conversion,
    OnnxParityError,
    check_parity,
    convert,
    source_kind,
)

# The names marked "noqa: F401" are not used here: they are re-exported, so everything the module held before
# it was split is still an attribute of ``cairn.flavors.onnx``.
from cairn.flavors._onnx_external_data import (
    _all_tensors,  # noqa: F401
    _attribute_tensors,  # noqa: F401
    _check_in_memory,
    _graph_tensors,  # noqa: F401
    _is_external,  # noqa: F401
    _parse,
    check_external_data,
    read_onnx_file,
)
from cairn.flavors._onnx_runtime import (
    _BOOL_OPTIONS,  # noqa: F401
    _EXACT_INT_LIMIT,  # noqa: F401
    _EXECUTION_MODES,  # noqa: F401
    _INT_OPTIONS,  # noqa: F401
    _OPTIMIZATION_LEVELS,  # noqa: F401
    _ORT_DTYPES,  # noqa: F401
    DEFAULT_PROVIDERS,
    OnnxPyfunc,
    _as_numpy,  # noqa: F401
    _cast_feed,  # noqa: F401
    _execution_mode,  # noqa: F401
    _from_session_options,  # noqa: F401
    _module_root,
    _provider_name,  # noqa: F401
    _session_options,  # noqa: F401
    normalize_providers,  # noqa: F401
    normalize_session_options,  # noqa: F401
    open_session,
    recordable_settings,
    settings_from_model_file,
)
from cairn.flavors._onnx_signature import signature_from_graph
from cairn.models.flavor import CommonLogOptions, OnnxParityOptions, log_flavor_model
from cairn.models.model import MLMODEL_FILE_NAME, Model, ModelInfo
from cairn.models.schema import ModelSignature

if TYPE_CHECKING:
    import onnx

    from cairn.models.loading import PyFuncModel

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_PROVIDERS",
    "DEFAULT_RTOL",
    "FLAVOR_NAME",
    "OnnxLogOptions",
    "OnnxOptions",
    "OnnxParityError",
    "OnnxPyfunc",
    "add_onnx_flavor",
    "check_external_data",
    "load_model",
    "load_pyfunc",
    "log_model",
    "save_model",
]

FLAVOR_NAME = "onnx"
LOADER_MODULE = "cairn.flavors.onnx"
ONNX_DIR = "onnx"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
#: Above this many bytes, ``save_as_external_data=None`` stores the weights as external data
#: (protobuf cannot serialize a message of 2 GiB or more; the margin covers the graph itself).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
#: Tensors smaller than this stay inside model.onnx when the weights go to external data.
EXTERNAL_TENSOR_MIN_BYTES = 1024
_PACKAGES = ("onnx", "onnxruntime")
_METHODS_KEY = "sklearn_methods"


# -- writing --------------------------------------------------------------------------------------------


def _byte_size(proto: onnx.ModelProto) -> int:
    try:
        return int(proto.ByteSize())
    except Exception:  # a message too large to measure is too large to serialize
        return 2**31


def _write_proto(proto: onnx.ModelProto, directory: Path, save_as_external_data: bool | None) -> None:
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / MODEL_FILE
    size = _byte_size(proto)
    external = size > EXTERNAL_DATA_THRESHOLD if save_as_external_data is None else bool(save_as_external_data)
    if not external and size >= 2**31 - 1:
        raise InvalidArgument(
            f"the ONNX model is {size / 2**30:.1f} GiB, beyond protobuf's 2 GiB limit; "
            "save it with save_as_external_data=True (or None, the default)"
        )
    if not external:
        onnx.save_model(proto, str(target))
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # onnx.save_model moves the weights out of the proto it is given
    onnx.save_model(
        copy,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=EXTERNAL_TENSOR_MIN_BYTES,
        convert_attribute=False,
    )


def _check_model(path: Path) -> None:
    import onnx.checker

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx.checker.ValidationError, or a protobuf error
        raise InvalidArgument(f"the ONNX model is not valid: {type(exc).__name__}: {exc}") from exc


def _materialize(
    proto: onnx.ModelProto,
    onnx_dir: Path,
    *,
    conversion: Conversion | None,
    save_as_external_data: bool | None,
    session_options: dict[str, Any],
    rtol: float,
    atol: float,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Write ``proto`` into ``onnx_dir``, validate it, run the parity check for a conversion.

    Returns:
        The flavor fields describing the files, and the parity report (``None`` without a conversion).
    """
    import onnx

    _write_proto(proto, onnx_dir, save_as_external_data)
    path = onnx_dir / MODEL_FILE
    _check_model(path)
    external = check_external_data(_parse(path, what="the ONNX model"), onnx_dir, what="the ONNX model")
    report = None
    if conversion is not None:
        session = open_session(path, providers=DEFAULT_PROVIDERS, session_options=session_options)
        report = check_parity(session, conversion, rtol=rtol, atol=atol)
        del session
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    fields: dict[str, Any] = {
        "data": f"{ONNX_DIR}/{MODEL_FILE}",
        "onnx_version": onnx.__version__,
        "opset": int(opset) if opset is not None else None,
        "ir_version": int(proto.ir_version),
        "external_data": [f"{ONNX_DIR}/{rel}" for rel in external],
        "converted_from": conversion.source if conversion is not None else None,
    }
    if conversion is not None and conversion.methods:
        fields[_METHODS_KEY] = conversion.methods
    return fields, report


def _prepare(onnx_model: Any, input_example: Any, opset: int | None) -> tuple[onnx.ModelProto, Conversion | None, Any]:
    """(ModelProto, conversion or None, the input example to save) for whatever ``save_model`` got."""
    if source_kind(onnx_model) is not None:
        conversion = convert(onnx_model, input_example, opset=opset)
        return conversion.proto, conversion, conversion.example
    if opset is not None:
        raise InvalidArgument("opset applies to conversions from torch or scikit-learn, not to an ONNX model")
    if isinstance(onnx_model, (str, os.PathLike)):
        path = Path(onnx_model)
        if path.is_dir():
            raise InvalidArgument(f"{path} is a directory; pass the path of a .onnx file or an onnx.ModelProto")
        return read_onnx_file(path), None, input_example
    if type(onnx_model).__name__ == "ModelProto" and _module_root(onnx_model) == "onnx":
        _check_in_memory(onnx_model)
        return onnx_model, None, input_example
    raise InvalidArgument(
        f"cannot save a {type(onnx_model).__name__} as an ONNX model: pass an onnx.ModelProto, a path to a .onnx "
        "file, a torch.nn.Module or a scikit-learn estimator"
    )


# -- save / log -----------------------------------------------------------------------------------------


def save_model(
    onnx_model: Any,
    path: str | os.PathLike[str],
    *,
    input_example: Any = None,
    signature: ModelSignature | Literal[False] | None = None,
    metadata: dict[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    onnx_execution_providers: Sequence[Any] | None = None,
    onnx_session_options: Any = None,
    save_as_external_data: bool | None = None,
    onnx_rtol: float = DEFAULT_RTOL,
    onnx_atol: float = DEFAULT_ATOL,
    opset: int | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Model:
    """Save an ONNX model (or convert a torch module / scikit-learn estimator) to the new directory ``path``.

    Args:
        onnx_model: an ``onnx.ModelProto``, a path to a ``.onnx`` file, a ``torch.nn.Module`` or a
            scikit-learn estimator (the last two are converted; ``input_example`` is then required).
        path: the model directory to create (must not exist or be empty).
        input_example: example input, saved with the model; for a conversion also what the model
            is traced on and what the parity check compares on. A torch example is a tensor, a
            tuple of tensors (positional arguments) or a dict (keyword arguments).
        signature: the signature; ``None`` infers it from the input example and one prediction
            (through onnxruntime), or without an example from the graph's inputs and outputs;
            ``False`` records none.
        metadata: free-form metadata for the MLmodel file; a conversion adds ``onnx_parity``.
        pip_requirements: the packages the model needs (default: onnx and onnxruntime).
        extra_pip_requirements: packages added to the defaults.
        code_paths: local files or directories stored with the model.
        onnx_execution_providers: onnxruntime providers to record (names or ``(name, options)``);
            default ``["CPUExecutionProvider"]``.
        onnx_session_options: a dict or ``onnxruntime.SessionOptions``, recorded and applied at load
            (see :func:`normalize_session_options`). Only settings a load takes from a model file can
            be recorded (see "Trust" in the module docstring); pass others at load time.
        save_as_external_data: ``True`` stores the weights in ``onnx/model.onnx.data``; ``False``
            inside ``model.onnx``; ``None`` (default) uses external data only near the 2 GiB limit.
        onnx_rtol: relative tolerance of the parity check of a conversion.
        onnx_atol: absolute tolerance of the parity check of a conversion.
        opset: the ONNX opset a conversion targets (default: the converter's choice).
        run_id: recorded in the MLmodel file (set by :func:`log_model`).
        artifact_path: recorded in the MLmodel file (set by :func:`log_model`).
        rtol: deprecated name of ``onnx_rtol`` (a ``DeprecationWarning``).
        atol: deprecated name of ``onnx_atol`` (a ``DeprecationWarning``).

    Returns:
        The saved :class:`~cairn.models.Model`.

    Raises:
        OnnxParityError: the converted model differs from the source beyond ``onnx_rtol``/``onnx_atol``;
            nothing is saved.
        InvalidArgument: a malformed ``.onnx`` file, a failed conversion, bad providers or options, or
            options a load would refuse to take from the model file.
        UnsafePath: the ``.onnx`` file's external data lies outside its directory.
        ResourceAlreadyExists: ``path`` exists and is not empty.
    """
    from cairn.models.packaging import save_model_dir

    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):  # before a costly conversion
        raise ResourceAlreadyExists(f"cannot save a model to {target}: it exists and is not an empty directory")
    tolerances = _renamed_tolerances({"onnx_rtol": onnx_rtol, "onnx_atol": onnx_atol, "rtol": rtol, "atol": atol})
    providers, session_options = recordable_settings(onnx_execution_providers, onnx_session_options)
    proto, conversion, example = _prepare(onnx_model, input_example, opset)
    if signature is None and example is None:
        signature = signature_from_graph(proto) or None
    meta = dict(metadata or {})
    packages = list(pip_requirements) if pip_requirements is not None else list(_PACKAGES)
    packages += list(extra_pip_requirements or ())
    flavor_conf: dict[str, Any] = {"providers": providers, "onnx_session_options": session_options, "code": None}
    with tempfile.TemporaryDirectory(prefix="cairn-onnx-") as staging:
        staged = Path(staging) / ONNX_DIR
        fields, report = _materialize(
            proto,
            staged,
            conversion=conversion,
            save_as_external_data=save_as_external_data,
            session_options=session_options,
            rtol=tolerances["onnx_rtol"],
            atol=tolerances["onnx_atol"],
        )
        flavor_conf.update(fields)
        if report is not None:
            meta["onnx_parity"] = report
        pyfunc: list[OnnxPyfunc] = []

        def write_data(directory: Path) -> None:
            shutil.move(str(staged), str(directory / ONNX_DIR))

        def predict_fn(data: Any) -> Any:
            if not pyfunc:
                session = open_session(
                    target / ONNX_DIR / MODEL_FILE, providers=DEFAULT_PROVIDERS, session_options=session_options
                )
                pyfunc.append(OnnxPyfunc(session, methods=fields.get(_METHODS_KEY)))
            return pyfunc[0].predict(data)

        return save_model_dir(
            target,
            flavor_name=FLAVOR_NAME,
            flavor_conf=flavor_conf,
            loader_module=LOADER_MODULE,
            write_data=write_data,
            predict_fn=predict_fn,
            signature=signature,
            input_example=example,
            metadata=meta,
            pip_packages=packages,
            code_paths=code_paths,
            run_id=run_id,
            artifact_path=artifact_path,
        )


class OnnxOptions(OnnxParityOptions, total=False):
    """The ONNX flavor's own options of :func:`save_model` and :func:`log_model`."""

    onnx_execution_providers: Sequence[Any] | None
    onnx_session_options: Any
    save_as_external_data: bool | None
    opset: int | None
    rtol: float | None  # deprecated: onnx_rtol
    atol: float | None  # deprecated: onnx_atol


class OnnxLogOptions(OnnxOptions, CommonLogOptions, total=False):
    """Every option of :func:`log_model`."""


def log_model(onnx_model: Any, name: str | None = None, **options: Unpack[OnnxLogOptions]) -> ModelInfo:
    """Save ``onnx_model`` (see :func:`save_model`) into a run's artifacts at ``name`` (default ``"model"``).

    A failed conversion or parity check raises before anything is uploaded.

    Args:
        onnx_model: an ``onnx.ModelProto``, a ``.onnx`` path, a torch module or a scikit-learn estimator.
        name: the model's artifact path in the run.
        **options: :func:`save_model`'s options, and ``artifact_path`` (MLflow 2's name for ``name``),
            ``registered_model_name`` (also register the model under this name), ``run_id`` (log into
            this run instead of the active one; a run is started if none is active), ``client`` (log into
            and register in this client's store, with ``run_id``).

    Returns:
        The :class:`~cairn.models.ModelInfo` (``model_uri`` is ``runs:/<run_id>/<name>``).
    """
    return log_flavor_model(
        partial(save_model, onnx_model),
        name,
        _renamed_tolerances(dict(options)),
        accepted=OnnxLogOptions.__optional_keys__,
    )


#: deprecated option -> (its name in every flavor, its default)
_RENAMED_TOLERANCES = {"rtol": ("onnx_rtol", DEFAULT_RTOL), "atol": ("onnx_atol", DEFAULT_ATOL)}


def _renamed_tolerances(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the deprecated ``rtol``/``atol`` moved to ``onnx_rtol``/``onnx_atol``, warning at the caller.

    Raises:
        InvalidArgument: both names are given, with different values.
    """
    for old, (new, default) in _RENAMED_TOLERANCES.items():
        value = options.pop(old, None)
        if value is None:
            continue
        warnings.warn(
            f"cairn.onnx: {old}= is deprecated, pass {new}= (the name every flavor uses for the ONNX parity check)",
            DeprecationWarning,
            stacklevel=3,
        )
        if options.get(new, default) not in (default, value):
            raise InvalidArgument(f"{old}={value!r} and {new}={options[new]!r} disagree; pass only {new}")
        options[new] = value
    return options


def add_onnx_flavor(
    model_dir: str | os.PathLike[str],
    model: Model,
    source_model: Any,
    input_example: Any,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    opset: int | None = None,
    providers: Sequence[Any] | None = None,
    session_options: Any = None,
    remove_model_on_failure: bool = True,
) -> Model:
    """Add an ``onnx`` flavor, converted from ``source_model``, to a model directory just saved.

    For flavors' ``also_onnx=True``: call it right after :func:`cairn.models.packaging.save_model_dir`
    returned ``model``. It converts the torch module or scikit-learn estimator, writes
    ``onnx/model.onnx``, checks parity on ``input_example``, adds the ``onnx`` flavor and
    ``metadata.onnx_parity`` to ``model``, adds onnx and onnxruntime to ``requirements.txt``, then
    rewrites ``cairn_files.json`` and, last, ``MLmodel``.

    Args:
        model_dir: the model directory ``save_model_dir`` wrote.
        model: the :class:`Model` it returned; updated in place (and returned).
        source_model: the torch module or scikit-learn estimator that was saved.
        input_example: the example to convert and check on.
        rtol: relative tolerance of the parity check.
        atol: absolute tolerance of the parity check.
        opset: the ONNX opset to target.
        providers: onnxruntime providers to record (default CPU).
        session_options: session options to record (see :func:`normalize_session_options`).
        remove_model_on_failure: on any error remove the whole ``model_dir``, as a failed
            ``save_model_dir`` does, so a failed conversion leaves no model behind (pass ``False``
            to keep an existing model and only undo the ONNX files).

    Raises:
        OnnxParityError: the conversion differs from the source beyond ``rtol``/``atol``.
        InvalidArgument: the conversion failed, or the directory already has an ONNX flavor.
    """
    from cairn.models.hashes import MANIFEST_SHA256_KEY, write_files_manifest
    from cairn.models.model import directory_size
    from cairn.models.requirements import read_requirements, write_requirements

    directory = Path(model_dir)
    onnx_dir = directory / ONNX_DIR
    if FLAVOR_NAME in model.flavors or onnx_dir.exists():
        raise InvalidArgument(f"the model at {directory} already has an ONNX flavor (or an {ONNX_DIR}/ directory)")
    mlmodel = directory / MLMODEL_FILE_NAME
    try:
        recorded, options = recordable_settings(providers, session_options)
        conversion = convert(source_model, input_example, opset=opset)
        fields, report = _materialize(
            conversion.proto,
            onnx_dir,
            conversion=conversion,
            save_as_external_data=None,
            session_options=options,
            rtol=rtol,
            atol=atol,
        )
        try:
            previous = [line for line in read_requirements(directory) if not line.startswith("cairn==")]
        except FileNotFoundError:
            previous = []
        write_requirements(directory, [*previous, *_PACKAGES])
        model.add_flavor(FLAVOR_NAME, providers=recorded, onnx_session_options=options, code=None, **fields)
        assert model.metadata is not None  # Model.__post_init__ sets it
        model.metadata["onnx_parity"] = report
        model.metadata[MANIFEST_SHA256_KEY] = write_files_manifest(directory)
        model.model_size_bytes = directory_size(directory) - (mlmodel.stat().st_size if mlmodel.exists() else 0)
        model.save(mlmodel)
    except BaseException:
        if remove_model_on_failure:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            shutil.rmtree(onnx_dir, ignore_errors=True)
        raise
    return model


# -- load -----------------------------------------------------------------------------------------------


def _flavor_conf(meta: Model, where: object) -> dict[str, Any]:
    conf = meta.flavors.get(FLAVOR_NAME)
    if conf is None:
        raise InvalidArgument(f"the model at {where} has no {FLAVOR_NAME!r} flavor; it has {sorted(meta.flavors)}")
    return conf


def _model_file(model_dir: Path, conf: Mapping[str, Any]) -> Path:
    from cairn.models.loading import model_subpath

    return model_subpath(model_dir, conf.get("data") or f"{ONNX_DIR}/{MODEL_FILE}", "ONNX model file")


def load_model(model_uri: str | os.PathLike[str], *, dst_path: str | os.PathLike[str] | None = None) -> onnx.ModelProto:
    """Load an ONNX model (cairn's or MLflow's) as an ``onnx.ModelProto``, external data included.

    Args:
        model_uri: a local path, ``runs:/``, ``models:/`` or artifact-store URI.
        dst_path: where to download a remote model.

    Raises:
        InvalidArgument: the model has no onnx flavor, or its file is not a valid ONNX model.
        UnsafePath: its external data lies outside the directory of the ``.onnx`` file.
        ModelIntegrityError: a model file does not match its recorded sha256.
    """
    from cairn.models.loading import open_model_dir

    local = open_model_dir(model_uri, dst=dst_path)
    conf = _flavor_conf(local.model, model_uri)
    return read_onnx_file(_model_file(local.path, conf), what=f"the ONNX model at {model_uri}")


def _setting(
    name: str, caller: Mapping[str, Any], recorded_config: Mapping[str, Any], conf: Mapping[str, Any]
) -> tuple[Any, bool]:
    """The provider or session-option setting to use, and whether it comes from the model's files.

    ``caller`` is the ``model_config`` the loader got, which holds the ``python_function`` entry's
    ``config`` from the MLmodel file overridden by the caller's: a value equal to the recorded one
    counts as the file's.
    """
    value = caller.get(name)
    if value is None:
        return conf.get(name), True
    return value, name in recorded_config and recorded_config[name] == value


def _pyfunc_from_dir(
    model_dir: Path,
    meta: Model,
    model_config: Mapping[str, Any] | None,
    *,
    recorded_config: Mapping[str, Any] | None = None,
) -> OnnxPyfunc:
    """The pyfunc on ``model_dir``; providers and session options from the model's files (its onnx
    flavor entry, or ``recorded_config``: the ``python_function`` entry's ``config``) must pass the
    allow-list of :func:`settings_from_model_file`, the caller's own apply as given."""
    conf = _flavor_conf(meta, model_dir)
    config = dict(model_config or {})
    unknown = set(config) - {"providers", "onnx_session_options"}
    if unknown:
        raise InvalidArgument(
            f"unknown ONNX model_config key(s) {sorted(unknown)}; use providers and onnx_session_options"
        )
    recorded = dict(recorded_config or {})
    providers, providers_from_file = _setting("providers", config, recorded, conf)
    options, options_from_file = _setting("onnx_session_options", config, recorded, conf)
    providers, options = settings_from_model_file(
        providers,
        options,
        check_providers=providers_from_file,
        check_options=options_from_file,
        what=f"the ONNX model at {model_dir}",
    )
    session = open_session(_model_file(model_dir, conf), providers=providers, session_options=options)
    return OnnxPyfunc(session, methods=conf.get(_METHODS_KEY))


def load_pyfunc(
    model_uri: str | os.PathLike[str],
    *,
    providers: Sequence[Any] | None = None,
    session_options: Any = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> PyFuncModel:
    """Load a model's ``onnx`` flavor as a :class:`~cairn.models.loading.PyFuncModel` running onnxruntime.

    Unlike ``cairn.pyfunc.load_model``, this uses the onnx flavor even when the model's
    ``python_function`` belongs to another flavor (a torch or scikit-learn model logged with
    ``also_onnx=True``); the model's signature is enforced as usual.

    Args:
        model_uri: a local path, ``runs:/``, ``models:/`` or artifact-store URI.
        providers: onnxruntime providers to use instead of the recorded ones.
        session_options: session options to use instead of the recorded ones.
        dst_path: where to download a remote model.
    """
    from cairn.models.loading import PyFuncModel, open_model_dir

    local = open_model_dir(model_uri, dst=dst_path)
    config = {"providers": providers, "onnx_session_options": session_options}
    impl = _pyfunc_from_dir(local.path, local.model, {k: v for k, v in config.items() if v is not None})
    return PyFuncModel(local.model, impl, loader_module=LOADER_MODULE, model_dir=local.path)


def _model_dir_of(data_path: Path) -> Path:
    if data_path.is_dir():
        return data_path
    for parent in (data_path.parent, data_path.parent.parent):
        if (parent / MLMODEL_FILE_NAME).is_file():
            return parent
    raise InvalidArgument(f"no {MLMODEL_FILE_NAME} file next to or above {data_path}")


def _load_pyfunc(data_path: str | os.PathLike[str], model_config: dict[str, Any] | None = None) -> OnnxPyfunc:
    """MLflow's pyfunc loader hook: ``data_path`` is the model directory (or its ``.onnx`` file).

    ``model_config`` may override ``providers`` and ``onnx_session_options``.
    """
    from cairn.models.hashes import verify_model_files

    model_dir = _model_dir_of(Path(data_path))
    meta = Model.load(model_dir)
    verify_model_files(model_dir, meta)
    pyfunc_conf = meta.flavors.get("python_function") or {}
    recorded = pyfunc_conf.get("config") if isinstance(pyfunc_conf, Mapping) else None
    return _pyfunc_from_dir(
        model_dir, meta, model_config, recorded_config=recorded if isinstance(recorded, Mapping) else None
    )
