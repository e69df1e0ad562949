"""The README's "Models and training" snippet runs as written, as ``__main__``, with tiny stand-ins for what it
leaves to the reader (``build()``, ``loader``, ``loss_fn``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[pytorch]')")

README = Path(__file__).resolve().parents[1] / "README.md"

PRELUDE = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(nn.Module):  # defined in __main__, as in a user's training script
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def build():
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=5)


loader = DataLoader(TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,))), batch_size=8, shuffle=True)
loss_fn = nn.functional.cross_entropy
"""

EPILOGUE = """
import json
runs = cairn.search_runs(output_format="list")
print(json.dumps({
    "runs": [r.info.run_id for r in runs],
    "run": run.info.run_id,
    "model_run": info.run_id,
    "training": any(m.training for m in model.modules()),
    "predicted": list(predict.predict(x[:3].numpy()).shape),
    "has_loss": "loss" in cairn.Client().get_run(run.info.run_id).data.metrics,
}))
"""


def models_and_training_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Models and training\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block under '## Models and training'"
    return match.group(1)


def test_the_models_and_training_snippet_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(PRELUDE) + models_and_training_snippet() + EPILOGUE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["CAIRN_CACHE_DIR"] = str(tmp_path / ".cairn-cache")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["runs"] == [out["run"]]  # one run: the model went into the training run, not a new one
    assert out["model_run"] == out["run"]
    assert out["training"] is False
    assert out["predicted"] == [3, 3]
    assert out["has_loss"]
