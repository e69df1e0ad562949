"""examples/serving.py runs: it trains, serves with ``cairn models serve``, scores over HTTP and stops the server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serving.py"


def test_serving_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    env.update(CAIRN_EXAMPLE_SMALL="1", CAIRN_CACHE_DIR=str(tmp_path / ".cache"), PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    answer = re.search(r"-> 200 (\{.*\})", out)
    assert answer is not None, out
    predictions = json.loads(answer.group(1))["predictions"]
    assert len(predictions) == 2 and set(predictions) <= {0, 1}
    proba = re.search(r"predict_proba'\} -> 200 (\{.*\})", out)
    assert proba is not None, out
    probabilities = json.loads(proba.group(1))["predictions"]
    assert [round(sum(row), 9) for row in probabilities] == [1.0, 1.0]
    assert "-> 400 input is missing required column(s) 'charges'" in out
    assert out.rstrip().endswith("server stopped")
    assert not (tmp_path / "cairn-runs").exists()
