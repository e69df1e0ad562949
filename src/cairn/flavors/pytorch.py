"""The PyTorch flavor: ``nn.Module`` weights always as safetensors, the architecture without pickle when possible.

Layout of a model directory (MLflow's flavor keys plus cairn's)::

    MLmodel            pytorch: {model_data: data, pytorch_version, architecture, weights, weights_index,
                                 module_class | model_factory + init_kwargs + imports | exported_program | skeleton}
                       python_function: {loader_module: cairn.flavors.pytorch, data: data, ...}
    data/model.safetensors   every parameter and buffer (tied ones once; see cairn.flavors._torch_utils)
    data/weights.json        the slots: parameter/buffer, requires_grad, persistence, aliases (ties)
    data/model.pt2           architecture "export": the torch.export program, weights stripped
    data/skeleton.pkl        architecture "skeleton": the module cloudpickled with its tensors on "meta"
    data/extra_state.*       modules' get_extra_state(), if any (safetensors + JSON, no pickle)

How the architecture is stored, in order of preference:

1. ``"class"`` / ``"factory"``: an importable ``module_class="pkg.mod:Class"`` or
   ``model_factory="pkg.mod:function"`` plus JSON ``init_kwargs``. Loading finds ``pkg.mod`` (see
   "Trust" below), builds the module on the ``meta`` device and assigns the weights.
   Without either argument the model's own class is used when it is importable by name and either
   ``init_kwargs`` were given or it builds with no arguments into the same parameter shapes.
2. ``"export"``: a ``torch.export`` program traced from the input example. torch's own loader can
   run code from a crafted file, so cairn checks the archive first (see
   :mod:`cairn.flavors._torch_export`).
3. ``"skeleton"``: the module cloudpickled without its weights. Loading it unpickles, so it needs
   ``allow_pickle=True`` (or ``CAIRN_ALLOW_PICKLE=1``).

Trust: the MLmodel file is hostile input, and it names a callable and the keyword arguments to call it
with. So, checked before anything is called or imported (:func:`cairn.flavors._torch_utils.import_target`):

- a ``module_class`` must be a ``torch.nn.Module`` subclass (looked up without running code);
- a typed constructor argument (``{"__dataclass__": "pkg.mod:Config", "fields": {...}}``, how a config
  dataclass such as nanoGPT's ``GPTConfig`` is recorded) is rebuilt only if ``Config`` is a dataclass
  defined in ``pkg.mod`` itself, the module of the class or factory, under the same rule as the class;
- a ``model_factory`` must be a plain function defined in its module, and is called only if the caller
  trusts that module: ``load_model(uri, trusted_modules=("pkg",))``, a
  ``with cairn.safety.trusted_modules(("pkg",)):`` block (for ``cairn.pyfunc.load_model``) or
  ``CAIRN_TRUSTED_MODULES=pkg``. No function is trusted for being well known: ``sympy.sympify`` and
  ``torch.load`` are plain functions that run code given the right string;
- importing runs code too, so ``pkg.mod`` is imported only if it is already imported in the process or
  the caller trusts it the same way; the model's ``code`` directory (``code_paths``) goes on ``sys.path``
  only when the caller trusts modules or opts in to pickle;
- the pickle opt-in (``allow_pickle=True`` / ``CAIRN_ALLOW_PICKLE=1``) trusts the whole file.

A model saved with ``model_factory`` therefore loads with ``trusted_modules`` naming the factory's
module (the refusal says so); a model whose class lives in a package the process has not imported
yet loads with ``trusted_modules`` naming that package.

Kinds 1 and 2 load without any pickle. Models written by ``mlflow.pytorch`` load too: ``data/model.pth``
(a whole pickled module) only with the pickle opt-in, ``data/model.pt2`` after the same archive check.

Pyfunc: ``predict`` takes a tensor, numpy array, pandas DataFrame or a dict of them (keyword
arguments), runs the module in eval mode under ``torch.inference_mode`` and returns numpy (a dict
of numpy arrays for several outputs, ``None`` outputs left out). ``params={"device": "cuda:0"}`` moves
the module first; the ``device`` param is declared in every signature cairn writes.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

import torch
from torch import nn

from cairn import safety
from cairn.errors import ArtifactNotFound, InvalidArgument, UnsafeModel
from cairn.flavors import _torch_export, _torch_loading, _torch_utils
from cairn.flavors._torch_layout import (
    ARCHITECTURES,
    DATA_DIR,
    DEVICE_PARAM,
    EXTRA_STATE_NAME,
    FLAVOR_NAME,
    INDEX_FILE,
    LOADER_MODULE,
    MLFLOW_STATE_DICT_FILE,
    PROGRAM_FILE,
    SKELETON_FILE,
    STATE_DICT_NAME,
    WEIGHTS_FILE,
)
from cairn.flavors._torch_pyfunc import TorchPyfunc
from cairn.models.flavor import AlsoOnnxOptions, CommonLogOptions, log_flavor_model
from cairn.models.model import Model, ModelInfo
from cairn.models.schema import ModelSignature, ParamSchema, ParamSpec, Schema, TensorSpec

__all__ = [
    "ARCHITECTURES",
    "FLAVOR_NAME",
    "STATE_DICT_NAME",
    "PyTorchLogOptions",
    "PyTorchOptions",
    "TorchArchitectureOptions",
    "load_model",
    "load_state_dict",
    "log_model",
    "log_state_dict",
    "save_model",
    "save_state_dict",
]


# -- choosing how to store the architecture ---------------------------------------------------------------


@dataclass
class _Architecture:
    kind: str
    target: str | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    program: Any = None  # torch.export.ExportedProgram for "export"

    def flavor_entries(self) -> dict[str, Any]:
        entries: dict[str, Any] = {"architecture": self.kind}
        if self.kind in ("class", "factory"):
            entries["module_class" if self.kind == "class" else "model_factory"] = self.target
            entries["init_kwargs"] = self.init_kwargs
            entries["imports"] = [str(self.target).split(":")[0]]
        elif self.kind == "export":
            entries["exported_program"] = f"{DATA_DIR}/{PROGRAM_FILE}"
        else:
            entries["skeleton"] = f"{DATA_DIR}/{SKELETON_FILE}"
        return entries


def _check_kwargs(init_kwargs: Mapping[str, Any] | None, what: str) -> None:
    if init_kwargs is not None and (
        not isinstance(init_kwargs, Mapping) or not all(isinstance(k, str) for k in init_kwargs)
    ):
        raise InvalidArgument(f"{what} must be a dict with string keys, got {type(init_kwargs).__name__}")


def _json_kwargs(init_kwargs: Mapping[str, Any] | None, what: str, owner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the JSON recorded in the MLmodel file, the arguments as a load rebuilds them from it).

    Dataclass arguments defined in ``owner`` (the module of the class or factory) are recorded typed
    (:func:`cairn.flavors._torch_utils.encode_arguments`); the second value is decoded from the JSON,
    so the save-time rebuild check uses exactly what the load will.
    """
    _check_kwargs(init_kwargs, what)
    if init_kwargs is None:
        return {}, {}
    encoded = _torch_utils.encode_arguments(dict(init_kwargs), owner, where=what)
    try:
        recorded = dict(json.loads(json.dumps(encoded, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be JSON-serializable (they go into the MLmodel file): {exc}") from None
    return recorded, _torch_utils.decode_arguments(recorded, owner, where=what)


def _name_of(value: str | Callable[..., Any], what: str) -> str:
    if isinstance(value, str):
        return value
    name = _torch_utils.target_name(value)
    if name is None:
        raise InvalidArgument(
            f"{what} {getattr(value, '__qualname__', value)!r} cannot be imported by name (it is defined in "
            "__main__ or inside a function); move it to a module, or pass 'package.module:Name'"
        )
    return name


def _built_from(build: Callable[[], Any], index: _torch_utils.WeightsIndex) -> str | None:
    """Why the module ``build`` makes does not match the saved slots, or ``None`` if it does.

    Built on ``meta`` (no memory, no initialisation); on the CPU if the constructor cannot run on
    ``meta``, as :func:`_construct` does at load time.
    """
    try:
        module = _torch_utils.build_on_meta(build)
    except Exception:  # e.g. a constructor that reads tensor values; the load falls back the same way
        module = build()
    if not isinstance(module, nn.Module):
        return f"it returned a {type(module).__name__}, not a torch.nn.Module"
    return _torch_utils.structure_mismatch(module, index)


def _explicit_architecture(
    model: nn.Module,
    index: _torch_utils.WeightsIndex,
    module_class: str | type | None,
    model_factory: str | Callable[..., Any] | None,
    init_kwargs: Mapping[str, Any] | None,
) -> _Architecture:
    if module_class is not None:
        name = _name_of(module_class, "module_class")
        cls = _torch_utils.import_target(name, kind="class", caller_named=True)
        if not isinstance(model, cls):
            raise InvalidArgument(f"module_class {name!r} does not match the model, a {type(model).__qualname__}")
        recorded, kwargs = _json_kwargs(init_kwargs, "init_kwargs", name.split(":")[0])
        kind, target, build = "class", name, lambda: cls(**kwargs)
    else:
        assert model_factory is not None
        name = _name_of(model_factory, "model_factory")
        factory = _torch_utils.import_target(name, kind="factory", caller_named=True)
        recorded, kwargs = _json_kwargs(init_kwargs, "init_kwargs", name.split(":")[0])
        kind, target, build = "factory", name, lambda: factory(**kwargs)
    try:
        problem = _built_from(build, index)
    except Exception as exc:
        raise InvalidArgument(f"{target}(**init_kwargs) failed: {type(exc).__name__}: {exc}") from exc
    if problem is not None:
        raise InvalidArgument(f"{target}(**init_kwargs) does not rebuild this model: {problem}")
    return _Architecture(kind, target, recorded)


def _lightning_hparams(model: nn.Module, owner: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    hparams = getattr(model, "hparams", None)
    if not isinstance(hparams, Mapping) or not hparams:
        return None
    try:
        return _json_kwargs(dict(hparams), "hparams", owner)
    except (InvalidArgument, UnsafeModel):
        return None


def _importable_class(model: nn.Module, index: _torch_utils.WeightsIndex, init_kwargs: Mapping[str, Any] | None) -> Any:
    """The model's own class as architecture, if importable and rebuildable; else ``None``."""
    name = _torch_utils.target_name(type(model))
    if name is None:
        return None
    try:
        cls = _torch_utils.import_target(name, kind="class", caller_named=True)
    except (UnsafeModel, InvalidArgument, ImportError):
        return None
    owner = name.split(":")[0]
    if init_kwargs is not None:  # the caller's own arguments: a bad one is an error, not a probe
        candidates = [_json_kwargs(init_kwargs, "init_kwargs", owner)]
    else:
        candidates = [c for c in (_lightning_hparams(model, owner), ({}, {})) if c is not None]
    for recorded, candidate in candidates:

        def build(kwargs: dict[str, Any] = candidate) -> Any:
            return cls(**kwargs)

        try:
            problem = _built_from(build, index)
        except Exception:  # a probe: any constructor failure means "not rebuildable this way"
            continue
        if problem is None:
            return _Architecture("class", name, recorded)
    return None


def _choose_architecture(
    model: nn.Module,
    index: _torch_utils.WeightsIndex,
    *,
    module_class: str | type | None,
    model_factory: str | Callable[..., Any] | None,
    init_kwargs: Mapping[str, Any] | None,
    export: bool | None,
    example: Any,
    allow_pickle_skeleton: bool,
) -> _Architecture:
    if module_class is not None and model_factory is not None:
        raise InvalidArgument("pass module_class or model_factory, not both")
    _check_kwargs(init_kwargs, "init_kwargs")
    if module_class is not None or model_factory is not None:
        if export:
            raise InvalidArgument("export=True and module_class/model_factory are exclusive; choose one")
        return _explicit_architecture(model, index, module_class, model_factory, init_kwargs)
    if export is None or export is False:
        found = _importable_class(model, index, init_kwargs)
        if found is not None:
            return found
    if export is not False and example is not None:
        try:
            return _Architecture("export", program=_torch_export.export_module(model, example))
        except InvalidArgument as exc:
            if export:
                raise
            reason = f"torch.export failed ({exc})"
    elif export:
        raise InvalidArgument("export=True needs an input_example to trace the module with")
    else:
        reason = "no input_example was given for torch.export"
    if not allow_pickle_skeleton:
        raise InvalidArgument(
            f"cannot store the architecture of {type(model).__qualname__} without pickle: its class is not "
            f"importable by name or does not rebuild from init_kwargs, and {reason}. Pass "
            "module_class='pkg.mod:Class' with init_kwargs, model_factory='pkg.mod:function', or an input_example; "
            "or allow_pickle_skeleton=True (loading then needs allow_pickle=True)"
        )
    warnings.warn(
        f"storing the architecture of {type(model).__qualname__} as a cloudpickled skeleton ({reason}); loading "
        "it will need allow_pickle=True. Pass module_class=/model_factory= or an input_example to avoid pickle.",
        UserWarning,
        stacklevel=4,
    )
    return _Architecture("skeleton")


# -- pickled skeleton ---------------------------------------------------------------------------------------


def _write_skeleton(model: nn.Module, path: Path) -> None:
    """Cloudpickle ``model`` with every parameter and buffer replaced by a ``meta`` stand-in (no data)."""
    import cloudpickle

    stored = {id(tensor) for _n, _m, _l, _k, tensor in _torch_utils.slots_of(model)}

    class SkeletonPickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, torch.Tensor) and id(obj) in stored:
                args = (list(obj.shape), str(obj.dtype).removeprefix("torch."), isinstance(obj, nn.Parameter))
                return _torch_utils.meta_stub, (*args, bool(obj.requires_grad))
            return super().reducer_override(obj)

    with open(path, "wb") as out:
        try:
            SkeletonPickler(out, protocol=pickle.DEFAULT_PROTOCOL).dump(model)
        except Exception as exc:
            raise InvalidArgument(f"cannot cloudpickle the structure of {type(model).__qualname__}: {exc}") from exc


def _with_dims(schema: Schema | None, shapes: dict[str | None, list[int] | None] | None) -> Schema | None:
    if schema is None or shapes is None or not schema.is_tensor_spec():
        return schema
    specs: list[Any] = []
    for spec in schema.inputs:
        assert isinstance(spec, TensorSpec)
        shape = shapes.get(spec.name)
        if shape is None or len(shape) != len(spec.shape):
            return schema
        specs.append(TensorSpec(spec.dtype, shape, spec.name))
    return Schema(specs)


def _program_dims(signature: ModelSignature, program: Any) -> ModelSignature:
    """The inferred signature with each tensor's shape as the exported program has it: ``-1`` where dynamic."""
    inputs, outputs = _torch_export.program_shapes(program)
    return ModelSignature(
        _with_dims(signature.inputs, inputs), _with_dims(signature.outputs, outputs), signature.params
    )


def _with_device_param(signature: ModelSignature | None) -> ModelSignature:
    spec = ParamSpec(DEVICE_PARAM, "string", "cpu")
    if signature is None:
        return ModelSignature(params=ParamSchema([spec]))
    params = list(signature.params.params) if signature.params is not None else []
    if any(p.name == DEVICE_PARAM for p in params):
        return signature
    return ModelSignature(signature.inputs, signature.outputs, ParamSchema([*params, spec]))


# -- save / log ----------------------------------------------------------------------------------------------


def _requirements(
    kind: str, pip_requirements: Sequence[str] | None, extra_pip_requirements: Sequence[str] | None
) -> list[str]:
    if pip_requirements is not None and isinstance(pip_requirements, (str, os.PathLike)):
        raise InvalidArgument("pip_requirements must be a list of requirement strings")
    if pip_requirements is not None:
        base = list(pip_requirements)
    else:
        base = ["torch", "safetensors"] + (["cloudpickle"] if kind == "skeleton" else [])
    return base + list(extra_pip_requirements or ())


def _extra_states(model: nn.Module) -> dict[str, Any]:
    """``get_extra_state()`` of every submodule that overrides it, by module name."""
    return {
        prefix: module.get_extra_state()
        for prefix, module in model.named_modules()
        if type(module).get_extra_state is not nn.Module.get_extra_state
    }


def save_model(
    pytorch_model: nn.Module,
    path: str | os.PathLike[str],
    *,
    module_class: str | type | None = None,
    model_factory: str | Callable[..., Any] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
    export: bool | None = None,
    signature: ModelSignature | Literal[False] | None = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    allow_pickle_skeleton: bool = True,
    run_id: str | None = None,
    artifact_path: str | None = None,
    also_onnx: bool = False,
    onnx_rtol: float = 1e-3,
    onnx_atol: float = 1e-5,
) -> Model:
    """Save an ``nn.Module`` as a model directory at ``path`` (see the module docstring for the layout).

    Args:
        pytorch_model: the module; its tensors may live on any device but not on ``meta``.
        path: the new model directory; must not exist or be empty.
        module_class: the class to rebuild the module with, as ``"pkg.mod:Class"`` or the class itself.
        model_factory: a function returning the module, as ``"pkg.mod:function"`` or the function itself.
            Loading calls it only if the caller trusts its module (``trusted_modules=("pkg",)``).
        init_kwargs: JSON-serializable keyword arguments for ``module_class``/``model_factory`` (or for
            the model's own class when neither is given). A dataclass instance (a config object such as
            nanoGPT's ``GPTConfig``) defined in the same module as the class or factory is recorded as
            ``{"__dataclass__": "pkg.mod:Config", "fields": {...}}`` and rebuilt at load; a dataclass
            from any other module is refused (loading rebuilds only the model module's own dataclasses).
        export: ``True`` stores a ``torch.export`` program (needs ``input_example``), ``False`` never
            does, ``None`` (default) does when the class cannot be used and an input example is given.
            The program is traced in eval mode without global module hooks or cairn's (autolog's) hooks,
            with every input dimension dynamic unless the model fixes it; an inferred signature records
            ``-1`` for each dynamic dimension.
        signature: the signature; ``None`` infers it from ``input_example`` (one forward pass),
            ``False`` records none. A ``device`` param is added to any recorded signature.
        input_example: example input (tensor, numpy array, DataFrame or dict of them), saved with the model.
        metadata: free-form metadata for the MLmodel file.
        pip_requirements: replaces the default requirements (torch, safetensors[, cloudpickle]).
        extra_pip_requirements: added to the defaults.
        code_paths: files or directories saved under ``code/`` and importable at load time (e.g. the
            package defining ``module_class``).
        allow_pickle_skeleton: fall back to a cloudpickled skeleton when nothing else works; with
            ``False`` that case raises instead.
        run_id: recorded in the MLmodel file (set by :func:`log_model`).
        artifact_path: recorded in the MLmodel file (set by :func:`log_model`).
        also_onnx: also export to ONNX (``torch.onnx.export``, dynamic batch axis) into the same model
            directory as an ``onnx`` flavor; needs ``input_example``. Both models run on the example and
            a difference beyond ``onnx_rtol``/``onnx_atol`` fails the save (nothing is kept).

    Returns:
        The :class:`~cairn.models.Model` written.

    Raises:
        InvalidArgument: a tensor is on ``meta`` (or otherwise not storable), ``module_class``/
            ``model_factory`` cannot be imported or do not rebuild the model, ``init_kwargs`` are not
            JSON, ``export=True`` fails, or no pickle-free architecture exists and
            ``allow_pickle_skeleton`` is off.
        UnsafeModel: ``module_class`` is not a ``torch.nn.Module`` subclass, or ``model_factory`` not a plain
            function defined in the module it is named by.
        ResourceAlreadyExists: ``path`` exists and is not empty.
    """
    from cairn.models import hashes
    from cairn.models.packaging import _split_example, infer_signature_from_example, save_model_dir

    if not isinstance(pytorch_model, nn.Module):
        raise InvalidArgument(f"pytorch_model must be a torch.nn.Module, got {type(pytorch_model).__name__}")
    index = _torch_utils.collect_weights(pytorch_model)
    digest = _torch_utils.WeightsDigest(index.tensors)  # hashing overlaps everything up to the write
    example_data = _split_example(input_example)[0] if input_example is not None else None
    architecture = _choose_architecture(
        pytorch_model,
        index,
        module_class=module_class,
        model_factory=model_factory,
        init_kwargs=init_kwargs,
        export=export,
        example=example_data,
        allow_pickle_skeleton=allow_pickle_skeleton,
    )
    extra_states = _extra_states(pytorch_model)
    if signature is None and input_example is not None:
        # The caller's train/eval flags come back afterwards; autolog's hooks do not see this forward pass.
        with _torch_utils.as_written(pytorch_model), _torch_utils.eval_mode(pytorch_model):
            signature = infer_signature_from_example(input_example, TorchPyfunc(pytorch_model).predict)
        if architecture.kind == "export" and signature is not None:
            signature = _program_dims(signature, architecture.program)
    if signature is not False:
        signature = _with_device_param(signature)

    flavor_conf: dict[str, Any] = {
        "model_data": DATA_DIR,
        "pytorch_version": str(torch.__version__),
        "weights": f"{DATA_DIR}/{WEIGHTS_FILE}",
        "weights_index": f"{DATA_DIR}/{INDEX_FILE}",
        "code": None,
        **architecture.flavor_entries(),
    }

    def write_data(directory: Path) -> None:
        data = directory / DATA_DIR
        data.mkdir()
        sha256 = _torch_utils.write_weights(
            index.tensors,
            data / WEIGHTS_FILE,
            file_sha256=hashes.file_sha256,
            digest=digest,
        )
        hashes.remember_file_sha256(data / WEIGHTS_FILE, sha256)  # the manifest need not read it again
        (data / INDEX_FILE).write_text(json.dumps(index.to_json(WEIGHTS_FILE), indent=1), encoding="utf-8")
        if extra_states:
            from cairn.checkpoint.state_tree import save_state_tree

            save_state_tree(extra_states, data, name=EXTRA_STATE_NAME)
            flavor_conf["extra_state"] = f"{DATA_DIR}/{EXTRA_STATE_NAME}"
        if architecture.kind == "export":
            names = {slot.name for slot in index.slots}
            _torch_export.save_program(architecture.program, data / PROGRAM_FILE, names)
        elif architecture.kind == "skeleton":
            _write_skeleton(pytorch_model, data / SKELETON_FILE)

    model = save_model_dir(
        path,
        flavor_name=FLAVOR_NAME,
        flavor_conf=flavor_conf,
        loader_module=LOADER_MODULE,
        write_data=write_data,
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        pip_packages=_requirements(architecture.kind, pip_requirements, extra_pip_requirements),
        code_paths=code_paths,
        pyfunc_conf={"data": DATA_DIR},
        run_id=run_id,
        artifact_path=artifact_path,
    )
    if also_onnx:  # an ONNX export of the same module, checked against it on the input example
        from cairn.flavors.onnx import add_onnx_flavor

        add_onnx_flavor(Path(path), model, pytorch_model, input_example, rtol=onnx_rtol, atol=onnx_atol)
    return model


class TorchArchitectureOptions(TypedDict, total=False):
    """How the architecture of a module is stored (PyTorch and Lightning; see :func:`save_model`)."""

    init_kwargs: Mapping[str, Any] | None
    export: bool | None
    allow_pickle_skeleton: bool


class PyTorchOptions(TorchArchitectureOptions, AlsoOnnxOptions, total=False):
    """The PyTorch flavor's own options of :func:`save_model` and :func:`log_model`."""

    module_class: str | type | None
    model_factory: str | Callable[..., Any] | None


class PyTorchLogOptions(PyTorchOptions, CommonLogOptions, total=False):
    """Every option of :func:`log_model`."""


def log_model(pytorch_model: nn.Module, name: str | None = None, **options: Unpack[PyTorchLogOptions]) -> ModelInfo:
    """Save ``pytorch_model`` (see :func:`save_model`) into a run's artifacts at ``name`` (default ``"model"``).

    Args:
        pytorch_model: the module.
        name: the model's artifact path in the run.
        **options: :func:`save_model`'s options, and ``artifact_path`` (MLflow 2's name for ``name``),
            ``registered_model_name`` (also register the model under this name), ``run_id`` (log into
            this run instead of the active one; a run is started if none is active), ``client`` (log into
            and register in this client's store, with ``run_id``).

    Returns:
        The :class:`~cairn.models.ModelInfo` (``model_uri`` is ``runs:/<run_id>/<name>``).
    """
    return log_flavor_model(
        partial(save_model, pytorch_model), name, options, accepted=PyTorchLogOptions.__optional_keys__
    )


# -- load ---------------------------------------------------------------------------------------------------


def load_model(
    model_uri: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    trusted_modules: Sequence[str] = (),
    map_location: str | torch.device = "cpu",
    device: str | torch.device | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Load a PyTorch model (cairn's or MLflow's) as an ``nn.Module`` in eval mode.

    The weights are memory-mapped from the safetensors file (copy-on-write: changing them never
    changes the file).

    What the model file may make cairn run (see the module docstring, "Trust"): a ``module_class``
    must be a ``torch.nn.Module`` subclass; a ``model_factory`` is called only if its module is in
    ``trusted_modules``; a module not imported yet is imported only if it is in ``trusted_modules``;
    the model's ``code`` directory goes on ``sys.path`` only with ``trusted_modules`` or the pickle
    opt-in. ``allow_pickle=True`` trusts the whole file.

    Args:
        model_uri: a local path, ``runs:/``, ``models:/`` or artifact-store URI.
        allow_pickle: allow unpickling (a ``"skeleton"`` model, MLflow's ``model.pth``), trust exported
            programs without checking them and trust every module the file names; also ``CAIRN_ALLOW_PICKLE=1``.
        trusted_modules: packages or modules (``"mypkg"`` covers ``mypkg.models``) the model file may make
            cairn import and whose functions may serve as ``model_factory``. Also through
            :func:`cairn.safety.trusted_modules` blocks (the way to reach ``cairn.pyfunc.load_model``)
            and ``CAIRN_TRUSTED_MODULES=mypkg,otherpkg``.
        map_location: the device the weights are loaded onto.
        device: MLflow's name; overrides ``map_location`` when given.
        dst_path: where to download a remote model.

    Raises:
        UnsafeModel: the model needs unpickling without the opt-in (the message says how to opt in),
            names a module or factory the caller did not trust or a class that is not a
            ``torch.nn.Module`` (the message names it and how to allow it), or its exported program
            fails the safety check.
        InvalidArgument: a ``trusted_modules`` entry is not a module name.
        StateMismatch: the rebuilt module's parameters differ from the saved ones (names listed).
        ModelIntegrityError: a model file does not match its recorded sha256.
    """
    from cairn.models.loading import add_code_to_path, open_model_dir

    target = str(torch.device(device if device is not None else map_location))
    with safety.trusted_modules(trusted_modules), safety.pickle_opt_in(allow_pickle):
        local = open_model_dir(model_uri, dst=dst_path)
        conf = local.model.flavors.get(FLAVOR_NAME) or {}
        if trusted_modules or safety.pickle_allowed(allow_pickle):  # the code there is imported only if trusted
            code = conf.get("code") or (local.model.flavors.get("python_function") or {}).get("code")
            add_code_to_path(local.path, code)
        return _torch_loading.load_from_dir(local.path, local.model, allow_pickle=allow_pickle, device=target)


def _load_pyfunc(data_path: str | os.PathLike[str], model_config: dict[str, Any] | None = None) -> TorchPyfunc:
    """The pyfunc entry point the MLmodel's loader_module names (:func:`._torch_loading.load_pyfunc`)."""
    return _torch_loading.load_pyfunc(data_path, model_config)


# -- state dicts -------------------------------------------------------------------------------------------


def save_state_dict(state_dict: Any, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``state_dict`` (nested dicts/lists of tensors and scalars) to the directory ``path``, without pickle.

    Files: ``state_dict.safetensors`` and ``state_dict.json``. Returns the paths written.
    """
    from cairn.checkpoint.state_tree import save_state_tree

    return save_state_tree(state_dict, path, name=STATE_DICT_NAME)


def log_state_dict(state_dict: Any, artifact_path: str, *, run_id: str | None = None) -> None:
    """Log a state dict (a module's, an optimizer's, or any nested dict of tensors and scalars) to a run.

    MLflow's ``mlflow.pytorch.log_state_dict``, stored as safetensors + JSON instead of a pickle:
    the run's ``<artifact_path>/state_dict.safetensors`` and ``state_dict.json``. The run is
    ``run_id``, else the active run, else a new one.

    Raises:
        InvalidArgument: a value cannot be stored (the message names its path in the dict).
    """
    from cairn.artifacts.paths import safe_relpath
    from cairn.tracking import fluent
    from cairn.tracking.client import Client

    if not isinstance(artifact_path, str) or not safe_relpath(artifact_path):
        raise InvalidArgument(f"artifact_path must be a non-empty relative path, got {artifact_path!r}")
    client = Client()
    run = run_id if run_id is not None else fluent._active_run_id()
    with tempfile.TemporaryDirectory(prefix="cairn-state-dict-") as tmp:
        save_state_dict(state_dict, tmp)
        client.artifact_store(run).put_dir(tmp, safe_relpath(artifact_path))


def load_state_dict(
    state_dict_uri: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    allow_pickle: bool = False,
    dst_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a state dict logged by :func:`log_state_dict` (or MLflow's, with the pickle opt-in).

    Args:
        state_dict_uri: ``runs:/<run_id>/<artifact_path>``, a local directory, or an artifact-store URI.
        map_location: where the tensors land.
        allow_pickle: allow reading MLflow's pickled ``state_dict.pth`` (or ``CAIRN_ALLOW_PICKLE=1``).
        dst_path: where to download a remote state dict.

    Raises:
        ArtifactNotFound: nothing at the URI, or no state dict in it.
        UnsafeModel: only MLflow's pickled ``state_dict.pth`` is there and pickle is not allowed.
        CheckpointCorrupt: the files are unreadable or disagree.
    """
    from cairn.checkpoint.state_tree import load_state_tree, tree_files
    from cairn.models.loading import resolve_local_model_dir

    directory = resolve_local_model_dir(state_dict_uri, dst_path)
    if directory.is_file():
        directory = directory.parent
    tensors_file, structure_file = tree_files(directory, STATE_DICT_NAME)
    if structure_file.is_file():
        return load_state_tree(directory, name=STATE_DICT_NAME, map_location=map_location)
    pickled = directory / MLFLOW_STATE_DICT_FILE
    if pickled.is_file():
        safety.require_pickle_opt_in(f"the state dict {MLFLOW_STATE_DICT_FILE} written by MLflow", allow_pickle)
        return torch.load(str(pickled), map_location=map_location, weights_only=False)  # opt-in checked above
    raise ArtifactNotFound(
        f"no state dict at {state_dict_uri}: expected {structure_file.name} and {tensors_file.name} "
        f"(or MLflow's {MLFLOW_STATE_DICT_FILE}) in {directory}"
    )
