"""Per-framework model flavors: ``sklearn``, ``pytorch``, ``lightning``, ``transformers``, ``onnx`` and
``pyfunc`` (custom Python models).

Each module exposes ``FLAVOR_NAME``, ``save_model``, ``log_model``, ``load_model`` and MLflow's
``_load_pyfunc(data_path, model_config=None)``, built on :mod:`cairn.models.packaging` and
:mod:`cairn.models.loading`. Importing this package imports no framework; each flavor module
imports its framework itself. :mod:`cairn.flavors.registry` lists the modules a model file may
name as its loader.
"""

from __future__ import annotations
