"""``import cairn.models`` stays light: no numpy, pandas or torch until a function needs them."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_model_package_loads_no_heavy_module() -> None:
    code = (
        "import sys, cairn, cairn.models\n"
        "from cairn.models import Model, ModelSignature, Schema, ColSpec, TensorSpec, infer_signature\n"
        "m = Model(signature=ModelSignature(Schema([ColSpec('double', 'x')])))\n"
        "m.to_yaml()\n"
        "print(sorted(k for k in ('numpy', 'pandas', 'torch') if k in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
