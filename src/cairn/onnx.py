"""``cairn.onnx``: ONNX models, converted from torch or scikit-learn with a parity check (MLflow's ``mlflow.onnx``).

>>> info = cairn.onnx.log_model(torch_module, "model", input_example=torch.randn(8, 4))
>>> info = cairn.onnx.log_model(sk_pipeline, "model", input_example=X[:20])   # skl2onnx, zipmap off
>>> info = cairn.onnx.log_model(onnx_model_proto_or_path, "model")
>>> cairn.onnx.load_model(info.model_uri)              # the onnx.ModelProto
>>> cairn.pyfunc.load_model(info.model_uri).predict(X)  # onnxruntime InferenceSession underneath

A conversion is checked: the source model and onnxruntime both run on the input example, the
differences are recorded in the MLmodel metadata (``onnx_parity``), and a conversion that differs
beyond ``onnx_rtol``/``onnx_atol`` raises :class:`OnnxParityError` instead of being logged. See
:mod:`cairn.flavors.onnx` for the layout, external data and what ``predict`` takes and returns.
Importing this module imports neither onnx nor onnxruntime; the functions do when called.
"""

from __future__ import annotations

from cairn.flavors.onnx import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FLAVOR_NAME,
    OnnxParityError,
    load_model,
    load_pyfunc,
    log_model,
    save_model,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "FLAVOR_NAME",
    "OnnxParityError",
    "load_model",
    "load_pyfunc",
    "log_model",
    "save_model",
]
