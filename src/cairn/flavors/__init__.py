"""Per-framework model flavors: ``sklearn``, ``pytorch``, ``lightning``, ``transformers``, ``onnx`` and
``pyfunc`` (custom Python models).

Each module exposes ``FLAVOR_NAME``, ``save_model``, ``log_model``, ``load_model`` and MLflow's
``_load_pyfunc(data_path, model_config=None)``: the contract :class:`cairn.models.flavor.Flavor` states
(mypy checks every module against it in :mod:`cairn.flavors.registry`; ``tests/flavors/test_flavor_contract.py``
runs the same tests on every flavor). The options every flavor shares are declared once there
(``CommonSaveOptions``, ``LogOptions``); a flavor declares its own in a ``TypedDict`` (``PyTorchOptions``, ...)
that types ``log_model(model, name=None, **options: Unpack[...])``, and
:func:`cairn.models.flavor.log_flavor_model` forwards them to its ``save_model``. The work is done by
:mod:`cairn.models.packaging` and :mod:`cairn.models.loading`.

Importing this package imports no framework; each flavor module imports its framework itself.
:mod:`cairn.flavors.registry` lists the modules a model file may name as its loader.
"""

from __future__ import annotations
