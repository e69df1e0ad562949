"""The cairn model format: the MLmodel file, signatures, input examples and requirements.

Compatible with MLflow's model format: a directory cairn writes has the files MLflow writes
(``MLmodel``, ``input_example.json``, ``requirements.txt``, ``python_env.yaml``, ``conda.yaml``) in
the same layout. :mod:`cairn.models.flavor` states the contract every flavor module keeps and
declares the options they share; :mod:`cairn.models.packaging` does the saving and logging they share.
Importing this package loads no numpy, pandas or torch; the functions that need
them import them when called.
"""

from __future__ import annotations

from cairn.models.enforcement import enforce_params, enforce_schema
from cairn.models.input_example import (
    load_input_example,
    load_input_example_params,
    load_serving_input_example,
    save_input_example,
)
from cairn.models.loading import PyFuncModel, load_model, load_pyfunc
from cairn.models.model import FORMAT_VERSION, MLMODEL_FILE_NAME, Model, ModelInfo, directory_size
from cairn.models.requirements import pinned_requirement, read_requirements, write_requirements
from cairn.models.schema import ColSpec, ModelSignature, ParamSchema, ParamSpec, Schema, TensorSpec
from cairn.models.signature import infer_param_schema, infer_schema, infer_signature

__all__ = [
    "FORMAT_VERSION",
    "MLMODEL_FILE_NAME",
    "ColSpec",
    "Model",
    "ModelInfo",
    "ModelSignature",
    "ParamSchema",
    "ParamSpec",
    "PyFuncModel",
    "Schema",
    "TensorSpec",
    "directory_size",
    "enforce_params",
    "enforce_schema",
    "infer_param_schema",
    "infer_schema",
    "infer_signature",
    "load_input_example",
    "load_input_example_params",
    "load_model",
    "load_pyfunc",
    "load_serving_input_example",
    "pinned_requirement",
    "read_requirements",
    "save_input_example",
    "write_requirements",
]
