"""``cairn models serve --allow-pickle`` on a custom Python model: the opt-in, pandas output, and --timeout (504)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pandas as pd

import cairn
from tests.serving.conftest import serving


def test_custom_model_with_opt_in_and_timeout(tmp_path: Path) -> None:
    class Sleeper(cairn.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            import time

            time.sleep(float(model_input["delay"].max()))
            return model_input.assign(doubled=model_input["delay"] * 2)

    path = tmp_path / "sleeper"
    cairn.pyfunc.save_model(path, python_model=Sleeper(), input_example=pd.DataFrame({"delay": [0.0]}))
    with serving(path, tmp_path / "server", ["--allow-pickle", "--timeout", "1"]) as server:
        small = httpx.post(f"{server.url}/invocations", json={"dataframe_records": [{"delay": 0.0}, {"delay": 0.5}]})
        assert small.status_code == 200, small.text
        assert small.json() == {"predictions": [{"delay": 0.0, "doubled": 0.0}, {"delay": 0.5, "doubled": 1.0}]}

        slow = {"dataframe_split": {"columns": ["delay"], "data": [[0.0]] * 3000 + [[3.0]]}}  # > 16 KB: in a thread
        assert len(json.dumps(slow)) > 16 * 1024
        started = time.monotonic()
        answer = httpx.post(f"{server.url}/invocations", json=slow, timeout=30)
        assert answer.status_code == 504
        assert answer.json()["error_code"] == "DEADLINE_EXCEEDED" and "--timeout of 1.0 s" in answer.json()["message"]
        assert time.monotonic() - started < 2.5
        assert httpx.get(f"{server.url}/ping").status_code == 200  # the server keeps answering
