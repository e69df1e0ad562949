"""`import cairn` stays light: no ML framework, database driver, pandas or mlflow."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "torch",
    "transformers",
    "lightning",
    "sklearn",
    "onnx",
    "onnxruntime",
    "pandas",
    "sqlalchemy",
    "mlflow",
    "numpy",
)


def test_import_cairn_loads_no_heavy_module() -> None:
    code = f"import sys, cairn; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_unknown_attribute_is_a_clear_attribute_error() -> None:
    import pytest

    import cairn

    with pytest.raises(AttributeError, match="no attribute 'not_a_flavor'"):
        cairn.not_a_flavor  # noqa: B018


def test_import_functions_reachable_from_cairn() -> None:
    import cairn
    from cairn.sync.mlflow_import import import_mlflow
    from cairn.sync.tensorboard_import import import_tensorboard

    assert cairn.import_mlflow is import_mlflow
    assert cairn.import_tensorboard is import_tensorboard
    assert cairn.sync.import_tensorboard is import_tensorboard
