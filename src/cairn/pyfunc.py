"""``cairn.pyfunc``: every model behind one ``predict``, and custom Python models (MLflow's ``mlflow.pyfunc``).

>>> class AddN(cairn.pyfunc.PythonModel):
...     def __init__(self, n): self.n = n
...     def predict(self, context, model_input, params=None): return model_input + self.n
>>> info = cairn.pyfunc.log_model("model", python_model=AddN(5), input_example=df)
>>> cairn.pyfunc.load_model(info.model_uri, allow_pickle=True).predict(df)

``load_model`` loads any cairn or MLflow model (sklearn, pytorch, custom, ...); models that need
unpickling (custom Python models, cloudpickled estimators) need ``allow_pickle=True`` or
``CAIRN_ALLOW_PICKLE=1``.
"""

from __future__ import annotations

import os
from typing import Any

from cairn.flavors.pyfunc import FLAVOR_NAME, PythonModel, PythonModelContext, log_model, save_model
from cairn.models.loading import PyFuncModel, load_pyfunc

__all__ = [
    "FLAVOR_NAME",
    "PyFuncModel",
    "PythonModel",
    "PythonModelContext",
    "load_model",
    "log_model",
    "save_model",
]


def load_model(
    model_uri: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    model_config: dict[str, Any] | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> PyFuncModel:
    """Load any model as a :class:`PyFuncModel` with ``predict(data, params=None)``.

    Args:
        model_uri: a local path, ``runs:/<run_id>/<path>``, ``models:/<name>/<version>``,
            ``models:/<name>@<alias>``, ``models:/<name>/latest`` or an artifact-store URL.
        allow_pickle: allow unpickling the model's files (also ``CAIRN_ALLOW_PICKLE=1``); only for
            models from a source you trust.
        model_config: overrides for the configuration saved with the model.
        dst_path: where to download a remote model (a new temporary directory by default).

    Raises:
        UnsafeModel: the model needs unpickling without the opt-in, or names a loader outside cairn's allow-list.
        ModelIntegrityError: a model file does not match the sha256 recorded when it was saved.
    """
    return load_pyfunc(model_uri, allow_pickle=allow_pickle, model_config=model_config, dst_path=dst_path)
