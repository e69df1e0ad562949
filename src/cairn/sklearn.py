"""``cairn.sklearn``: scikit-learn models and autologging (MLflow's ``mlflow.sklearn``).

>>> cairn.sklearn.autolog()                       # every fit logs params, metrics and the model
>>> info = cairn.sklearn.log_model(model, "model", input_example=X[:5])
>>> cairn.sklearn.load_model(info.model_uri).predict(X)

Models are stored with skops by default and load without unpickling; see
:mod:`cairn.flavors.sklearn` for the formats and :mod:`cairn.autolog.sklearn` for what autolog
records. Importing this module imports scikit-learn only when one of its functions runs.
"""

from __future__ import annotations

from cairn.autolog.sklearn import autolog
from cairn.flavors.sklearn import (
    FLAVOR_NAME,
    SERIALIZATION_FORMAT_CLOUDPICKLE,
    SERIALIZATION_FORMAT_PICKLE,
    SERIALIZATION_FORMAT_SKOPS,
    SkopsUnsupported,
    load_model,
    log_model,
    save_model,
)

__all__ = [
    "FLAVOR_NAME",
    "SERIALIZATION_FORMAT_CLOUDPICKLE",
    "SERIALIZATION_FORMAT_PICKLE",
    "SERIALIZATION_FORMAT_SKOPS",
    "SkopsUnsupported",
    "autolog",
    "load_model",
    "log_model",
    "save_model",
]
