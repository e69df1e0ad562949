"""The PyTorch flavor's pyfunc: tensors, numpy, pandas or dicts of them in, numpy out, on a chosen device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cairn.errors import InvalidArgument
from cairn.flavors import _torch_export
from cairn.flavors._torch_layout import DEVICE_PARAM


def to_numpy(value: Any, label: str = "output") -> Any:
    """Tensors to numpy: a tuple/list becomes ``{"output_<i>": ...}``, a dict keeps its keys, and ``None``
    entries of either are left out (the other outputs keep their names); a bare ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(value, Mapping):
        return {str(k): to_numpy(v, f"{label}[{k!r}]") for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return {f"output_{i}": to_numpy(v, f"{label}[{i}]") for i, v in enumerate(value) if v is not None}
    if isinstance(value, (int, float, bool)):
        import numpy as np

        return np.asarray(value)
    raise InvalidArgument(f"the model returned {type(value).__name__} at {label}; cairn converts tensors to numpy")


def flatten_outputs(value: Any) -> Any:
    """Nested output dicts are not schema material; keep one level (tensors or arrays)."""
    if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
        raise InvalidArgument("the model returned nested outputs; cairn's pyfunc returns one level of named arrays")
    return value


def module_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


class TorchPyfunc:
    """The pyfunc implementation: ``predict(data, params={"device": ...})`` on an ``nn.Module``."""

    def __init__(self, model: nn.Module) -> None:
        self.pytorch_model = model
        set_eval(model)
        self._device = module_device(model)

    def get_raw_model(self) -> nn.Module:
        """The module."""
        return self.pytorch_model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Run the module on ``data`` (moved to ``params["device"]`` if given); numpy out.

        One tensor gives one array; a tuple or list gives ``{"output_0": ..., "output_1": ...}`` and a dict
        its own keys, one level deep. ``None`` outputs are left out and the others keep their names, so a
        model returning ``(logits, None)`` (nanoGPT without targets) predicts ``{"output_0": logits}``, the
        same name it has when the second output is a tensor. A model returning ``None`` predicts ``None``.

        Raises:
            InvalidArgument: the input cannot be made into tensors or the output into numpy arrays.
        """
        requested = (params or {}).get(DEVICE_PARAM)
        try:
            device = torch.device(requested) if requested else self._device
        except (RuntimeError, TypeError) as exc:
            raise InvalidArgument(
                f"params['device'] must name a torch device such as 'cpu' or 'cuda:0': {exc}"
            ) from None
        if device != self._device:
            self.pytorch_model.to(device)
            self._device = device
        args, kwargs = _torch_export.example_arguments(data)
        args = tuple(a.to(device) for a in args)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        with torch.inference_mode():
            output = self.pytorch_model(*args, **kwargs)
        return flatten_outputs(to_numpy(output))


def set_eval(model: nn.Module) -> None:
    """``model.eval()``; for a ``torch.export`` program's module (traced in eval mode, whose ``eval()``
    torch refuses) the ``training`` flags are set to match what its graph does."""
    try:
        model.eval()
    except NotImplementedError:
        for module in model.modules():
            object.__setattr__(module, "training", False)
