"""Loading a PyTorch flavor directory into an ``nn.Module``: cairn's layout (no pickle by default) and MLflow's."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cairn import safety
from cairn.errors import ArtifactNotFound, InvalidArgument, ModelIntegrityError
from cairn.flavors import _torch_export, _torch_utils
from cairn.flavors._torch_layout import (
    ARCHITECTURES,
    DATA_DIR,
    DEVICE_PARAM,
    FLAVOR_NAME,
    INDEX_FILE,
    MLFLOW_PICKLE_FILE,
    PROGRAM_FILE,
    SKELETON_FILE,
    WEIGHTS_FILE,
)
from cairn.flavors._torch_pyfunc import TorchPyfunc, set_eval
from cairn.models.model import Model


def _construct(build: Callable[[], Any], target: str) -> nn.Module:
    """``build()`` on the ``meta`` device, or on the CPU if that fails."""
    try:
        module = _torch_utils.build_on_meta(build)
    except Exception:  # constructors that compute on tensors cannot run on meta; build for real instead
        module = build()
    if not isinstance(module, nn.Module):
        raise InvalidArgument(f"{target} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _read_weights(index_rel: Any, weights_rel: Any, model_dir: Path, device: str) -> tuple[Any, Any]:
    import safetensors.torch

    from cairn.models.loading import model_subpath

    index = _torch_utils.read_index(model_subpath(model_dir, index_rel or f"{DATA_DIR}/{INDEX_FILE}", "weights index"))
    weights = model_subpath(model_dir, weights_rel or f"{DATA_DIR}/{WEIGHTS_FILE}", "weights file")
    return index, safetensors.torch.load_file(str(weights), device=device)


def _load_cairn(model_dir: Path, conf: dict[str, Any], *, allow_pickle: bool | None, device: str) -> nn.Module:
    from cairn.models.loading import model_subpath

    kind = conf.get("architecture")
    where = str(model_dir)
    index, tensors = _read_weights(conf.get("weights_index"), conf.get("weights"), model_dir, device)
    strict = True
    if kind in ("class", "factory"):
        target = conf.get("module_class" if kind == "class" else "model_factory")
        obj = _torch_utils.import_target(target, kind=str(kind), allow_pickle=allow_pickle)
        kwargs = conf.get("init_kwargs") or {}
        if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
            raise InvalidArgument(f"{where}: init_kwargs in the MLmodel file must be a mapping with string keys")
        kwargs = _torch_utils.decode_arguments(kwargs, str(target).split(":")[0])  # the module's own dataclasses
        model = _construct(lambda: obj(**kwargs), str(target))
    elif kind == "export":
        program_path = model_subpath(model_dir, conf.get("exported_program") or f"{DATA_DIR}/{PROGRAM_FILE}", "program")
        model = _torch_export.load_program(program_path, allow_pickle=allow_pickle).module()
        strict = False
    elif kind == "skeleton":
        skeleton = model_subpath(model_dir, conf.get("skeleton") or f"{DATA_DIR}/{SKELETON_FILE}", "skeleton")
        model = safety.load_cloudpickle(
            skeleton,
            allow_pickle,
            what=f"the PyTorch model skeleton {DATA_DIR}/{SKELETON_FILE} (the module's structure, cloudpickled "
            "because it could not be stored as an importable class or a torch.export program)",
        )
        if not isinstance(model, nn.Module):
            raise InvalidArgument(f"{where}: the skeleton holds a {type(model).__name__}, not a torch.nn.Module")
    else:
        raise InvalidArgument(f"{where}: unknown PyTorch architecture kind {kind!r}; this cairn reads {ARCHITECTURES}")
    _torch_utils.restore_weights(model, index, tensors, where=where, strict=strict)
    if kind == "export":
        # Every stand-in the program was saved with (a zero-stride expansion) must have been replaced.
        left = [n for n, _m, _l, _k, t in _torch_utils.slots_of(model) if t.numel() > 1 and not any(t.stride())]
        if left:
            raise ModelIntegrityError(f"{where}: the weights file has no tensor for {', '.join(left[:20])}")
    if kind in ("class", "factory") and _torch_utils.meta_tensors_left(model):
        # The constructor made tensors that are not parameters or buffers (plain attributes); those
        # need a real build. Slow for large models, but correct.
        model = obj(**kwargs)
        _torch_utils.restore_weights(model, index, tensors, where=where, strict=True)
    if extra_rel := conf.get("extra_state"):
        _restore_extra_state(model, model_subpath(model_dir, extra_rel, "extra state"), device)
    return model


def _restore_extra_state(model: nn.Module, stem: Path, device: str) -> None:
    from cairn.checkpoint.state_tree import load_state_tree

    states = load_state_tree(stem.parent, name=stem.name, map_location=device)
    modules = dict(model.named_modules())
    for prefix, state in states.items():
        if prefix in modules:
            modules[prefix].set_extra_state(state)


def _load_mlflow(model_dir: Path, conf: dict[str, Any], *, allow_pickle: bool | None, device: str) -> nn.Module:
    from cairn.models.loading import model_subpath

    data = model_subpath(model_dir, conf.get("model_data") or DATA_DIR, "model data")
    pickled = data / MLFLOW_PICKLE_FILE
    program = data / PROGRAM_FILE
    if pickled.is_file():
        safety.require_pickle_opt_in(
            f"the PyTorch model {DATA_DIR}/{MLFLOW_PICKLE_FILE} written by MLflow (a whole module saved with "
            "torch.save, i.e. pickled)",
            allow_pickle,
        )
        model = torch.load(str(pickled), map_location=device, weights_only=False)  # opt-in checked above
    elif program.is_file():
        model = _torch_export.load_program(program, allow_pickle=allow_pickle, foreign=True).module()
    else:
        raise ArtifactNotFound(f"{model_dir}: the pytorch flavor has neither {MLFLOW_PICKLE_FILE} nor {PROGRAM_FILE}")
    if not isinstance(model, nn.Module):
        raise InvalidArgument(f"{pickled} holds a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_from_dir(model_dir: Path, meta: Model, *, allow_pickle: bool | None, device: str) -> nn.Module:
    conf = meta.flavors.get(FLAVOR_NAME)
    if conf is None:
        raise InvalidArgument(f"the model at {model_dir} has no {FLAVOR_NAME} flavor; it has {sorted(meta.flavors)}")
    if conf.get("architecture") is not None:
        model = _load_cairn(model_dir, conf, allow_pickle=allow_pickle, device=device)
    else:
        model = _load_mlflow(model_dir, conf, allow_pickle=allow_pickle, device=device)
    set_eval(model)
    return model


def model_dir_of(data_path: Path) -> Path:
    from cairn.models.model import MLMODEL_FILE_NAME

    for candidate in (data_path, data_path.parent, data_path.parent.parent):
        if (candidate / MLMODEL_FILE_NAME).is_file():
            return candidate
    raise ArtifactNotFound(f"no MLmodel file next to {data_path}")


def load_pyfunc(data_path: str | os.PathLike[str], model_config: dict[str, Any] | None = None) -> TorchPyfunc:
    """MLflow's pyfunc entry point; ``data_path`` is the model's ``data`` directory (or the model directory).

    Pickled models load only with the opt-in (:func:`cairn.safety.pickle_allowed`).
    """
    from cairn.models.hashes import verify_model_files

    model_dir = model_dir_of(Path(data_path))
    meta = Model.load(model_dir)
    verify_model_files(model_dir, meta)
    device = str((model_config or {}).get(DEVICE_PARAM) or "cpu")
    return TorchPyfunc(load_from_dir(model_dir, meta, allow_pickle=None, device=device))
