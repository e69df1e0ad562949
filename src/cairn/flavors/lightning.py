"""The Lightning flavor: a ``LightningModule`` saved as a PyTorch model, rebuilt from its class and ``hparams``.

A LightningModule is an ``nn.Module``, so the files are the PyTorch flavor's (:mod:`cairn.flavors.pytorch`):
weights in safetensors, the architecture as the module's importable class called with its
``hparams`` (what ``save_hyperparameters()`` recorded) as JSON keyword arguments, so the default load
path runs no pickle. When the class cannot be rebuilt that way (defined in ``__main__``, hparams that are
not JSON, arguments ``save_hyperparameters`` ignored), the PyTorch flavor's fallbacks apply: a
``torch.export`` program when an input example is known (``example_input_array`` is used), else a
cloudpickled skeleton that loads only with the pickle opt-in.

The MLmodel file has the ``pytorch`` entry (so ``cairn.pytorch.load_model`` and MLflow's pytorch loader
read it), ``python_function`` and a ``lightning`` entry recording the Lightning package and version,
the class and the hparams. :func:`load_model` returns the rebuilt LightningModule in eval mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Unpack

from cairn.errors import InvalidArgument
from cairn.flavors import pytorch as pytorch_flavor
from cairn.flavors.pytorch import TorchArchitectureOptions
from cairn.models.flavor import (
    CommonLogOptions,
    CommonSaveRecordOptions,
    log_flavor_model,
    refuse_unknown_options,
)
from cairn.models.model import MLMODEL_FILE_NAME, Model, ModelInfo

__all__ = ["FLAVOR_NAME", "LightningLogOptions", "LightningSaveOptions", "load_model", "log_model", "save_model"]

FLAVOR_NAME = "lightning"
PYTORCH_FLAVOR = pytorch_flavor.FLAVOR_NAME


def _package_of(model: Any) -> tuple[str, str]:
    """(distribution name, version) of the Lightning package ``model`` is built on."""
    import importlib

    for package, distribution in (("lightning.pytorch", "lightning"), ("pytorch_lightning", "pytorch_lightning")):
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        if isinstance(model, module.LightningModule):
            root = importlib.import_module(distribution)
            return distribution, str(getattr(root, "__version__", ""))
    raise InvalidArgument(
        f"lightning_model must be a LightningModule (lightning or pytorch_lightning), got {type(model).__name__}"
    )


def _json_hparams(model: Any) -> dict[str, Any] | None:
    hparams = getattr(model, "hparams", None)
    if not isinstance(hparams, Mapping):
        return None
    try:
        return dict(json.loads(json.dumps(dict(hparams))))
    except (TypeError, ValueError):
        return None


def _example_of(model: Any) -> Any:
    """``model.example_input_array`` as numpy (a tensor) or as is (an array), else None."""
    example = getattr(model, "example_input_array", None)
    if example is None:
        return None
    detach = getattr(example, "detach", None)
    if detach is not None:
        return detach().cpu().numpy()
    return example if hasattr(example, "shape") else None


class LightningSaveOptions(TorchArchitectureOptions, CommonSaveRecordOptions, total=False):
    """Every option of :func:`save_model`: the PyTorch flavor's, without ``module_class``/``model_factory``."""


class LightningLogOptions(TorchArchitectureOptions, CommonLogOptions, total=False):
    """Every option of :func:`log_model`."""


def save_model(lightning_model: Any, path: str | os.PathLike[str], **options: Unpack[LightningSaveOptions]) -> Model:
    """Save a LightningModule as a model directory at ``path``.

    Args:
        lightning_model: the module (``lightning`` or ``pytorch_lightning``).
        path: the new model directory; must not exist or be empty.
        **options: as in :func:`cairn.flavors.pytorch.save_model` (same defaults), except that
            ``init_kwargs`` defaults to the module's ``hparams``, ``input_example`` to its
            ``example_input_array``, and the Lightning package joins the default requirements.

    Raises:
        InvalidArgument: not a LightningModule, or what :func:`cairn.flavors.pytorch.save_model` raises.
    """
    refuse_unknown_options("save_model", options, LightningSaveOptions.__optional_keys__)
    distribution, version = _package_of(lightning_model)
    if options.get("input_example") is None:
        options["input_example"] = _example_of(lightning_model)
    extra = list(options.get("extra_pip_requirements") or [])
    if options.get("pip_requirements") is None and not any(
        r.split("=")[0].split("<")[0].split(">")[0] == distribution for r in extra
    ):
        extra.append(distribution)
    options["extra_pip_requirements"] = extra
    model = pytorch_flavor.save_model(lightning_model, path, **options)
    torch_entry = model.flavors.get(PYTORCH_FLAVOR, {})
    model.add_flavor(
        FLAVOR_NAME,
        lightning_package=distribution,
        lightning_version=version,
        pytorch_flavor=PYTORCH_FLAVOR,
        architecture=torch_entry.get("architecture"),
        module_class=torch_entry.get("module_class"),
        hparams=_json_hparams(lightning_model),
    )
    model.save(Path(path) / MLMODEL_FILE_NAME)  # MLmodel is outside the file manifest: rewriting it is safe
    return model


def log_model(lightning_model: Any, name: str | None = None, **options: Unpack[LightningLogOptions]) -> ModelInfo:
    """Save ``lightning_model`` (see :func:`save_model`) into a run's artifacts at ``name`` (default ``"model"``).

    Args:
        lightning_model: the module.
        name: the model's artifact path in the run.
        **options: :func:`save_model`'s options, and ``artifact_path`` (MLflow 2's name for ``name``),
            ``registered_model_name`` (also register the model under this name), ``run_id`` (log into
            this run instead of the active one; a run is started if none is active), ``client`` (log into
            and register in this client's store, with ``run_id``).
    """
    return log_flavor_model(
        partial(save_model, lightning_model), name, options, accepted=LightningLogOptions.__optional_keys__
    )


def load_model(
    model_uri: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    trusted_modules: Sequence[str] = (),
    map_location: str | Any = "cpu",
    dst_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a model saved by :func:`save_model` (or any PyTorch-flavor model) in eval mode.

    For the default architecture this is an instance of the saved LightningModule class, built with its
    hparams and holding the saved weights. The class's module is imported only if it is already imported
    or named in ``trusted_modules`` (a package name covers its modules). See
    :func:`cairn.flavors.pytorch.load_model` for the arguments, the trust rules and the errors.
    """
    return pytorch_flavor.load_model(
        model_uri,
        allow_pickle=allow_pickle,
        trusted_modules=trusted_modules,
        map_location=map_location,
        dst_path=dst_path,
    )


def _load_pyfunc(data_path: str | os.PathLike[str], model_config: dict[str, Any] | None = None) -> Any:
    """Pyfunc entry point: the PyTorch flavor's (numpy/pandas/tensor in, numpy out)."""
    return pytorch_flavor._load_pyfunc(data_path, model_config)
